"""Checks that a directory holds an EAGLE-3 head matching the target, before vLLM loads it.

Reads only config.json and the safetensors headers: no weights, no vLLM import.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

# Architectures vLLM 0.32 maps to its Llama-style EAGLE-3 head (llama_eagle3.py), the layout
# echo's tree drafter runs with.
EAGLE3_ARCHITECTURES = ("Eagle3LlamaForCausalLM", "LlamaForCausalLMEagle3")


@dataclass(frozen=True)
class TargetShape:
    """What a head must agree with; read from the target's Hugging Face config."""

    hidden_size: int
    vocab_size: int
    num_hidden_layers: int


def _fail(path: str, message: str) -> ValueError:
    return ValueError(f"echo-vllm: speculative_config 'model' = {path!r}: {message}")


def read_head_config(path: str) -> dict[str, Any]:
    """The head's config.json, after checking the directory looks like an EAGLE-3 head."""
    if not os.path.isdir(path):
        raise _fail(
            path,
            "draft directory does not exist (echo loads EAGLE-3 heads from a local "
            "directory holding config.json and *.safetensors)",
        )
    config_path = os.path.join(path, "config.json")
    try:
        with open(config_path) as f:
            config = json.load(f)
    except FileNotFoundError:
        raise _fail(path, "no config.json: this is not an EAGLE-3 head directory") from None
    except json.JSONDecodeError as e:
        raise _fail(path, f"config.json is not valid JSON ({e})") from None
    architectures = config.get("architectures") or []
    if not any(a in EAGLE3_ARCHITECTURES for a in architectures):
        raise _fail(
            path,
            f"config.json declares architectures {architectures}, not an EAGLE-3 head "
            f"(expected one of {list(EAGLE3_ARCHITECTURES)})",
        )
    weight_files = sorted(name for name in os.listdir(path) if name.endswith(".safetensors"))
    if not weight_files:
        raise _fail(path, "no *.safetensors weights in the directory")
    for name in weight_files:
        problem = safetensors_problem(os.path.join(path, name))
        if problem:
            raise _fail(path, f"weights file {name!r} is corrupt: {problem}")
    return config


