"""Echo's attention backends: after vLLM's causal kernel, the rows of non-chain trees are
rewritten with tree attention, and every other row keeps what the base kernel wrote.

CPU: vLLM's real C++ kernel runs on a small paged cache, then echo's rewrite. GPU
(FlashAttention, cascade tree attention) cannot run here: its tests replace FlashAttention's
forward with a stand-in and its prefix-attention call with the torch prefix attention (vLLM's
merge_attn_states runs its torch path), which checks the cascade wiring and the row glue.
"""

import itertools
import math
from types import SimpleNamespace

import pytest
import torch
from vllm import _custom_ops as ops
from vllm.v1.attention.backends import cpu_attn
from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackendImpl, CPUAttentionMetadata
from vllm.v1.attention.backends.flash_attn import FlashAttentionImpl

from echo_vllm.core.tree import ancestor_mask
from echo_vllm.kernels import gpu_backend
from echo_vllm.kernels.cpu_backend import EchoCPUAttentionBackendImpl, cache_mask_bias
from echo_vllm.kernels.cascade_tree_attention import paged_prefix_attention
from echo_vllm.kernels.gpu_backend import EchoFlashAttentionImpl
from echo_vllm.kernels.paged_kv import CPU_PACKED, HEAD_MAJOR, prefix_slots, slots_of
from echo_vllm.kernels.tree_attention import METADATA_ATTRIBUTE, tree_attention, tree_attention_batch

HEADS, KV_HEADS, DH, BLOCK, NUM_BLOCKS = 4, 2, 32, 32, 4
SCALE = 1 / math.sqrt(DH)

# One step of three requests, 8 token rows:
#   row 0     a plain decode token after 5 cached tokens (no tree)
#   rows 1-4  tree B, parents [-1, 0, 0, 1], after 30 cached tokens (its nodes cross a block)
#   rows 5-7  tree C, a star [-1, 0, 0], with an empty prefix; padded to 4 nodes, the padding
#             repeating row 7 (a wrongly written padding row would overwrite node 2's answer)
PREFIX_LENS = [5, 30, 0]
QUERY_LENS = [1, 4, 3]
BLOCK_TABLE = torch.tensor([[0, 0], [3, 1], [2, 0]], dtype=torch.int32)
TREE_PARENTS = torch.tensor([[-1, 0, 0, 1], [-1, 0, 0, -1]])
TREES = tree_attention_batch(
    token_rows=torch.tensor([[1, 2, 3, 4], [5, 6, 7, 7]]),
    is_node=torch.tensor([[True] * 4, [True, True, True, False]]),
    mask=ancestor_mask(TREE_PARENTS),
    block_table=BLOCK_TABLE[1:],
    prefix_lens=torch.tensor(PREFIX_LENS[1:]),
    block_size=BLOCK,
    device="cpu",
)
TREE_ROWS = [1, 2, 3, 4, 5, 6, 7]


def make_step(seed=0):
    """K/V of every position of every request, and the step's q, k, v [T, heads, DH]."""
    g = torch.Generator().manual_seed(seed)
    seq_kv = [
        (torch.randn(p + q, KV_HEADS, DH, generator=g), torch.randn(p + q, KV_HEADS, DH, generator=g))
        for p, q in zip(PREFIX_LENS, QUERY_LENS)
    ]
    query = torch.randn(sum(QUERY_LENS), HEADS, DH, generator=g)
    key = torch.cat([k[p:] for (k, _), p in zip(seq_kv, PREFIX_LENS)])
    value = torch.cat([v[p:] for (_, v), p in zip(seq_kv, PREFIX_LENS)])
    return seq_kv, query, key, value


def paged_cache(layout, seq_kv):
    """A cache holding every position's K/V, the step's included (vLLM writes the step's K/V
    before attention runs)."""
    cache = torch.zeros(NUM_BLOCKS, KV_HEADS, BLOCK, 2 * DH)
    for request, (k, v) in enumerate(seq_kv):
        positions = torch.arange(k.shape[0]).unsqueeze(0)
        layout.scatter(cache, slots_of(BLOCK_TABLE[request : request + 1], positions, BLOCK)[0], k, v)
    return cache


