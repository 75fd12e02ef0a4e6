"""Every way a `method: echo` config can be wrong gets an error naming the culprit."""

import json
import pathlib

import pytest

from echo_vllm.calibration_file import write_calibration
from echo_vllm.config import (
    VALID_KEYS,
    describe_calibration,
    parse_echo_config,
    pool_size,
    to_vllm_speculative_config,
)


def parse(**options):
    return parse_echo_config({"method": "echo", "model": "/heads/x", **options})


def test_the_bare_form_is_echo_with_the_seeds_tree_calibrated_online():
    config = parse()  # /heads/x holds no calibration.json
    assert (config.policy, config.budget, config.calibration_file) == ("echo", "auto", None)
    assert (config.steps, config.topk, config.num_draft_tokens) == (5, 8, 32)
    assert config.calibration_steps == 256 and config.judge_depth == ()
    assert to_vllm_speculative_config(config) == {
        "method": "eagle3", "model": "/heads/x", "num_speculative_tokens": 31,
        "disable_padded_drafter_batch": True, "disable_eagle_block_drop": True,
    }
    assert "calibrating the gate online over the first 256" in describe_calibration(config)


def test_static_is_a_chain_of_three_drafts_unless_shaped():
    config = parse(policy="static")
    assert (config.steps, config.topk, config.num_draft_tokens, config.budget) == (3, 1, 4, None)
    assert parse(steps=1).policy == "static"  # a single draft: nothing to gate
    assert parse(policy="static", steps=4, topk=2).num_draft_tokens == 15  # the whole pool, 2 + 3 * 4


def test_a_calibration_file_beside_the_head_is_taken(tmp_path):
    head = tmp_path / "head"
    head.mkdir()
    calibration(head, steps=4, topk=2, num_draft_tokens=6, threshold=[0.25], remaining_num_draft_tokens=3)
    config = parse_echo_config({"method": "echo", "model": str(head)})
    assert config.calibration_file == str(head / "calibration.json")
    assert (config.steps, config.topk, config.num_draft_tokens) == (4, 2, 6)
    assert (config.judge_depth, config.threshold, config.calibration_steps) == ((2,), (0.25,), None)
    assert "found beside the head" in describe_calibration(config)
    # the same tree named by hand: still the file's gate
    assert parse_echo_config({"method": "echo", "model": str(head), "steps": 4}).calibration_file is not None
    # another tree, a gate, online calibration or another policy: the file is not taken
    for options in ({"topk": 4}, {"judge_depth": 1, "threshold": 0.5}, {"calibration_steps": 9},
                    {"policy": "static"}):
        assert parse_echo_config({"method": "echo", "model": str(head), **options}).calibration_file is None


def test_the_seeds_sglang_options_select_echo():
    config = parse(steps=5, topk=8, num_draft_tokens=32, judge_depth=3, threshold=0.3,
                   remaining_num_draft_tokens=20)
    assert (config.policy, config.judge_depth, config.threshold) == ("echo", (3,), (0.3,))
    assert config.remaining_num_draft_tokens == 20 and config.gate_statistic == "frontier_sum"
    assert config.budget == "auto"
    assert parse(steps=4, topk=2, judge_depth=2, threshold=0.5).remaining_num_draft_tokens == 3


def test_echo_without_a_gate_calibrates_online():
    config = parse(policy="echo", steps=4, topk=2)
    assert (config.judge_depth, config.threshold, config.remaining_num_draft_tokens) == ((), (), None)
    assert config.calibration_steps == 256 and config.budget == "auto"
    assert parse_echo_config(config.to_dict()) == config
    assert parse(policy="echo", steps=4, calibration_steps=8).calibration_steps == 8
    assert parse(judge_depth=1, threshold=0.5).calibration_steps is None


def test_baseline_policies_and_their_defaults():
    ddd = parse(policy="ddd", steps=4, topk=2, threshold=0.4)
    assert (ddd.judge_depth, ddd.threshold, ddd.remaining_num_draft_tokens) == ((1, 2, 3), (0.4,), None)
    assert parse_echo_config(ddd.to_dict()) == ddd
    assert parse(policy="ddd", steps=4, judge_depth=[2], threshold=[0.4]).judge_depth == (2,)
    opt = parse(policy="opt_tree", steps=4, topk=2, threshold=0.05)
    assert (opt.judge_depth, opt.threshold) == ((), (0.05,))
    echo = parse(judge_depth=1, threshold=0.5, budget=12, gate_statistic="best_path")
    assert (echo.budget, echo.gate_statistic) == (12, "best_path")
    assert parse_echo_config(echo.to_dict()) == echo


