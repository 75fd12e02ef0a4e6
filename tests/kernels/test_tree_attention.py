"""Tree attention equals dense attention under an explicit ancestor mask, prefix from a paged cache."""

import math

import pytest
import torch

from echo_vllm.core.tree import ancestor_mask
from echo_vllm.kernels.paged_kv import gather_kv, scatter_kv, slots_of
from echo_vllm.kernels.tree_attention import tree_attention


def dense_masked_attention(q, k_all, v_all, visible, scale):
    """Textbook attention for one request: softmax(q k^T * scale, masked) v, heads grouped."""
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
HEADS, KV_HEADS, DH = 4, 2, 32


def random_request(g, parents, prefix_len):
    n = len(parents)
    return dict(
        q=torch.randn(n, HEADS, DH, generator=g),
        k=torch.randn(n, KV_HEADS, DH, generator=g),
        v=torch.randn(n, KV_HEADS, DH, generator=g),
        pk=torch.randn(prefix_len, KV_HEADS, DH, generator=g),
        pv=torch.randn(prefix_len, KV_HEADS, DH, generator=g),
        mask=ancestor_mask(torch.tensor([parents]))[0],
    )


def expected_for(r, scale):
    n, p = r["q"].shape[0], r["pk"].shape[0]
    visible = torch.cat([torch.ones(n, p, dtype=torch.bool), r["mask"]], dim=1)
    return dense_masked_attention(r["q"], torch.cat([r["pk"], r["k"]]), torch.cat([r["pv"], r["v"]]), visible, scale)


def pad(tensors, length):
    return torch.stack([torch.cat([t, t.new_zeros(length - t.shape[0], *t.shape[1:])]) for t in tensors])


def batched(requests, scale):
    n = max(r["q"].shape[0] for r in requests)
    p = max(r["pk"].shape[0] for r in requests)
    masks = torch.zeros(len(requests), n, n, dtype=torch.bool)
    for i, r in enumerate(requests):
        m = r["mask"].shape[0]
        masks[i, :m, :m] = r["mask"]
        masks[i, m:, 0] = True  # padding queries see something; their output is ignored
    return tree_attention(
        pad([r["q"] for r in requests], n), pad([r["k"] for r in requests], n),
        pad([r["v"] for r in requests], n), masks,
        pad([r["pk"] for r in requests], p), pad([r["pv"] for r in requests], p),
        torch.tensor([r["pk"].shape[0] for r in requests]), scale,
    )


@pytest.mark.parametrize("shape", PARENTS)
@pytest.mark.parametrize("prefix_len", [0, 5, 70])
def test_tree_attention_equals_dense_masked_attention(shape, prefix_len):
    r = random_request(torch.Generator().manual_seed(prefix_len), PARENTS[shape], prefix_len)
    scale = 1 / math.sqrt(DH)
    torch.testing.assert_close(batched([r], scale)[0], expected_for(r, scale), atol=1e-5, rtol=1e-5)


def test_batch_of_different_trees_and_prefix_lengths():
    g = torch.Generator().manual_seed(1)
    requests = [random_request(g, PARENTS[s], p) for s, p in [("bushy", 70), ("chain", 3), ("star", 0)]]
    out = batched(requests, 0.3)
    for i, r in enumerate(requests):
        n = r["q"].shape[0]
        torch.testing.assert_close(out[i, :n], expected_for(r, 0.3), atol=1e-5, rtol=1e-5)


def test_prefix_read_from_a_paged_cache_spanning_several_blocks():
    g = torch.Generator().manual_seed(0)
    num_blocks, block_size = 6, 32
    cache = torch.zeros(num_blocks, KV_HEADS, block_size, 2 * DH)
    block_table = torch.tensor([4, 1, 5])  # a 70-token prefix over three scattered blocks
    r = random_request(g, PARENTS["bushy"], 70)
    slots = slots_of(block_table.unsqueeze(0), torch.arange(70).unsqueeze(0), block_size)[0]
    scatter_kv(cache, slots, r["pk"], r["pv"])
    paged = dict(r, **dict(zip(("pk", "pv"), gather_kv(cache, slots))))
    torch.testing.assert_close(batched([paged], 0.2)[0], expected_for(r, 0.2), atol=1e-5, rtol=1e-5)
