"""`echo-vllm train-draft` end to end on a tiny target: data, training, a head vLLM loads."""

import json

import pytest
from vllm import LLM, SamplingParams

from conftest import shutdown
from echo_vllm import cli
from echo_vllm.training.pipeline import recorded_command, train_draft
from echo_vllm.training.train import TrainConfig
from tiny_models import build_tiny_chat_llama

CONFIG = TrainConfig(epochs=3, batch_tokens=512, lr=3e-3, checkpoint_every=2, val_fraction=0.25)


@pytest.fixture(scope="module")
def tiny_chat(tmp_path_factory, smollm2):
    return build_tiny_chat_llama(str(tmp_path_factory.mktemp("tiny_chat")), smollm2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_chat):
    out, work = tmp_path_factory.mktemp("head"), tmp_path_factory.mktemp("work")
    summary = train_draft(tiny_chat, str(out), num_prompts=8, max_new_tokens=24, draft_vocab_size=512,
                          train_config=CONFIG, work_dir=str(work), answered=4)
    return out, work, summary


def test_data_pipeline_and_loss_decrease(trained):
    out, work, summary = trained
    assert (work / "responses.jsonl").read_text().count("\n") == 8
    assert summary["prompts"] == 8 and summary["response_tokens"] > 8
    assert summary["answered"] == 4 and len(list((work / "answered_features").glob("*.safetensors"))) == 1
    assert summary["train_sequences"] + summary["val_sequences"] == 12
    history = summary["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert json.loads((out / "training.json").read_text())["history"] == history
    assert set(summary["phase_seconds"]) == {"generate", "capture", "train"}
    assert "generation " in (out / "README.md").read_text()  # the card gives the phase times


def test_output_loads_in_vllm_eagle3(trained, tiny_chat):
    out, _, _ = trained
    config = json.loads((out / "config.json").read_text())
    assert config["draft_vocab_size"] == 512
    llm = LLM(model=tiny_chat, dtype="float32", enforce_eager=True, max_model_len=512,
              kv_cache_memory_bytes=256 << 20,
              speculative_config={"method": "eagle3", "model": str(out), "num_speculative_tokens": 2})
    try:
        out_tokens = llm.generate(["Hello there"], SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)
        assert len(out_tokens[0].outputs[0].token_ids) == 8
    finally:
        shutdown(llm)


def test_a_second_run_reuses_the_data_and_the_finished_training(trained, tiny_chat):
    out, work, summary = trained
    again = train_draft(tiny_chat, str(out), num_prompts=8, max_new_tokens=24, draft_vocab_size=512,
                        train_config=CONFIG, work_dir=str(work), answered=4)
    assert again["history"] == summary["history"]
    assert again["wall_time_s"] < summary["wall_time_s"]
    # the card counts the compute of both runs: the first's phases are not lost
    assert all(again["phase_seconds"][p] >= summary["phase_seconds"][p] for p in summary["phase_seconds"])


def test_other_data_settings_in_the_same_work_dir_are_refused(trained, tiny_chat, tmp_path):
    _, work, _ = trained
    with pytest.raises(ValueError, match="holds data made with other settings \\(max_new_tokens\\)"):
        train_draft(tiny_chat, str(tmp_path / "h"), num_prompts=8, max_new_tokens=25,
                    draft_vocab_size=512, train_config=CONFIG, work_dir=str(work), answered=4)


def test_missing_target_is_refused_before_any_work(tmp_path, capsys):
    assert cli.main(["train-draft", "--target", str(tmp_path / "nope"), "--out", str(tmp_path / "h")]) == 1
    assert "has no config.json" in capsys.readouterr().err


def test_the_card_names_the_cache_not_this_machines_path(monkeypatch, tmp_path):
    monkeypatch.setenv("ECHO_VLLM_CACHE", str(tmp_path))
    monkeypatch.setattr("sys.argv", ["/venv/bin/echo-vllm", "train-draft", "--work-dir", f"{tmp_path}/training/h"])
    assert recorded_command() == "echo-vllm train-draft --work-dir $ECHO_VLLM_CACHE/training/h"
    monkeypatch.setattr("sys.argv", ["pytest"])
    assert recorded_command() is None
