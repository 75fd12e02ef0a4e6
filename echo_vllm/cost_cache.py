"""The target-pass cost model, cached between engine starts (no vLLM import).

Measuring it takes seconds to minutes at every start (`EchoRunnerMixin.measure_target_cost`),
and its result depends only on what the key names: the model (path and a fingerprint of its
config), dtype, the machine (GPU name, or CPU model and vector extensions; cores and threads),
the vLLM version, tensor parallelism, eager mode and the pass sizes measured. A second start
with the same key reads it from `$ECHO_VLLM_CACHE/cost_models/<hash of the key>.json`; delete
the file to measure again. The online refinement (`CostModel.observe`) corrects the scale as
traffic runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

from echo_vllm.assets.models import cache_dir

FORMAT = 1  # bump when what is measured changes


# The vector extensions that choose vLLM's CPU kernels and torch's: two machines that both call
# themselves "AMD EPYC", one with AVX-512 and one without, ran the same passes at different costs.
VECTOR_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "asimd", "sve", "bf16")
CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo_field(*names: str) -> str | None:
    """The first /proc/cpuinfo line's value whose key is one of `names`, else None."""
    try:
        for line in CPUINFO.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in names:
                return value.strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """The CPU's model string ("AMD EPYC 7B13"), or the architecture where none is readable."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_isa() -> str:
    """The VECTOR_FLAGS this CPU has, in that order ("avx2 avx512f avx512_bf16"); "none" where
    it has none of them, "unknown" where /proc/cpuinfo lists no flags (x86 calls them flags,
    ARM Features)."""
    flags = _cpuinfo_field("flags", "Features")
    if flags is None:
        return "unknown"
    present = set(flags.split())
    return " ".join(flag for flag in VECTOR_FLAGS if flag in present) or "none"


def cost_key(**fields) -> dict:
    """The cache key: the given fields (JSON values) and the format."""
    return {"format": FORMAT, **fields}


def cost_path(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir() / "cost_models" / f"{digest}.json"


def read_cost(path: Path, key: dict) -> tuple[list[int], list[float]] | None:
    """(tokens, seconds) cached at `path` for exactly this key, else None (a missing,
    unreadable or foreign file is measured again, never an error)."""
    try:
        saved = json.loads(path.read_text())
        if saved["key"] != key:
            return None
        tokens, seconds = [int(t) for t in saved["tokens"]], [float(s) for s in saved["seconds"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (tokens, seconds) if len(tokens) == len(seconds) >= 2 else None


def write_cost(path: Path, key: dict, tokens: list[int], seconds: list[float]) -> None:
    """Save atomically (several engines may start at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps({"key": key, "tokens": tokens, "seconds": seconds}, indent=1))
    partial.replace(path)
