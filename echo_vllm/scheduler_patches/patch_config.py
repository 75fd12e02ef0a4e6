"""Echo runs in vLLM's V1 model runner (vllm/config/vllm.py).

On GPU vLLM 0.32 picks Model Runner V2 unless a feature it lacks is in use; echo's tree
verification extends the V1 runner, so echo declares itself such a feature. The choice then
travels inside the config to every worker (no environment variable), and vLLM logs it.
"""

from __future__ import annotations

import functools

from echo_vllm.scheduler_patches.patch_arg_utils import ADDITIONAL_CONFIG_KEY
from echo_vllm.scheduler_patches.records import VllmPatch

FEATURE = "echo draft trees"


def _wrap_v2_unsupported(original):
    @functools.wraps(original)
    def _get_v2_model_runner_unsupported_features(self):
        unsupported = original(self)
        additional = self.additional_config
        if isinstance(additional, dict) and ADDITIONAL_CONFIG_KEY in additional:
            unsupported.append(FEATURE)
        return unsupported

    return _get_v2_model_runner_unsupported_features


PATCH = VllmPatch(
    target="vllm.config.vllm.VllmConfig._get_v2_model_runner_unsupported_features",
    vllm="0.32.*",
    why="echo's tree verification extends the V1 model runner; V2 would ignore it",
    upstream="none: vLLM verifies no token trees",
    remove_when="echo's runner extension exists for Model Runner V2",
    wrap=_wrap_v2_unsupported,
)