def test_round_trip_through_dict():
    config = parse(steps=5, num_draft_tokens=3, max_model_len=512)
    assert parse_echo_config(config.to_dict()) == config
    assert to_vllm_speculative_config(config)["max_model_len"] == 512


def test_a_user_may_have_vllm_drop_the_last_prefix_cache_block_again():
    config = parse(disable_eagle_block_drop=False)
    assert to_vllm_speculative_config(config)["disable_eagle_block_drop"] is False


def test_dashes_in_keys_read_as_underscores():
    assert parse_echo_config({"method": "echo", "model": "/h", "num-draft-tokens": 2}).num_draft_tokens == 2


def test_pool_size_worked_examples():
    assert pool_size(3, 1) == 3
    assert pool_size(5, 8) == 8 + 4 * 64
    assert pool_size(3, 3) == 3 + 2 * 9


@pytest.mark.parametrize(
    "options, culprit",
    [
        ({"bogus": 1}, "bogus"),
        ({"num_speculative_tokens": 3}, "num_speculative_tokens"),
        ({"steps": "wide"}, "'steps' must be an integer, got 'wide'"),
        ({"steps": True}, "'steps' must be an integer"),
        ({"steps": 2.0}, "'steps' must be an integer"),
        ({"steps": 0}, "'steps' must be in [1, 32], got 0"),
        ({"steps": 33}, "'steps' must be in [1, 32], got 33"),
        ({"topk": 0}, "'topk' must be in [1, 32], got 0"),
        ({"num_draft_tokens": 1}, "'num_draft_tokens' must be in [2, 129], got 1"),
        ({"num_draft_tokens": "many"}, "'num_draft_tokens' must be an integer"),
        ({"policy": "ddd", "steps": 3, "topk": 1, "num_draft_tokens": 5},
         "'num_draft_tokens' = 5 is larger than a tree with steps = 3 and topk = 1"),
        ({"budget": None, "steps": 3, "topk": 1, "num_draft_tokens": 5},
         "'num_draft_tokens' = 5 is larger than a tree with steps = 3 and topk = 1"),
        ({"judge_depth": 3, "steps": 3}, "'judge_depth' must be in [1, 2], got 3"),
        ({"judge_depth": [2, 1], "steps": 4, "threshold": [0.1, 0.2]}, "distinct depths in increasing order"),
        ({"judge_depth": 1, "threshold": 1.5}, "'threshold' must be in [0.0, 1.0], got 1.5"),
        ({"judge_depth": 1, "threshold": "high"}, "'threshold' must be a number"),
        ({"judge_depth": [1, 2], "threshold": 0.5}, "one value per judge depth"),
        ({"policy": "static", "threshold": 0.5}, "option 'threshold' is not used by policy 'static'"),
        ({"policy": "static", "remaining_num_draft_tokens": 2}, "option 'remaining_num_draft_tokens' is not used by policy 'static'"),
        ({"policy": "static", "budget": 8}, "option 'budget' is not used by policy 'static'"),
        ({"policy": "ddd", "threshold": 0.5, "budget": 8}, "option 'budget' is not used by policy 'ddd'"),
        ({"policy": "opt_tree", "threshold": 0.1, "judge_depth": 1}, "option 'judge_depth' is not used by policy 'opt_tree'"),
        ({"policy": "ddd"}, "policy 'ddd' needs option 'threshold'"),
        ({"policy": "echo", "judge_depth": 1}, "policy 'echo' needs option 'threshold'"),
        ({"judge_depth": 1, "threshold": 0.5, "calibration_steps": 10}, "'calibration_steps' calibrates the gate online"),
        ({"policy": "static", "calibration_steps": 10}, "option 'calibration_steps' is not used by policy 'static'"),
        ({"policy": "echo", "threshold": 0.5}, "policy 'echo' needs option 'judge_depth'"),
        ({"policy": "ddd", "steps": 4, "threshold": [0.1, 0.2]}, "'threshold' must be one number for policy 'ddd'"),
        ({"policy": "opt_tree", "steps": 1, "threshold": 0.1}, "needs steps >= 2, got steps = 1"),
        ({"judge_depth": 1, "threshold": 0.5, "gate_statistic": "entropy"}, "'gate_statistic' must be one of ['frontier_sum', 'best_path']"),
        ({"judge_depth": 1, "threshold": 0.5, "steps": 3, "topk": 1, "remaining_num_draft_tokens": 9},
         "'remaining_num_draft_tokens' must be in [1, 4], got 9"),
        ({"policy": "greedy"}, "'policy' must be one of ['static', 'ddd', 'opt_tree', 'echo'], got 'greedy'"),
        ({"judge_depth": 1, "threshold": 0.5, "budget": 0}, "'budget' must be 'auto' or an integer >= 1, got 0"),
        ({"judge_depth": 1, "threshold": 0.5, "budget": "lots"}, "'budget' must be 'auto' or an integer >= 1"),
        ({"model": 7}, "'model' must be a path"),
        ({"calibration_file": ""}, "'calibration_file' must be a path"),
    ],
)
def test_bad_option_is_refused_naming_it(options, culprit):
    with pytest.raises(ValueError, match="echo-vllm") as info:
        parse(**options)
    assert culprit in str(info.value)


