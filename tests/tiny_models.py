"""Random-weight models the tests build themselves: a tiny Llama target and an EAGLE-3 head.

Random weights are enough for losslessness (echo must reproduce the target's own greedy
tokens whatever the drafts are); acceptance rates are meaningless here.
"""

from __future__ import annotations

import torch

from echo_vllm.draft_head import write_random_head

TINY = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,  # head_dim 32: the CPU attention kernels need >= 32
    num_key_value_heads=2,
    vocab_size=512,
    max_position_embeddings=1024,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
)


def build_tiny_llama(path: str, seed: int = 0) -> str:
    """A random Llama checkpoint (float32, no tokenizer: run vLLM with skip_tokenizer_init)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**TINY, tie_word_embeddings=False))
    # Larger-than-default weights give peaked, context-dependent logits: greedy output that
    # is neither constant nor a short loop, so a wrong token shows up as a mismatch.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
    model.to(torch.float32).save_pretrained(path, safe_serialization=True)
    return path


def build_tiny_head(path: str, target_path: str, seed: int = 1) -> str:
    return write_random_head(path, target_path, draft_vocab_size=256, seed=seed, aux_layer_ids=(0, 1, 2))


def build_tiny_chat_llama(path: str, tokenizer_dir: str, seed: int = 0) -> str:
    """A random tiny Llama that speaks SmolLM2's vocabulary, with its tokenizer and chat
    template, so text pipelines (chat prompts, training data) run on it."""
    import shutil

    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**{**TINY, "vocab_size": 49152}, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).to(torch.float32).save_pretrained(path, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        shutil.copy(f"{tokenizer_dir}/{name}", f"{path}/{name}")
    return path
