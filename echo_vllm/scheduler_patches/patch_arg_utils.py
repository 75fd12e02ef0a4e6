"""`method: echo` in vLLM's speculative config (vllm/engine/arg_utils.py).

vLLM's `SpeculativeConfig.method` is a closed Literal with extra="forbid", and there is no
registry of speculative methods, so `{"method": "echo", ...}` is intercepted where both the
CLI JSON and `LLM(speculative_config=...)` become a `SpeculativeConfig`. Echo's options are
validated there (before any weight loads), carried to every process inside
`VllmConfig.additional_config["echo"]` (pickled with the config, so Ray and multiprocessing
workers see them), and echo's worker class is selected through `ParallelConfig.worker_cls`.
Underneath, vLLM runs its EAGLE-3 machinery with echo's classes plugged in.

A second patch adds 'echo' to the choices of the `--spec-method` shorthand, which vLLM's
parser takes from the same closed Literal (`AsyncEngineArgs.add_cli_args` loads the plugins
before it builds the engine arguments, so the patch is in place when `vllm serve` parses).
"""

from __future__ import annotations

import functools
from typing import Any

from echo_vllm.attention_support import config_features, refuse
from echo_vllm.calibration_file import check_models, read_calibration
from echo_vllm.config import METHOD, describe_calibration, parse_echo_config, to_vllm_speculative_config
from echo_vllm.draft_head import TargetShape, check_head_matches_target
from echo_vllm.log import logger
from echo_vllm.scheduler_patches.records import VllmPatch

ADDITIONAL_CONFIG_KEY = "echo"
# one module per platform: vLLM's CPU worker modules must not load on a GPU (echo_vllm/workers)
CPU_WORKER = "echo_vllm.workers.cpu.EchoCPUWorker"
GPU_WORKER = "echo_vllm.workers.gpu.EchoGPUWorker"


def echo_options(engine_args: Any) -> dict[str, Any] | None:
    """The user's speculative options if they select method echo, else None.

    Folds in the `--spec-method` / `--spec-model` shorthands the way vLLM does.
    """
    options = dict(engine_args.speculative_config or {})
    method = engine_args.spec_method or options.get("method")
    if isinstance(method, str) and method != METHOD and method.lower() == METHOD:
        raise ValueError(f"echo-vllm: speculative method names are lower-case: write "
                         f"\"method\": \"{METHOD}\", got {method!r}")
    if method != METHOD:
        return None
    for flag, key, value in (
        ("--spec-method", "method", engine_args.spec_method),
        ("--spec-model", "model", engine_args.spec_model),
    ):
        if value is not None:
            if key in options:
                raise ValueError(f"{flag} and --speculative-config['{key}'] are mutually exclusive")
            options[key] = value
    if engine_args.spec_tokens is not None:
        raise ValueError(
            "echo-vllm: --spec-tokens has no meaning for method 'echo'; size the drafts "
            "with 'steps', 'topk' and 'num_draft_tokens' in --speculative-config"
        )
    return options


def select_echo_worker(parallel_config: Any, is_cpu: bool) -> None:
    if parallel_config.worker_cls != "auto":
        raise ValueError(
            f"echo-vllm: method 'echo' runs in its own worker class; remove "
            f"worker_cls={parallel_config.worker_cls!r}"
        )
    parallel_config.worker_cls = CPU_WORKER if is_cpu else GPU_WORKER


def require_gpu_settings(engine_args: Any) -> None:
    """The vLLM settings echo's GPU path needs, set where the user left them open; a
    conflicting explicit choice is refused, naming it."""
    from vllm.config.compilation import CUDAGraphMode
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    # a step's drafts are verified in the next step: the scheduler must wait for them
    if engine_args.async_scheduling:
        raise ValueError("echo-vllm: method 'echo' needs synchronous scheduling; remove async_scheduling")
    engine_args.async_scheduling = False
    # echo rewrites tree rows after FlashAttention (kernels/gpu_backend.py)
    chosen = engine_args.attention_backend or engine_args.attention_config.backend
    chosen_name = getattr(chosen, "name", chosen)  # an enum member, or still its name
    if chosen is not None and chosen_name != AttentionBackendEnum.FLASH_ATTN.name:
        raise ValueError(
            f"echo-vllm: method 'echo' extends the FLASH_ATTN attention backend on GPU; "
            f"remove attention_backend={chosen_name}"
        )
    if engine_args.attention_config.backend is None:
        engine_args.attention_backend = AttentionBackendEnum.FLASH_ATTN
    # the rewrite runs between CUDA-graph pieces, never inside a captured attention
    mode = engine_args.compilation_config.cudagraph_mode
    if mode not in (None, CUDAGraphMode.NONE, CUDAGraphMode.PIECEWISE):
        raise ValueError(
            f"echo-vllm: method 'echo' needs cudagraph_mode PIECEWISE or NONE, got {mode.name}"
        )
    if mode is None:
        engine_args.compilation_config.cudagraph_mode = CUDAGraphMode.PIECEWISE


