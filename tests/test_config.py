"""Every way a `method: echo` config can be wrong gets an error naming the culprit."""

import pytest

from echo_vllm.config import (
    VALID_KEYS,
    parse_echo_config,
    pool_size,
    to_vllm_speculative_config,
)


def parse(**options):
    return parse_echo_config({"method": "echo", "model": "/heads/x", **options})


def test_defaults_are_a_chain_of_three_drafts():
    config = parse()
    assert (config.steps, config.topk, config.num_draft_tokens) == (3, 1, 4)
    assert config.policy == "static"
    assert to_vllm_speculative_config(config) == {
        "method": "eagle3", "model": "/heads/x", "num_speculative_tokens": 3,
        "disable_padded_drafter_batch": True,
    }


def test_round_trip_through_dict():
    config = parse(steps=5, num_draft_tokens=3, max_model_len=512)
    assert parse_echo_config(config.to_dict()) == config
    assert to_vllm_speculative_config(config)["max_model_len"] == 512


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
        ({"steps": 3, "num_draft_tokens": 5}, "'num_draft_tokens' = 5 is larger than a tree with steps = 3 and topk = 1"),
        ({"judge_depth": 3, "steps": 3}, "'judge_depth' must be in [1, 2], got 3"),
        ({"judge_depth": [2, 1], "steps": 4, "threshold": [0.1, 0.2]}, "distinct depths in increasing order"),
        ({"judge_depth": 1, "threshold": 1.5}, "'threshold' must be in [0.0, 1.0], got 1.5"),
        ({"judge_depth": 1, "threshold": "high"}, "'threshold' must be a number"),
        ({"judge_depth": [1, 2], "threshold": 0.5}, "one value per judge depth"),
        ({"threshold": 0.5}, "need 'judge_depth'"),
        ({"remaining_num_draft_tokens": 2}, "need 'judge_depth'"),
        ({"judge_depth": 1, "threshold": 0.5, "remaining_num_draft_tokens": 9}, "'remaining_num_draft_tokens' must be in [1, 4], got 9"),
        ({"policy": "greedy"}, "'policy' must be one of ['static', 'ddd', 'opt_tree', 'echo'], got 'greedy'"),
        ({"budget": 0}, "'budget' must be 'auto' or an integer >= 1, got 0"),
        ({"budget": "lots"}, "'budget' must be 'auto' or an integer >= 1"),
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
    with pytest.raises(ValueError, match="'model' must be a path"):
        parse_echo_config({"method": "echo"})


@pytest.mark.parametrize(
    "options, culprit",
    [
        ({"steps": 4, "judge_depth": 2, "threshold": 0.3, "remaining_num_draft_tokens": 2}, "'judge_depth'"),
        ({"policy": "echo"}, "'policy'"),
        ({"budget": "auto"}, "'budget'"),
        ({"calibration_file": "/tmp/c.json"}, "'calibration_file'"),
    ],
)
def test_options_not_supported_yet_are_refused_not_ignored(options, culprit):
    with pytest.raises(ValueError, match="not supported yet") as info:
        parse(**options)
    assert culprit in str(info.value)