def test_unknown_key_lists_valid_options():
    with pytest.raises(ValueError) as info:
        parse(bogus=1)
    for key in VALID_KEYS:
        assert key in str(info.value)


def test_missing_model_is_refused():
    with pytest.raises(ValueError, match="option 'model' is required: the local directory of an EAGLE-3 head"):
        parse_echo_config({"method": "echo"})


def calibration(tmp_path, **overrides):
    content = {"steps": 5, "topk": 4, "num_draft_tokens": 16, "judge_depth": [2], "threshold": [0.3],
               "gate_statistic": "best_path", "remaining_num_draft_tokens": 6,
               "models": {"target": "t", "draft": "d"}, "fingerprints": {"target": "x", "draft": "y"},
               **overrides}
    path = tmp_path / "calibration.json"
    write_calibration(str(path), content)
    return str(path)


def test_a_calibration_file_decides_the_gate(tmp_path):
    path = calibration(tmp_path)
    config = parse(calibration_file=path)
    assert (config.policy, config.steps, config.topk, config.num_draft_tokens) == ("echo", 5, 4, 16)
    assert (config.judge_depth, config.threshold, config.gate_statistic) == ((2,), (0.3,), "best_path")
    assert config.remaining_num_draft_tokens == 6
    assert parse_echo_config(config.to_dict()) == config


@pytest.mark.parametrize(
    "options, culprit",
    [
        ({"threshold": 0.5}, "['threshold'] are decided by calibration_file"),
        ({"topk": 8}, "option 'topk' = 8 differs from 4 in calibration_file"),
        ({"policy": "ddd"}, "option 'calibration_file' is not used by policy 'ddd'"),
    ],
)
def test_calibration_file_conflicts_are_refused(tmp_path, options, culprit):
    with pytest.raises(ValueError) as info:
        parse(calibration_file=calibration(tmp_path), **options)
    assert culprit in str(info.value)


def test_missing_or_foreign_calibration_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match="does not exist; make one with `echo-vllm calibrate`"):
        parse(calibration_file=str(tmp_path / "none.json"))
    (tmp_path / "other.json").write_text('{"judge_depth": 2}')
    with pytest.raises(ValueError, match="is not an echo-vllm calibration"):
        parse(calibration_file=str(tmp_path / "other.json"))


def test_truncated_or_incomplete_calibration_file_is_refused(tmp_path):
    whole = open(calibration(tmp_path)).read()
    (tmp_path / "truncated.json").write_text(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match="truncated.json' is not JSON"):
        parse(calibration_file=str(tmp_path / "truncated.json"))
    content = json.loads(whole)
    del content["threshold"], content["fingerprints"]["draft"]
    (tmp_path / "incomplete.json").write_text(json.dumps(content))
    with pytest.raises(ValueError, match=r"incomplete.json' lacks \['threshold', 'fingerprints.draft'\]"):
        parse(calibration_file=str(tmp_path / "incomplete.json"))
    del content["fingerprints"]
    content["threshold"] = [0.3]
    (tmp_path / "incomplete.json").write_text(json.dumps(content))
    with pytest.raises(ValueError, match=r"lacks \['fingerprints'\]"):
        parse(calibration_file=str(tmp_path / "incomplete.json"))


def test_calibration_file_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    path = calibration(tmp_path)
    before = open(path).read()
    write_text = pathlib.Path.write_text

    def crash_halfway(self, text):
        write_text(self, text[: len(text) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(pathlib.Path, "write_text", crash_halfway)
    with pytest.raises(OSError, match="disk full"):
        calibration(tmp_path, threshold=[0.9])
    assert open(path).read() == before
    assert [p.name for p in tmp_path.iterdir()] == ["calibration.json"]
