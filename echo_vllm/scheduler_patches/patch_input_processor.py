"""Refuse, at admission, sampling options echo's tree verification does not implement
(vllm/v1/engine/input_processor.py).

Penalties, min_tokens, bad words, allowed token ids, structured outputs and thinking budgets
change a position's distribution according to the tokens before it; in a tree those are the
node's ancestors, which vLLM's chain implementations do not know. Until echo implements them,
such requests are refused with a validation error (an HTTP 400 from the server) instead of
being verified wrongly or crashing the engine.
"""

from __future__ import annotations

import functools

from echo_vllm.scheduler_patches.patch_arg_utils import ADDITIONAL_CONFIG_KEY
from echo_vllm.scheduler_patches.records import VllmPatch

# (parameter, test on SamplingParams that it is in use)
UNSUPPORTED_WITH_TREES = (
    ("presence_penalty", lambda p: p.presence_penalty != 0.0),
    ("frequency_penalty", lambda p: p.frequency_penalty != 0.0),
    ("repetition_penalty", lambda p: p.repetition_penalty != 1.0),
    ("min_tokens", lambda p: p.min_tokens > 0),
    ("bad_words", lambda p: bool(p.bad_words)),
    ("allowed_token_ids", lambda p: bool(p.allowed_token_ids)),
    ("structured_outputs", lambda p: p.structured_outputs is not None),
    ("thinking_token_budget", lambda p: p.thinking_token_budget is not None),
)


def refuse_unsupported(params) -> None:
    from vllm.exceptions import VLLMValidationError

    for name, in_use in UNSUPPORTED_WITH_TREES:
        if in_use(params):
            raise VLLMValidationError(
                f"echo-vllm: sampling parameter '{name}' is not supported with speculative "
                f"method 'echo' yet",
                parameter=name,
                value=getattr(params, name),
            )


def _wrap_validate_params(original):
    @functools.wraps(original)
    def _validate_params(self, params, supported_tasks):
        result = original(self, params, supported_tasks)
        from vllm.sampling_params import SamplingParams

        additional = self.vllm_config.additional_config
        if isinstance(params, SamplingParams) and isinstance(additional, dict) and ADDITIONAL_CONFIG_KEY in additional:
            refuse_unsupported(params)
        return result

    return _validate_params


PATCH = VllmPatch(
    target="vllm.v1.engine.input_processor.InputProcessor._validate_params",
    vllm="0.32.*",
    why="refuse sampling options whose tree semantics echo does not implement, per request, "
    "with a validation error",
    upstream="none: vLLM's spec-decode validation knows chains only",
    remove_when="echo applies penalties, min_tokens, bad words, allowed ids, grammars and "
    "thinking budgets along tree paths",
    wrap=_wrap_validate_params,
)