def _wrap_create_speculative_config(original):
    @functools.wraps(original)
    def create_speculative_config(self, target_model_config, target_parallel_config):
        options = echo_options(self)
        if options is None:
            return original(self, target_model_config, target_parallel_config)

        from vllm.config import SpeculativeConfig
        from vllm.platforms import current_platform

        echo = parse_echo_config(options)
        check_head_matches_target(
            echo.model,
            TargetShape(
                hidden_size=target_model_config.get_hidden_size(),
                vocab_size=target_model_config.get_vocab_size(),
                num_hidden_layers=target_model_config.get_total_num_hidden_layers(),
            ),
        )
        # before any weight loads: what the config shows of attention echo's trees cannot do
        refuse(config_features(target_model_config, target_parallel_config, self.kv_cache_dtype), ValueError)
        if echo.calibration_file is not None:
            calibration = read_calibration(echo.calibration_file)
            check_models(calibration, echo.calibration_file, "target", target_model_config.model)
            check_models(calibration, echo.calibration_file, "draft", echo.model)
        if not isinstance(self.additional_config, dict):
            raise ValueError("echo-vllm: method 'echo' needs additional_config to be a dict")
        select_echo_worker(target_parallel_config, current_platform.is_cpu())
        if not current_platform.is_cpu():
            require_gpu_settings(self)
        self.additional_config[ADDITIONAL_CONFIG_KEY] = echo.to_dict()
        logger.info(
            "echo-vllm: method 'echo' with head %s: policy=%s budget=%s steps=%d topk=%d num_draft_tokens=%d; %s",
            echo.model, echo.policy, echo.budget, echo.steps, echo.topk, echo.num_draft_tokens,
            describe_calibration(echo),
        )
        return SpeculativeConfig(
            **to_vllm_speculative_config(echo),
            target_model_config=target_model_config,
            target_parallel_config=target_parallel_config,
        )

    return create_speculative_config


PATCH = VllmPatch(
    target="vllm.engine.arg_utils.EngineArgs.create_speculative_config",
    vllm="0.32.*",
    why="accept method 'echo' (vLLM's method Literal is closed, extra keys forbidden): "
    "validate echo's options before any model loads and translate them to the EAGLE-3 "
    "machinery plus echo's worker class",
    upstream="none: vLLM has no registry of speculative methods (RFC #36219 proposes one)",
    remove_when="vLLM offers a speculative-method registry",
    wrap=_wrap_create_speculative_config,
)


def add_echo_choice(parser: Any) -> None:
    """Let `--spec-method` take 'echo' (vLLM lists its own methods as the choices)."""
    for action in parser._actions:
        if "--spec-method" in action.option_strings and action.choices is not None \
                and METHOD not in action.choices:
            action.choices = [METHOD, *action.choices]


def _wrap_add_cli_args(original):
    function = original.__func__ if isinstance(original, staticmethod) else original

    @functools.wraps(function)
    def add_cli_args(parser):
        parser = function(parser)
        add_echo_choice(parser)
        return parser

    return staticmethod(add_cli_args)


CLI_PATCH = VllmPatch(
    target="vllm.engine.arg_utils.EngineArgs.add_cli_args",
    vllm="0.32.*",
    why="let the documented shorthand `--spec-method echo` through argparse: vLLM takes the choices of "
    "--spec-method from SpeculativeConfig.method's closed Literal",
    upstream="none: vLLM has no registry of speculative methods (RFC #36219 proposes one)",
    remove_when="vLLM offers a speculative-method registry that its CLI choices read",
    wrap=_wrap_add_cli_args,
)
