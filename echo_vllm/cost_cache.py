"""The target-pass cost model, cached between engine starts (no vLLM import).

Measuring it takes seconds to minutes at every start (`EchoRunnerMixin.measure_target_cost`),
and its result depends only on what the key names: the model (path and a fingerprint of its
config), dtype, the machine (CPU model or GPU name, cores and threads), the vLLM version,
tensor parallelism, eager mode and the pass sizes measured. A second start with the same key
reads it from `$ECHO_VLLM_CACHE/cost_models/<hash of the key>.json`; delete the file to measure
again. The online refinement (`CostModel.observe`) corrects the scale as traffic runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

from echo_vllm.assets.models import cache_dir

FORMAT = 1  # bump when what is measured changes


def cpu_name() -> str:
    """The CPU's model string ("AMD EPYC 7B13"), or the architecture where none is readable."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
