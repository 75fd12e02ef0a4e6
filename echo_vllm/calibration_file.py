"""The Sweet-Spot calibration file `echo-vllm calibrate` writes and the engine loads.

Pure Python (no vLLM import), read while the speculative config is validated. A file is
keyed by the (target, draft) pair it was measured on: fingerprints of both model
directories (config.json and the weight files' names and sizes), checked at load.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

FORMAT = "echo-vllm-calibration/1"
# options a calibration file decides (they may not be given next to it)
CALIBRATED_KEYS = ("judge_depth", "threshold", "gate_statistic", "remaining_num_draft_tokens")
# options the calibration was measured with (the engine's must be the same)
TREE_KEYS = ("steps", "topk", "num_draft_tokens")


def model_fingerprint(model_dir: str) -> str:
    """sha256 over config.json and the weight files' names and sizes of a model directory
    (of the name itself for a model that is not a local directory)."""
    path = Path(model_dir)
    digest = hashlib.sha256()
    if not path.is_dir():
        digest.update(model_dir.encode())
        return digest.hexdigest()
    config = path / "config.json"
    digest.update(config.read_bytes() if config.is_file() else b"")
    for weights in sorted(path.glob("*.safetensors")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    return digest.hexdigest()


# what every calibration file holds besides its format (CALIBRATED_KEYS, TREE_KEYS and the pair)
REQUIRED_KEYS = (*TREE_KEYS, *CALIBRATED_KEYS, "models", "fingerprints")


def write_calibration(path: str, content: dict[str, Any]) -> None:
    """Write atomically: a reader (an engine starting meanwhile, or after a crash mid-write)
    sees the previous file or the whole new one, never a part."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    partial = file.with_name(f".{file.name}.{os.getpid()}.partial")
    try:
        partial.write_text(json.dumps({"format": FORMAT, **content}, indent=1))
        os.replace(partial, file)
    finally:
        partial.unlink(missing_ok=True)


def read_calibration(path: str) -> dict[str, Any]:
    """The calibration file's content; a clear error for a missing or foreign file."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"echo-vllm: calibration_file {path!r} does not exist; "
                         "make one with `echo-vllm calibrate`")
    try:
        content = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"echo-vllm: calibration_file {path!r} is not JSON ({error})") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise ValueError(f"echo-vllm: calibration_file {path!r} is not an echo-vllm calibration "
                         f"(expected format {FORMAT!r})")
    missing = [key for key in REQUIRED_KEYS if key not in content]
    roles = [role for role in ("target", "draft")
             if "models" not in missing and "fingerprints" not in missing
             and not (role in content["models"] and role in content["fingerprints"])]
    if missing or roles:
        raise ValueError(f"echo-vllm: calibration_file {path!r} lacks {missing + [f'fingerprints.{r}' for r in roles]}; "
                         "make it again with `echo-vllm calibrate`")
    return content


def check_models(content: dict[str, Any], path: str, role: str, model_dir: str) -> None:
    """Refuse a calibration measured on another target or draft than the one loaded."""
    if content["fingerprints"][role] != model_fingerprint(model_dir):
        raise ValueError(
            f"echo-vllm: calibration_file {path!r} was measured with {role} "
            f"{content['models'][role]!r}, not with {model_dir!r}; calibrate this pair with "
            "`echo-vllm calibrate`"
        )
