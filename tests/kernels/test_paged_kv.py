"""Our reading of vLLM's CPU KV layout agrees with vLLM's own C++ writer and attention kernel."""

import pytest
import torch
from vllm import _custom_ops as ops

from echo_vllm.kernels.paged_kv import (
    CPU_PACKED,
    HEAD_MAJOR,
    gather_kv,
    move_kv,
    prefix_slots,
    scatter_kv,
    slots_of,
)

NUM_BLOCKS, KV_HEADS, BLOCK, DH = 5, 2, 32, 64


def vllm_views(cache):
    """How vLLM's CPU backend splits one layer's cache for its C++ ops."""
    kv = cache.view(NUM_BLOCKS, KV_HEADS, BLOCK * 2, DH)
    return kv.chunk(2, dim=2)


@pytest.mark.parametrize("isa", ["vec", "vec16"])
def test_gather_reads_what_the_cpp_writer_wrote(isa):
    cache = torch.zeros(NUM_BLOCKS, KV_HEADS, BLOCK, 2 * DH)
    slots = torch.tensor([0, 1, 31, 32, 70, 159])
    k, v = torch.randn(6, KV_HEADS, DH), torch.randn(6, KV_HEADS, DH)
    key_cache, value_cache = vllm_views(cache)
    ops.cpu_attn_reshape_and_cache(k, v, key_cache, value_cache, slots, isa)
    gk, gv = gather_kv(cache, slots)
    assert torch.equal(gk, k) and torch.equal(gv, v)


def test_scatter_writes_what_the_cpp_writer_would():
    ours, theirs = (torch.zeros(NUM_BLOCKS, KV_HEADS, BLOCK, 2 * DH) for _ in range(2))
    slots = torch.tensor([3, 40, 41, 100])
    k, v = torch.randn(4, KV_HEADS, DH), torch.randn(4, KV_HEADS, DH)
    scatter_kv(ours, slots, k, v)
    ops.cpu_attn_reshape_and_cache(k, v, *vllm_views(theirs), slots, "vec")
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("layout", [CPU_PACKED, HEAD_MAJOR], ids=lambda l: l.name)
def test_move_reads_all_sources_before_writing(layout):
    cache = torch.zeros(NUM_BLOCKS, KV_HEADS, BLOCK, 2 * DH)
    slots = torch.arange(30, 38)  # across a block boundary
    k, v = torch.randn(8, KV_HEADS, DH), torch.randn(8, KV_HEADS, DH)
    layout.scatter(cache, slots, k, v)
    # accepted tree nodes 2, 5, 7 move to the chain slots 1, 2, 3 (2 is a source and a target)
    move_kv(layout, [cache], slots[[2, 5, 7]], slots[[1, 2, 3]])
    gk, gv = layout.gather(cache, slots[:4])
    assert torch.equal(gk, k[[0, 2, 5, 7]]) and torch.equal(gv, v[[0, 2, 5, 7]])


def test_head_major_matches_how_flash_attention_splits_its_cache():
    cache = torch.zeros(NUM_BLOCKS, KV_HEADS, BLOCK, 2 * DH)
    k, v = torch.randn(3, KV_HEADS, DH), torch.randn(3, KV_HEADS, DH)
    slots = torch.tensor([5, 33, 100])
    HEAD_MAJOR.scatter(cache, slots, k, v)
    key_cache, value_cache = cache.transpose(1, 2).split(DH, dim=-1)  # vLLM's FlashAttention view
    assert torch.equal(key_cache[slots // BLOCK, slots % BLOCK], k)
    assert torch.equal(value_cache[slots // BLOCK, slots % BLOCK], v)


def test_slots_of_worked_example():
    assert slots_of(torch.tensor([[7, 2]]), torch.tensor([[0, 31, 32]]), 32).tolist() == [[224, 255, 64]]


def test_prefix_slots_pad_with_the_last_real_slot():
    table = torch.tensor([[7, 2], [3, 0]])
    assert prefix_slots(table, torch.tensor([3, 1]), 32).tolist() == [[224, 225, 226], [96, 96, 96]]
