"""`echo-vllm calibrate` end to end on a tiny chat target: records, table, a file the engine
loads (and refuses for another head), output still token-identical to no speculation."""

import json

import pytest
from vllm import LLM, SamplingParams

from conftest import shutdown
from echo_vllm import cli
from echo_vllm.draft_head import write_random_head

TREE = {"steps": 3, "topk": 2, "num_draft_tokens": 6}
ENGINE = dict(dtype="float32", enforce_eager=True, max_model_len=512, kv_cache_memory_bytes=256 << 20)


@pytest.fixture(scope="module")
def calibration(tiny_chat_pair, tmp_path_factory):
    target, head = tiny_chat_pair
    out = tmp_path_factory.mktemp("calibration") / "calibration.json"
    argv = ["calibrate", "--target", target, "--draft", head, "--out", str(out), "--num-prompts", "8",
            "--batch-size", "1", "--run-batch-size", "4", "--max-tokens", "16", "--steps", "3", "--topk", "2", "--num-draft-tokens", "6"]
    assert cli.main(argv) == 0
    return out


def test_calibration_file_holds_a_choice_and_its_table(calibration):
    content = json.loads(calibration.read_text())
    assert content["measured_with"]["tree"] == {"policy": "static", **TREE}
    # the tree chosen within the recorded one, its gate at a depth it drafts
    assert 2 <= content["steps"] <= TREE["steps"] and 2 <= content["num_draft_tokens"] <= TREE["num_draft_tokens"]
    assert content["topk"] == TREE["topk"]
    assert 1 <= content["judge_depth"][0] < content["steps"] and 0.0 <= content["threshold"][0] <= 1.0
    assert content["gate_statistic"] in ("frontier_sum", "best_path")
    assert content["measured_with"]["records"] > 8
    # chosen for a lone request, the prompts run four at a time
    assert (content["measured_with"]["batch_size"], content["measured_with"]["run_batch_size"]) == (1, 4)
    assert [row["depth"] for row in content["table"]["frontier_sum"]] == list(range(1, content["steps"]))
    assert all(0.0 <= row["auc"] <= 1.0 for rows in content["table"].values() for row in rows)


def test_the_engine_loads_it_and_stays_lossless(tiny_chat_pair, calibration):
    target, head = tiny_chat_pair
    prompts = ["Tell me a story", "What is 2 + 2?", "def add(a, b):"]
    greedy = SamplingParams(temperature=0, max_tokens=24)
    plain = LLM(model=target, **ENGINE)
    reference = [o.outputs[0].token_ids for o in plain.generate(prompts, greedy, use_tqdm=False)]
    shutdown(plain)
    echo = LLM(model=target, **ENGINE,
               speculative_config={"method": "echo", "model": head, "calibration_file": str(calibration)})
    try:
        assert [o.outputs[0].token_ids for o in echo.generate(prompts, greedy, use_tqdm=False)] == reference
        (check_depths,) = echo.collective_rpc(lambda w: w.model_runner.echo_policy.gate.check_depths)
        assert list(check_depths) == json.loads(calibration.read_text())["judge_depth"]
    finally:
        shutdown(echo)


def test_a_calibration_of_another_head_is_refused(tiny_chat_pair, calibration, tmp_path):
    target, _ = tiny_chat_pair
    other = write_random_head(str(tmp_path / "other"), target, draft_vocab_size=256, seed=4, aux_layer_ids=(0, 1, 2))
    with pytest.raises(ValueError, match="was measured with draft"):
        LLM(model=target, **ENGINE,
            speculative_config={"method": "echo", "model": other, "calibration_file": str(calibration)})