def expected_tree_rows(seq_kv, query):
    """tree_attention on the K/V as generated (not read back from the cache), [7, H, DH]."""
    tree_k, tree_v, prefix_k, prefix_v = [], [], [], []
    for request, rows in ((1, [0, 1, 2, 3]), (2, [0, 1, 2, 2])):
        k, v = seq_kv[request]
        p = PREFIX_LENS[request]
        tree_k.append(k[p:][rows])
        tree_v.append(v[p:][rows])
        prefix_k.append(torch.cat([k[:p], k.new_zeros(max(PREFIX_LENS) - p, KV_HEADS, DH)]))
        prefix_v.append(torch.cat([v[:p], v.new_zeros(max(PREFIX_LENS) - p, KV_HEADS, DH)]))
    out = tree_attention(
        query[TREES.token_rows], torch.stack(tree_k), torch.stack(tree_v), TREES.mask,
        torch.stack(prefix_k), torch.stack(prefix_v), TREES.prefix_lens, SCALE,
    )
    return out[TREES.is_node]


@pytest.fixture
def cpu_impls(monkeypatch):
    """vLLM's CPU impl and echo's; their constructor reads only the model dtype from the
    current vLLM config."""
    config = SimpleNamespace(model_config=SimpleNamespace(dtype=torch.float32))
    monkeypatch.setattr(cpu_attn, "get_current_vllm_config", lambda: config)
    args = (HEADS, DH, SCALE, KV_HEADS, None, None, "auto")
    return CPUAttentionBackendImpl(*args), EchoCPUAttentionBackendImpl(*args)


def cpu_metadata(trees, requests=(0, 1, 2)):
    """vLLM's metadata for a step of `requests` (indices into PREFIX_LENS, in row order)."""
    query_lens = [QUERY_LENS[r] for r in requests]
    seq_lens = torch.tensor([PREFIX_LENS[r] + QUERY_LENS[r] for r in requests], dtype=torch.int32)
    query_start_loc = torch.tensor([0, *itertools.accumulate(query_lens)], dtype=torch.int32)
    metadata = CPUAttentionMetadata(
        num_actual_tokens=sum(query_lens), max_query_len=max(query_lens), query_start_loc=query_start_loc,
        max_seq_len=int(seq_lens.max()), seq_lens=seq_lens, block_table=BLOCK_TABLE[list(requests)],
        slot_mapping=torch.zeros(sum(query_lens), dtype=torch.int64),  # unused: the cache is already written
        scheduler_metadata=ops.cpu_attn_get_scheduler_metadata(
            num_reqs=len(requests), num_heads=HEADS, num_kv_heads=KV_HEADS, head_dim=DH, seq_lens=seq_lens,
            dtype=torch.float32, query_start_loc=query_start_loc, causal=True,
            sliding_window_size=-1, isa="vec", enable_kv_split=False,
        ),
    )
    if trees is not None:
        setattr(metadata, METADATA_ATTRIBUTE, trees)
    return metadata


LAYER = SimpleNamespace(_k_scale_float=1.0, _v_scale_float=1.0)


