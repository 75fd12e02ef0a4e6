"""Echo's workers read their options from the vLLM config they were started with."""

import pytest
from vllm.config import VllmConfig

from echo_vllm.config import parse_echo_config
from echo_vllm.workers.common import echo_config_of


@pytest.mark.parametrize("additional_config", [{}, {"other_plugin": {"x": 1}}], ids=["empty", "another_plugin"])
def test_missing_echo_options_say_how_to_select_echo(additional_config):
    with pytest.raises(RuntimeError, match=r"without echo options.*speculative_config=\{'method': 'echo'"):
        echo_config_of(VllmConfig(additional_config=additional_config))


def test_echo_options_are_parsed_into_the_config_they_came_from():
    config = parse_echo_config({"method": "echo", "model": "/heads/x", "steps": 4, "topk": 2,
                                "num_draft_tokens": 6})
    assert echo_config_of(VllmConfig(additional_config={"echo": config.to_dict()})) == config


def test_echo_options_are_validated_again_in_the_worker():
    options = {"method": "echo", "model": "/heads/x", "topk": "wide"}
    with pytest.raises(ValueError, match="'topk' must be an integer"):
        echo_config_of(VllmConfig(additional_config={"echo": options}))
