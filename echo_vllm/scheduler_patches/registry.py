"""The registry: every change echo makes to vLLM, as data that tests read.

  PATCHES       the vLLM attributes echo replaces, in application order (the PATCH of each
                patch_<module>.py), applied by `apply_all`
  DEPENDENCIES  everything else echo relies on (overrides.py; vLLM's CPU platform only:
                overrides_cpu.py): methods overridden, called or
                constructed through, attributes read, overwritten or added, config fields set,
                backend registry entries swapped, upstream bodies copied, ops called;
                checked by `check_all_overrides` when echo's worker starts, those of
                its platform only

vLLM loads general plugins once per process, in several processes, so `apply_all` may run
many times; it checks the installed vLLM version before touching anything and keeps the
originals so tests can restore them. The record kinds and their checks are in records.py.
"""

from __future__ import annotations

import torch
import vllm

from echo_vllm.scheduler_patches import (
    overrides,
    overrides_cpu,
    patch_arg_utils,
    patch_async_llm,
    patch_config,
    patch_input_processor,
)
from echo_vllm.scheduler_patches.records import (
    Declared,
    VllmPatch,
    apply,
    check_vllm_version,
    is_applied,
    resolve,
    restore,
)

__all__ = [
    "DECLARED", "DEPENDENCIES", "PATCHES", "all_patches", "apply", "apply_all", "check_all_overrides",
    "check_vllm_version", "is_applied", "resolve", "restore",
]

PATCHES: tuple[VllmPatch, ...] = (
    patch_arg_utils.PATCH,
    patch_arg_utils.CLI_PATCH,
    patch_input_processor.PATCH,
    patch_config.PATCH,
    patch_async_llm.PATCH,
    patch_async_llm.START_PATCH,
)
DEPENDENCIES: tuple[Declared, ...] = (*overrides.DEPENDENCIES, *overrides_cpu.DEPENDENCIES)
DECLARED: tuple[Declared, ...] = (*PATCHES, *DEPENDENCIES)


def all_patches() -> list[VllmPatch]:
    """Every patch echo applies, in application order."""
    return list(PATCHES)


def check_all_overrides(device_type: str) -> None:
    """Raise, naming the vLLM internal, unless the installed vLLM still has everything echo
    relies on on this platform's device type ("cpu", "cuda"); the records of other platforms
    are never resolved (their modules stay unimported), nor, without a GPU, what only vLLM's
    CUDA builds define (`cuda_build_only`)."""
    for dependency in DEPENDENCIES:
        if dependency.cuda_build_only and not torch.cuda.is_available():
            continue
        dependency.check(vllm.__version__, device_type)


def apply_all() -> None:
    check_vllm_version(vllm.__version__)
    for patch in PATCHES:
        apply(patch, vllm.__version__)