def test_cpu_backend_rewrites_tree_rows_with_tree_attention(cpu_impls):
    base, echo = cpu_impls
    seq_kv, query, key, value = make_step()
    cache = paged_cache(CPU_PACKED, seq_kv)
    base_out = base.forward(LAYER, query, key, value, cache, cpu_metadata(None), torch.zeros_like(query))
    echo_out = echo.forward(LAYER, query, key, value, cache, cpu_metadata(TREES), torch.zeros_like(query))
    expected = expected_tree_rows(seq_kv, query)
    torch.testing.assert_close(echo_out[TREE_ROWS], expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(echo_out[0], base_out[0])  # the decode row, as vLLM's kernel wrote it
    # the check has teeth: causally, sibling node 2 (row 3) sees node 1 (row 2)
    assert not torch.allclose(base_out[3], expected[2], atol=1e-3)
    # nodes whose causal predecessors are exactly their ancestors get the causal answer back
    torch.testing.assert_close(echo_out[[1, 2, 5, 6]], base_out[[1, 2, 5, 6]], atol=1e-5, rtol=1e-5)


def test_cpu_backend_step_of_trees_alone(cpu_impls, monkeypatch):
    """A step whose every row is a tree node (trees B and C without the decode row) is answered
    by tree attention alone: every row written, vLLM's kernel not run."""
    _, echo = cpu_impls
    seq_kv, query, key, value = make_step()
    cache = paged_cache(CPU_PACKED, seq_kv)
    trees = tree_attention_batch(
        TREES.token_rows - 1, TREES.is_node, TREES.mask, TREES.block_table, TREES.prefix_lens, BLOCK, "cpu")
    output = torch.full_like(query[1:], torch.nan)
    monkeypatch.setattr(cpu_attn.ops, "cpu_attention_with_kv_cache", None)  # any call would fail
    echo_out = echo.forward(LAYER, query[1:], key[1:], value[1:], cache, cpu_metadata(trees, (1, 2)), output)
    torch.testing.assert_close(echo_out, expected_tree_rows(seq_kv, query), atol=1e-5, rtol=1e-5)


def test_cache_mask_bias_worked_example():
    trees = tree_attention_batch(
        torch.tensor([[0, 1, 2]]), torch.tensor([[True] * 3]), ancestor_mask(torch.tensor([[-1, 0, 0]])),
        torch.tensor([[0]], dtype=torch.int32), torch.tensor([2]), 8, "cpu")
    _, bias = cache_mask_bias(trees, kv_heads=1, group=1, block_size=8)
    assert (bias[0, 2] == 0).tolist() == [True, True, True, False, True, False, False, False]


def test_cpu_backend_without_trees_is_vllms_kernel(cpu_impls):
    base, echo = cpu_impls
    seq_kv, query, key, value = make_step()
    cache = paged_cache(CPU_PACKED, seq_kv)
    base_out = base.forward(LAYER, query, key, value, cache, cpu_metadata(None), torch.zeros_like(query))
    echo_out = echo.forward(LAYER, query, key, value, cache, cpu_metadata(None), torch.zeros_like(query))
    assert torch.equal(echo_out, base_out)


def torch_tree_attention_paged(query, tree_key, tree_value, tree_mask, key_cache, value_cache,
                               block_table, prefix_lens, scale):
    """Stand-in for the Triton kernel (same arguments; caches [num_blocks, bs, Hkv, Dh])."""
    slots = prefix_slots(block_table, prefix_lens.clamp(min=1), key_cache.shape[1])
    blocks, offsets = slots // key_cache.shape[1], slots % key_cache.shape[1]
    return tree_attention(query, tree_key, tree_value, tree_mask, key_cache[blocks, offsets],
                          value_cache[blocks, offsets], prefix_lens, scale)


def run_gpu_impl(monkeypatch):
    """EchoFlashAttentionImpl.forward over one step, FlashAttention's own forward a stand-in
    that leaves what the base kernel "wrote" (7s). Returns (output, base output, K/V, query)."""
    monkeypatch.setattr(FlashAttentionImpl, "forward", lambda self, layer, q, k, v, cache, meta, output: output)
    seq_kv, query, key, value = make_step()
    cache = paged_cache(HEAD_MAJOR, seq_kv)  # FlashAttention's layout
    impl = EchoFlashAttentionImpl(HEADS, DH, SCALE, KV_HEADS, None, None, "auto")
    base_out = torch.full_like(query, 7.0)
    out = impl.forward(LAYER, query, key, value, cache, SimpleNamespace(**{METADATA_ATTRIBUTE: TREES}),
                       base_out.clone())
    return out, base_out, seq_kv, query


def test_gpu_backend_rewrites_only_tree_rows_with_cascade_attention(monkeypatch):
    """The cascade path, the torch prefix attention in FlashAttention's place and vLLM's
    merge_attn_states (its torch path here): tree rows equal the reference, others untouched."""
    versions = []

    def torch_prefix(fa_version):
        versions.append(fa_version)
        return paged_prefix_attention

    monkeypatch.setattr(gpu_backend, "flash_prefix_attention", torch_prefix)
    out, base_out, seq_kv, query = run_gpu_impl(monkeypatch)
    assert versions, "the cascade path did not ask for FlashAttention's prefix attention"
    torch.testing.assert_close(out[TREE_ROWS], expected_tree_rows(seq_kv, query), atol=1e-5, rtol=1e-5)
    assert torch.equal(out[0], base_out[0])


def test_gpu_backend_triton_fallback_glue(monkeypatch):
    """ECHO_VLLM_TREE_KERNEL=triton: the Triton kernel (a torch stand-in) computes the same rows."""
    from echo_vllm.kernels import triton_tree_attention

    monkeypatch.setenv("ECHO_VLLM_TREE_KERNEL", "triton")
    monkeypatch.setattr(triton_tree_attention, "tree_attention_paged", torch_tree_attention_paged)
    out, base_out, seq_kv, query = run_gpu_impl(monkeypatch)
    torch.testing.assert_close(out[TREE_ROWS], expected_tree_rows(seq_kv, query), atol=1e-5, rtol=1e-5)
    assert torch.equal(out[0], base_out[0])


def test_tree_kernel_choice_is_checked(monkeypatch):
    monkeypatch.setenv("ECHO_VLLM_TREE_KERNEL", "fast")
    with pytest.raises(ValueError, match="ECHO_VLLM_TREE_KERNEL must be one of"):
        gpu_backend.tree_kernel_from_env()


def test_tree_batch_precomputes_node_rows():
    """Padding (tree C's fourth entry, row 7 again) is left out once, at batch build."""
    assert TREES.node_rows.tolist() == TREE_ROWS
    assert TREES.node_index.tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert TREES.max_prefix_len == 30
