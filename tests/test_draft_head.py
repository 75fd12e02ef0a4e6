"""A draft directory that is missing, not an EAGLE-3 head, or shaped for another target."""

import json
import os

import pytest

from echo_vllm.draft_head import TargetShape, check_head_matches_target
from tiny_models import TINY

TARGET = TargetShape(TINY["hidden_size"], TINY["vocab_size"], TINY["num_hidden_layers"])


def edited_head(tmp_path, tiny_head, **changes):
    """A copy of the tiny head with config.json keys changed (None deletes the key)."""
    config = json.load(open(os.path.join(tiny_head, "config.json")))
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    os.symlink(os.path.join(tiny_head, "model.safetensors"), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(config))
    return str(tmp_path)


def test_the_tiny_head_matches_the_tiny_target(tiny_head):
    assert check_head_matches_target(tiny_head, TARGET)["draft_vocab_size"] == 256


def test_missing_directory(tmp_path):
    with pytest.raises(ValueError, match="draft directory does not exist"):
        check_head_matches_target(str(tmp_path / "nope"), TARGET)


def test_directory_without_config(tmp_path):
    with pytest.raises(ValueError, match="no config.json: this is not an EAGLE-3 head"):
        check_head_matches_target(str(tmp_path), TARGET)


def test_config_that_is_not_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        check_head_matches_target(str(tmp_path), TARGET)


def test_a_target_model_is_not_a_head(tiny_target):
    with pytest.raises(ValueError, match=r"architectures \['LlamaForCausalLM'\], not an EAGLE-3 head"):
        check_head_matches_target(tiny_target, TARGET)


def test_head_without_weights(tmp_path, tiny_head):
    (tmp_path / "config.json").write_text(open(os.path.join(tiny_head, "config.json")).read())
    with pytest.raises(ValueError, match=r"no \*.safetensors weights"):
        check_head_matches_target(str(tmp_path), TARGET)


def head_with_weights(tmp_path, tiny_head, weights: bytes) -> str:
    (tmp_path / "config.json").write_text(open(os.path.join(tiny_head, "config.json")).read())
    (tmp_path / "model.safetensors").write_bytes(weights)
    return str(tmp_path)


def tiny_head_weights(tiny_head) -> bytes:
    (name,) = [n for n in os.listdir(tiny_head) if n.endswith(".safetensors")]
    return open(os.path.join(tiny_head, name), "rb").read()


def test_truncated_weights(tmp_path, tiny_head):
    weights = tiny_head_weights(tiny_head)
    head = head_with_weights(tmp_path, tiny_head, weights[:-100])
    with pytest.raises(ValueError, match=r"weights file 'model.safetensors' is corrupt: header declares \d+ bytes"):
        check_head_matches_target(head, TARGET)


def with_header(header: bytes) -> bytes:
    return len(header).to_bytes(8, "little") + header


@pytest.mark.parametrize("weights, problem", [
    (b"", "0 bytes, shorter than a safetensors header"),
    ((1 << 40).to_bytes(8, "little") + b"{}", "header of 1099511627776 bytes declared"),
    (with_header(b"\xff{}}"), "header is not JSON"),
    (with_header(b"[]"), "header is not a JSON object"),
    (with_header(b'{"w": {"dtype": "F32"}}'), "header has a tensor without data_offsets"),
])
def test_corrupt_weights(tmp_path, tiny_head, weights, problem):
    with pytest.raises(ValueError, match=f"weights file 'model.safetensors' is corrupt: {problem}"):
        check_head_matches_target(head_with_weights(tmp_path, tiny_head, weights), TARGET)


def test_hidden_size_mismatch(tmp_path, tiny_head):
    head = edited_head(tmp_path, tiny_head, hidden_size=96)
    with pytest.raises(ValueError, match="hidden states of size 96, but the target's hidden_size is 128"):
        check_head_matches_target(head, TARGET)


def test_target_hidden_size_declared_by_the_head_wins(tmp_path, tiny_head):
    head = edited_head(tmp_path, tiny_head, hidden_size=96, target_hidden_size=128)
    check_head_matches_target(head, TARGET)


def test_vocabulary_mismatch(tmp_path, tiny_head):
    head = edited_head(tmp_path, tiny_head, vocab_size=1000)
    with pytest.raises(ValueError, match="vocab_size is 1000, but the target's is 512"):
        check_head_matches_target(head, TARGET)


def test_aux_layers_beyond_the_target(tmp_path, tiny_head):
    head = edited_head(tmp_path, tiny_head, eagle_config={"eagle_aux_hidden_state_layer_ids": [1, 2, 9]})
    with pytest.raises(ValueError, match=r"\[1, 2, 9\] must be layer indices of the target, in \[0, 4\)"):
        check_head_matches_target(head, TARGET)


def test_multi_layer_heads_are_refused(tmp_path, tiny_head):
    head = edited_head(tmp_path, tiny_head, num_hidden_layers=2)
    with pytest.raises(ValueError, match="the head has 2 decoder layers"):
        check_head_matches_target(head, TARGET)


def test_default_taps_are_vllms_or_three_distinct_layers():
    from echo_vllm.draft_head import default_aux_layer_ids

    assert default_aux_layer_ids(30) == (2, 15, 27)  # SmolLM2-135M: vLLM's own default
    assert default_aux_layer_ids(4) == (1, 2, 3)
    assert default_aux_layer_ids(3) == (0, 1, 2)
    assert all(len(set(default_aux_layer_ids(n))) == 3 for n in range(3, 64))
    with pytest.raises(ValueError, match="taps three target layers; the target has 2"):
        default_aux_layer_ids(2)