def safetensors_problem(file: str) -> str | None:
    """What is wrong with a safetensors file's layout, from its header alone (None if nothing):
    an 8-byte little-endian header length, a JSON header of tensors with [begin, end) offsets
    into the data that follows, which must end where the file ends (a truncated download or
    copy does not)."""
    size = os.path.getsize(file)
    with open(file, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            return f"{size} bytes, shorter than a safetensors header"
        header_size = int.from_bytes(prefix, "little")
        if header_size > size - 8:
            return f"header of {header_size} bytes declared, the file holds {size}"
        try:
            header = json.loads(f.read(header_size))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            return f"header is not JSON ({e})"
    if not isinstance(header, dict):
        return "header is not a JSON object"
    try:
        data_size = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        return "header has a tensor without data_offsets"
    if 8 + header_size + data_size != size:
        return f"header declares {data_size} bytes of tensor data, the file holds {size - 8 - header_size}"
    return None


def check_head_matches_target(path: str, target: TargetShape) -> dict[str, Any]:
    """Raise ValueError unless the head at `path` can draft for `target`; return its config."""
    config = read_head_config(path)
    head_target_hidden = config.get("target_hidden_size") or config.get("hidden_size")
    if head_target_hidden != target.hidden_size:
        raise _fail(
            path,
            f"the head reads target hidden states of size {head_target_hidden}, "
            f"but the target's hidden_size is {target.hidden_size}",
        )
    if config.get("vocab_size") != target.vocab_size:
        raise _fail(
            path,
            f"the head's vocab_size is {config.get('vocab_size')}, "
            f"but the target's is {target.vocab_size}",
        )
    if config.get("num_hidden_layers", 1) != 1:
        raise _fail(
            path,
            f"the head has {config['num_hidden_layers']} decoder layers; echo's tree drafter "
            "runs one-layer EAGLE-3 heads",
        )
    draft_vocab_size = config.get("draft_vocab_size") or config["vocab_size"]
    if draft_vocab_size > target.vocab_size:
        raise _fail(path, f"draft_vocab_size {draft_vocab_size} exceeds the target vocabulary")
    layer_ids = (config.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
    if layer_ids is not None and not all(
        isinstance(i, int) and 0 <= i < target.num_hidden_layers for i in layer_ids
    ):
        raise _fail(
            path,
            f"eagle_config.eagle_aux_hidden_state_layer_ids = {layer_ids} must be layer "
            f"indices of the target, in [0, {target.num_hidden_layers})",
        )
    return config


def default_aux_layer_ids(num_target_layers: int) -> tuple[int, int, int]:
    """The EAGLE-3 taps a new head records: a low, a middle and a high layer of the target.

    vLLM's default (2, L // 2, L - 3) whenever those are three distinct layers (L >= 7); a
    shallower target gets three distinct layers spread over its depth instead (vLLM's
    would repeat a layer and its `fc` would not see three hidden states).
    Worked examples: L 30 -> (2, 15, 27); L 4 -> (1, 2, 3); L 3 -> (0, 1, 2).
    """
    if num_target_layers < 3:
        raise ValueError(f"echo-vllm: an EAGLE-3 head taps three target layers; the target has {num_target_layers}")
    low, middle, high = 2, num_target_layers // 2, num_target_layers - 3
    if low < middle < high:
        return (low, middle, high)
    return (min(1, num_target_layers - 3), num_target_layers // 2, num_target_layers - 1)


def head_config(
    target_config: dict[str, Any], draft_vocab_size: int, aux_layer_ids: tuple[int, ...]
) -> dict[str, Any]:
    """config.json of a one-layer Llama-style EAGLE-3 head shaped like the target's layers."""
    hidden = target_config["hidden_size"]
    heads = target_config["num_attention_heads"]
    return {
        "architectures": [EAGLE3_ARCHITECTURES[1]],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": target_config["intermediate_size"],
        "num_hidden_layers": 1,
        "num_attention_heads": heads,
        "num_key_value_heads": target_config.get("num_key_value_heads", heads),
        "head_dim": target_config.get("head_dim", hidden // heads),
        "hidden_act": "silu",
        "rms_norm_eps": target_config.get("rms_norm_eps", 1e-5),
        "rope_theta": target_config.get("rope_theta", 10000.0),
        "max_position_embeddings": target_config["max_position_embeddings"],
        "vocab_size": target_config["vocab_size"],
        "draft_vocab_size": draft_vocab_size,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "eagle_config": {"eagle_aux_hidden_state_layer_ids": list(aux_layer_ids)},
    }


def random_head_tensors(config: dict[str, Any], seed: int) -> dict[str, Any]:
    """Random weights in the EAGLE-3 checkpoint layout (`midlayer.*`, `fc`, `d2t`, `t2d`).

    The draft vocabulary is the first draft_vocab_size target ids; `d2t` holds offsets
    (target id - draft id), as EAGLE-3 checkpoints do.
    """
    import torch

    hidden, inter = config["hidden_size"], config["intermediate_size"]
    q_dim = config["num_attention_heads"] * config["head_dim"]
    kv_dim = config["num_key_value_heads"] * config["head_dim"]
    vocab, draft_vocab = config["vocab_size"], config["draft_vocab_size"]
    num_aux = len(config["eagle_config"]["eagle_aux_hidden_state_layer_ids"])
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g) * 0.1

    return {
        "fc.weight": rand(hidden, num_aux * hidden),
        "midlayer.input_layernorm.weight": torch.ones(hidden),
        "midlayer.hidden_norm.weight": torch.ones(hidden),
        "midlayer.post_attention_layernorm.weight": torch.ones(hidden),
        "midlayer.self_attn.q_proj.weight": rand(q_dim, 2 * hidden),
        "midlayer.self_attn.k_proj.weight": rand(kv_dim, 2 * hidden),
        "midlayer.self_attn.v_proj.weight": rand(kv_dim, 2 * hidden),
        "midlayer.self_attn.o_proj.weight": rand(hidden, q_dim),
        "midlayer.mlp.gate_proj.weight": rand(inter, hidden),
        "midlayer.mlp.up_proj.weight": rand(inter, hidden),
        "midlayer.mlp.down_proj.weight": rand(hidden, inter),
        "norm.weight": torch.ones(hidden),
        "lm_head.weight": rand(draft_vocab, hidden),
        "d2t": torch.zeros(draft_vocab, dtype=torch.int64),
        "t2d": torch.arange(vocab) < draft_vocab,
    }


def write_random_head(
    path: str,
    target_dir: str,
    draft_vocab_size: int,
    seed: int = 0,
    aux_layer_ids: tuple[int, ...] | None = None,
) -> str:
    """An untrained EAGLE-3 head for the target in `target_dir`: drafts are rarely accepted.

    Good for losslessness tests and plumbing, never for speed.
    """
    from safetensors.torch import save_file

    with open(os.path.join(target_dir, "config.json")) as f:
        target_config = json.load(f)
    layer_ids = aux_layer_ids or default_aux_layer_ids(target_config["num_hidden_layers"])
    config = head_config(target_config, draft_vocab_size, layer_ids)
    os.makedirs(path, exist_ok=True)
    save_file(random_head_tensors(config, seed), os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return path
