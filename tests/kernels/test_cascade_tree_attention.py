"""Cascade tree attention (prefix part + tree part, merged by LSE) equals the torch reference
`tree_attention` over [gathered prefix | tree] keys: fp32, and bf16/fp16 inputs against the
fp32 reference on the same values. Prefix read from a paged cache through a permuted block
table; memory per step bounded by the chunk (no padded per-node copy of the prefix)."""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from echo_vllm.core.tree import ancestor_mask
from echo_vllm.kernels.cascade_tree_attention import (
    cascade_tree_attention,
    merge_attention_states,
    paged_prefix_attention,
    tree_part_attention,
)
from echo_vllm.kernels.tree_attention import tree_attention


def random_parents(g, batch, nodes):
    """[B, N] parent_idx: node i's parent drawn among nodes 0..i-1."""
    parents = torch.full((batch, nodes), -1)
    for i in range(1, nodes):
        parents[:, i] = torch.randint(0, i, (batch,), generator=g)
    return parents


def make_case(seed, heads, kv_heads, head_dim, nodes, prefix_lens, block_size, dtype):
    """Random tree batch over a paged cache whose unused slots hold noise too (a read past a
    prefix would show)."""
    g = torch.Generator().manual_seed(seed)
    batch = len(prefix_lens)
    blocks_per_request = max(1, -(-max(prefix_lens) // block_size))
    num_blocks = batch * blocks_per_request + 3
    rand = lambda *shape: torch.randn(*shape, generator=g).to(dtype)  # noqa: E731
    return dict(
        query=rand(batch, nodes, heads, head_dim),
        tree_key=rand(batch, nodes, kv_heads, head_dim),
        tree_value=rand(batch, nodes, kv_heads, head_dim),
        tree_mask=ancestor_mask(random_parents(g, batch, nodes)),
        key_cache=rand(num_blocks, block_size, kv_heads, head_dim),
        value_cache=rand(num_blocks, block_size, kv_heads, head_dim),
        block_table=torch.randperm(num_blocks, generator=g)[: batch * blocks_per_request]
        .view(batch, blocks_per_request).to(torch.int32),
        prefix_lens=torch.tensor(prefix_lens, dtype=torch.int64),
        scale=1 / math.sqrt(head_dim),
    )


def reference(case):
    """tree_attention in fp32 over the prefix gathered through the block table."""
    block_size = case["key_cache"].shape[1]
    longest = max(1, int(case["prefix_lens"].max()))
    positions = torch.arange(longest)
    blocks = case["block_table"].long()[:, positions // block_size]  # [B, P]
    prefix_k = case["key_cache"][blocks, positions % block_size].float()
    prefix_v = case["value_cache"][blocks, positions % block_size].float()
    f = {k: case[k].float() for k in ("query", "tree_key", "tree_value")}
    return tree_attention(f["query"], f["tree_key"], f["tree_value"], case["tree_mask"], prefix_k, prefix_v,
                          case["prefix_lens"], case["scale"])


def cascade(case, **kwargs):
    return cascade_tree_attention(
        case["query"], case["tree_key"], case["tree_value"], case["tree_mask"], case["key_cache"],
        case["value_cache"], case["block_table"], case["prefix_lens"], int(case["prefix_lens"].max()),
        case["scale"], **kwargs,
    )


TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}
# (head_dim, heads, kv_heads): 32/8-style GQA (ratio 4) and 28/4-style (ratio 7), scaled down
HEADS = [(64, 4, 1), (128, 8, 2), (64, 7, 1)]
SHAPES = [  # (nodes, prefix_lens, block_size)
    (2, [0, 1], 16),
    (5, [17, 0, 300], 16),
    (8, [31, 32, 33], 32),
    (13, [290, 5], 32),
    (33, [0, 64, 129], 16),
]


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
@pytest.mark.parametrize("heads", HEADS, ids=lambda h: "dh{}-h{}-kv{}".format(*h))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"n{s[0]}-bs{s[2]}")
def test_cascade_equals_reference(dtype, heads, shape):
    head_dim, num_heads, kv_heads = heads
    nodes, prefix_lens, block_size = shape
    case = make_case(nodes * 1000 + head_dim, num_heads, kv_heads, head_dim, nodes, prefix_lens, block_size, dtype)
    got = cascade(case)
    assert got.dtype == dtype and got.shape == case["query"].shape
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(got.float(), reference(case), atol=tol, rtol=tol)


def test_small_chunks_give_the_same_answer():
    """The online softmax over many chunks (one block each) equals one chunk."""
    case = make_case(3, 4, 2, 64, 7, [300, 0, 45], 16, torch.float32)
    small = lambda *a: paged_prefix_attention(*a, chunk_tokens=16)  # noqa: E731
    torch.testing.assert_close(cascade(case, prefix_attention=small), cascade(case), atol=1e-5, rtol=1e-5)


def test_prefix_part_reads_only_the_prefix_and_returns_its_lse():
    """One request, one head, prefix of 2 tokens in block 1 (block 0 holds noise):
    keys [1, 0] and [0, 1], query [ln 3, 0] at scale 1 -> weights 3/4, 1/4; lse ln 4."""
    key_cache = torch.full((2, 4, 1, 2), 99.0)
    value_cache = torch.full((2, 4, 1, 2), 99.0)
    key_cache[1, :2, 0] = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    value_cache[1, :2, 0] = torch.tensor([[4.0, 0.0], [0.0, 8.0]])
    query = torch.tensor([[[math.log(3), 0.0]]])  # [T 1, H 1, Dh 2]
    out, lse = paged_prefix_attention(query, key_cache, value_cache, torch.tensor([[1, 0]]), torch.tensor([2]), 2, 1.0)
    torch.testing.assert_close(out, torch.tensor([[[3.0, 2.0]]]))
    torch.testing.assert_close(lse, torch.tensor([[math.log(4)]]))


def test_empty_prefix_gives_minus_infinity_and_the_merge_keeps_the_tree_part():
    case = make_case(5, 2, 1, 64, 3, [0], 16, torch.float32)
    out, lse = paged_prefix_attention(case["query"][0], case["key_cache"], case["value_cache"],
                                      case["block_table"], case["prefix_lens"], 0, case["scale"])
    assert torch.equal(out, torch.zeros_like(out)) and bool((lse == -torch.inf).all())
    tree_out, tree_lse = tree_part_attention(case["query"], case["tree_key"], case["tree_value"],
                                             case["tree_mask"], case["scale"])
    merged = torch.empty_like(tree_out)
    merge_attention_states(merged, out, lse.abs(), tree_out, tree_lse)  # FlashAttention may say +inf
    torch.testing.assert_close(merged, tree_out)


def test_merge_weights_by_lse():
    """Parts with lse ln 1 and ln 3 weigh 1/4 and 3/4."""
    output = torch.empty(1, 1, 2)
    merge_attention_states(output, torch.tensor([[[4.0, 0.0]]]), torch.tensor([[0.0]]),
                           torch.tensor([[[0.0, 4.0]]]), torch.tensor([[math.log(3)]]))
    torch.testing.assert_close(output, torch.tensor([[[1.0, 3.0]]]))


class LargestTensor(TorchDispatchMode):
    """Records the most elements any op's output had."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


def test_memory_grows_with_nodes_not_with_prefix_times_nodes():
    """The largest intermediate is one chunk's scores, [R 2, H 8, N 17, 512 tokens] = 139264
    elements, for a 1000- and a 4000-token prefix alike (the reference's grow with the prefix:
    its [R, N, P + N] mask and scores)."""
    largest = {}
    for prefix in (1000, 4000):
        case = make_case(0, 8, 2, 64, 17, [prefix, prefix // 2], 16, torch.float32)
        with LargestTensor() as mode:
            cascade(case)
        largest[prefix] = mode.numel
    assert largest == {1000: 2 * 8 * 17 * 512, 4000: 2 * 8 * 17 * 512}
