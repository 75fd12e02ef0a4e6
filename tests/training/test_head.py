"""The trainable head computes what echo's drafter computes at inference, step by step."""

import torch

from echo_vllm.draft_head import head_config
from echo_vllm.training.head import Eagle3Head, _attend_step

TARGET = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=50, max_position_embeddings=128, rms_norm_eps=1e-5,
              rope_theta=10000.0)


def small_head(seed=0):
    torch.manual_seed(seed)
    return Eagle3Head(head_config(TARGET, draft_vocab_size=20, aux_layer_ids=(0, 1, 2)), torch.randn(50, 64))


def test_checkpoint_names_are_vllm_eagle3_names():
    names = set(small_head().state_dict())
    assert {"fc.weight", "midlayer.self_attn.q_proj.weight", "midlayer.hidden_norm.weight",
            "midlayer.mlp.down_proj.weight", "norm.weight", "lm_head.weight"} <= names
    assert not any("embedding" in n for n in names)  # vLLM shares the target's embedding


def test_ttt_step_attention_is_prefix_causal_plus_own_earlier_steps():
    g = torch.Generator().manual_seed(0)
    b, h, t, d = 1, 2, 5, 8
    q = torch.randn(b, h, t, d, generator=g)
    k0, v0 = torch.randn(b, h, t, d, generator=g), torch.randn(b, h, t, d, generator=g)
    k1, v1 = torch.randn(b, h, t, d, generator=g), torch.randn(b, h, t, d, generator=g)
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    out = _attend_step(q, k0, v0, [k1], [v1], causal, 0.5)
    for pos in range(t):  # row pos sees step-0 keys 0..pos and its own step-1 key
        keys = torch.cat([k0[:, :, : pos + 1], k1[:, :, pos : pos + 1]], dim=2)
        values = torch.cat([v0[:, :, : pos + 1], v1[:, :, pos : pos + 1]], dim=2)
        expected = ((q[:, :, pos : pos + 1] @ keys.transpose(-1, -2)) * 0.5).softmax(-1) @ values
        torch.testing.assert_close(out[:, :, pos : pos + 1], expected)


def test_step_zero_row_does_not_see_the_future():
    head = small_head()
    features, tokens = torch.randn(1, 6, 192), torch.randint(0, 50, (1, 6))
    changed = features.clone()
    changed[0, 4:] += 1.0
    a, b = head(features, tokens, 2), head(changed, tokens, 2)
    for step in range(2):
        torch.testing.assert_close(a[step][0, :4], b[step][0, :4])
