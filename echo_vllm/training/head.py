"""The EAGLE-3 draft head as a trainable torch module, with EAGLE-3's training-time test.

The architecture is the one vLLM's `eagle3` method loads (llama_eagle3.py): `fc` over the
target's three concatenated hidden states; one decoder layer whose attention input is
[input_layernorm(embedding), hidden_norm(hidden)]; post-attention norm and MLP with residuals;
a final norm; `lm_head` over a reduced draft vocabulary. Parameter names are the checkpoint's
(`fc`, `midlayer.*`, `norm`, `lm_head`), so `state_dict()` is the checkpoint.

Training-time test (TTT): the head is unrolled for `ttt_steps` steps over a whole sequence.
Shape key: B sequences, T positions, H hidden, Hq / Hkv heads, Dh head size, S TTT steps.
At step j the row at position t takes the embedding of token t+1+j and, as hidden state, the
head's own output at step j-1 (the target's features through `fc` at step 0); it sits at
RoPE position t+j and predicts token t+2+j. It attends to step 0's rows at positions <= t
(what the draft's first pass writes into the KV cache at inference) and to its own rows of
steps 1..j at position t (its ancestors at inference): exactly what a drafted node sees.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = nn.Linear(2 * hidden, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(2 * hidden, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(2 * hidden, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=False)


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MidLayer(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        hidden, eps = config["hidden_size"], config["rms_norm_eps"]
        self.input_layernorm = RMSNorm(hidden, eps)
        self.hidden_norm = RMSNorm(hidden, eps)
        self.post_attention_layernorm = RMSNorm(hidden, eps)
        self.self_attn = Attention(hidden, config["num_attention_heads"],
                                   config["num_key_value_heads"], config["head_dim"])
        self.mlp = MLP(hidden, config["intermediate_size"])


def rotate(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Neox-style RoPE, as vLLM applies it to Llama. x [B, heads, T, Dh]; positions [T]."""
    half = x.shape[-1] // 2
    inv_freq = 1.0 / (theta ** (torch.arange(0, half, dtype=torch.float32) / half))
    angles = positions.float()[:, None] * inv_freq[None, :]  # [T, Dh/2]
    cos, sin = angles.cos().repeat(1, 2), angles.sin().repeat(1, 2)
    x1, x2 = x[..., :half], x[..., half:]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Eagle3Head(nn.Module):
    def __init__(self, config: dict, embedding: torch.Tensor):
        """config: the head's config.json (draft_head.head_config); embedding [V, H]: the
        target's token embedding, frozen (vLLM shares the target's at inference)."""
        super().__init__()
        hidden = config["hidden_size"]
        num_aux = len(config["eagle_config"]["eagle_aux_hidden_state_layer_ids"])
        self.config = config
        self.register_buffer("embedding", embedding.detach().clone(), persistent=False)
        self.fc = nn.Linear(num_aux * hidden, hidden, bias=False)
        self.midlayer = MidLayer(config)
        self.norm = RMSNorm(hidden, config["rms_norm_eps"])
        self.lm_head = nn.Linear(hidden, config["draft_vocab_size"], bias=False)

    def forward(self, features: torch.Tensor, tokens: torch.Tensor, ttt_steps: int) -> list[torch.Tensor]:
        """Draft-vocabulary logits of every TTT step, each [B, T, Vd].

        features [B, T, num_aux * H]: the target's hidden states at each position; tokens
        [B, T]. Rows whose input token lies past the sequence read token 0; their
        predictions are masked out of the loss by the caller.
        """
        layer, attn = self.midlayer, self.midlayer.self_attn
        batch, length, _ = features.shape
        theta = self.config["rope_theta"]
        hidden = self.fc(features)
        causal = torch.ones(length, length, dtype=torch.bool, device=features.device).tril()
        group = attn.heads // attn.kv_heads
        scale = 1.0 / math.sqrt(attn.head_dim)
        step0_k = step0_v = None
        later_k, later_v, logits = [], [], []
        for step in range(ttt_steps):
            next_tokens = F.pad(tokens[:, 1 + step:], (0, 1 + step))  # token t+1+step at row t
            embeds = layer.input_layernorm(F.embedding(next_tokens, self.embedding))
            residual = hidden
            x = torch.cat([embeds, layer.hidden_norm(hidden)], dim=-1)
            positions = torch.arange(length, device=features.device) + step
            q = rotate(self._heads(attn.q_proj(x), attn.heads), positions, theta)
            k = rotate(self._heads(attn.k_proj(x), attn.kv_heads), positions, theta)
            v = self._heads(attn.v_proj(x), attn.kv_heads)
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
            if step == 0:
                step0_k, step0_v = k, v
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
            else:
                later_k.append(k)
                later_v.append(v)
                out = _attend_step(q, step0_k, step0_v, later_k, later_v, causal, scale)
            out = attn.o_proj(out.transpose(1, 2).reshape(batch, length, -1))
            residual = out + residual
            prenorm = layer.mlp(layer.post_attention_layernorm(residual)) + residual
            logits.append(self.lm_head(self.norm(prenorm)))
            hidden = prenorm
        return logits

    @staticmethod
    def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, heads, -1).transpose(1, 2)  # [B, heads, T, Dh]


def _attend_step(q, step0_k, step0_v, later_k, later_v, causal, scale):
    """Attention of TTT step >= 1: causal over step 0's rows, plus each later step's row at
    the query's own position (one score per step), under one softmax."""
    scores = (q @ step0_k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~causal, float("-inf"))  # [B, Hq, T, T]
    own = torch.stack([(q * k).sum(-1) * scale for k in later_k], dim=-1)  # [B, Hq, T, S]
    probs = torch.cat([scores, own], dim=-1).softmax(dim=-1)
    length = q.shape[2]
    out = probs[..., :length] @ step0_v
    for i, v in enumerate(later_v):
        out = out + probs[..., length + i, None] * v
    return out
