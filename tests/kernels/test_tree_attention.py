"""Tree attention equals dense attention under an explicit ancestor mask, prefix from a paged cache."""

import math

import pytest
import torch

from echo_vllm.core.tree import ancestor_mask
from echo_vllm.kernels.paged_kv import gather_kv, scatter_kv, slots_of
from echo_vllm.kernels.tree_attention import tree_attention


def dense_masked_attention(q, k_all, v_all, visible, scale):
    """Textbook attention: softmax(q k^T * scale + mask) v, heads grouped by repetition."""
    group = q.shape[1] // k_all.shape[1]
    k_all = k_all.repeat_interleave(group, dim=1)
    v_all = v_all.repeat_interleave(group, dim=1)
    scores = torch.einsum("nhd,mhd->hnm", q, k_all) * scale
    scores = scores.masked_fill(~visible, float("-inf"))
    return torch.einsum("hnm,mhd->nhd", scores.softmax(-1), v_all)


PARENTS = {
    "chain": [-1, 0, 1, 2, 3],
    "star": [-1, 0, 0, 0, 0],
    "bushy": [-1, 0, 0, 1, 1, 2, 3, 3],
}


@pytest.mark.parametrize("shape", PARENTS)
@pytest.mark.parametrize("prefix_len", [0, 5, 70])
def test_tree_attention_equals_dense_masked_attention(shape, prefix_len):
    g = torch.Generator().manual_seed(prefix_len)
    parents = torch.tensor([PARENTS[shape]])
    n, heads, kv_heads, dh = parents.shape[1], 4, 2, 32
    q = torch.randn(n, heads, dh, generator=g)
    k, v = torch.randn(n, kv_heads, dh, generator=g), torch.randn(n, kv_heads, dh, generator=g)
    pk, pv = torch.randn(prefix_len, kv_heads, dh, generator=g), torch.randn(prefix_len, kv_heads, dh, generator=g)
    mask = ancestor_mask(parents)[0]
    scale = 1 / math.sqrt(dh)
    visible = torch.cat([torch.ones(n, prefix_len, dtype=torch.bool), mask], dim=1)
    expected = dense_masked_attention(q, torch.cat([pk, k]), torch.cat([pv, v]), visible, scale)
    got = tree_attention(q, k, v, pk, pv, mask, scale)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_prefix_read_from_a_paged_cache_spanning_several_blocks():
    g = torch.Generator().manual_seed(0)
    num_blocks, kv_heads, block_size, dh = 6, 2, 32, 32
    cache = torch.zeros(num_blocks, kv_heads, block_size, 2 * dh)
    block_table = torch.tensor([4, 1, 5])  # a 70-token prefix over three scattered blocks
    prefix_len = 70
    pk, pv = torch.randn(prefix_len, kv_heads, dh, generator=g), torch.randn(prefix_len, kv_heads, dh, generator=g)
    slots = slots_of(block_table, torch.arange(prefix_len), block_size)
    scatter_kv(cache, slots, pk, pv)
    gk, gv = gather_kv(cache, slots)
    assert torch.equal(gk, pk) and torch.equal(gv, pv)

    parents = torch.tensor([PARENTS["bushy"]])
    n = parents.shape[1]
    q = torch.randn(n, 4, dh, generator=g)
    k, v = torch.randn(n, kv_heads, dh, generator=g), torch.randn(n, kv_heads, dh, generator=g)
    mask = ancestor_mask(parents)[0]
    visible = torch.cat([torch.ones(n, prefix_len, dtype=torch.bool), mask], dim=1)
    expected = dense_masked_attention(q, torch.cat([pk, k]), torch.cat([pv, v]), visible, 0.2)
    torch.testing.assert_close(tree_attention(q, k, v, gk, gv, mask, 0.2), expected, atol=1e-5, rtol=1e-5)
