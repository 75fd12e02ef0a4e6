"""The drafter's two prefix readers agree: CPU's gathered copy + tree_attention, and GPU's
paged cascade (here with the torch prefix attention standing in for FlashAttention), over
the same draft KV in FlashAttention's cache layout; `select` keeps the rows asked for."""

import torch

from echo_vllm.core.tree import ancestor_mask
from echo_vllm.kernels.draft_prefix import GatheredPrefix, PagedPrefix
from echo_vllm.kernels.paged_kv import HEAD_MAJOR, prefix_slots, slots_of

HEADS, KV_HEADS, DH, BLOCK, NUM_BLOCKS = 4, 2, 64, 16, 8
PREFIX_LENS = torch.tensor([37, 0, 16])
BLOCK_TABLE = torch.tensor([[5, 2, 7], [0, 0, 0], [3, 0, 0]], dtype=torch.int32)


def draft_cache(g):
    cache = torch.randn(NUM_BLOCKS, KV_HEADS, BLOCK, 2 * DH, generator=g)  # noise everywhere else
    for row, length in enumerate(PREFIX_LENS.tolist()):
        slots = slots_of(BLOCK_TABLE[row : row + 1], torch.arange(length).unsqueeze(0), BLOCK)[0]
        HEAD_MAJOR.scatter(cache, slots, torch.randn(length, KV_HEADS, DH, generator=g),
                           torch.randn(length, KV_HEADS, DH, generator=g))
    return cache


def both_prefixes(cache):
    slots = prefix_slots(BLOCK_TABLE, PREFIX_LENS.clamp(min=1), BLOCK)
    k, v = HEAD_MAJOR.gather(cache, slots.flatten())
    gathered = GatheredPrefix(k.view(*slots.shape, KV_HEADS, DH), v.view(*slots.shape, KV_HEADS, DH), PREFIX_LENS)
    key_cache, value_cache = cache.transpose(1, 2).split(DH, dim=-1)
    paged = PagedPrefix(key_cache, value_cache, BLOCK_TABLE, PREFIX_LENS, 64)  # 64: a bound, not the max
    return gathered, paged


def test_gathered_and_paged_prefix_attend_alike_also_after_select():
    g = torch.Generator().manual_seed(0)
    gathered, paged = both_prefixes(draft_cache(g))
    # a depth-2 drafting step: 2 frontier nodes per request, 2 earlier tree keys (their parents)
    query = torch.randn(3, 2, HEADS, DH, generator=g)
    tree_k, tree_v = (torch.randn(3, 4, KV_HEADS, DH, generator=g) for _ in range(2))
    mask = torch.cat([ancestor_mask(torch.tensor([[-1, -1]])).expand(3, 2, 2),
                      torch.eye(2, dtype=torch.bool).expand(3, 2, 2)], dim=2)  # [3, 2, 4]: own parent + self
    torch.testing.assert_close(paged.attend(query, tree_k, tree_v, mask, 0.125),
                               gathered.attend(query, tree_k, tree_v, mask, 0.125), atol=1e-5, rtol=1e-5)
    keep = torch.tensor([2, 0])
    torch.testing.assert_close(paged.select(keep).attend(query[keep], tree_k[keep], tree_v[keep], mask[keep], 0.125),
                               gathered.select(keep).attend(query[keep], tree_k[keep], tree_v[keep], mask[keep], 0.125),
                               atol=1e-5, rtol=1e-5)
    assert paged.select(keep).lens.tolist() == [16, 37]


def test_drafter_reads_its_gpu_prefix_in_place(monkeypatch):
    """EchoProposer._draft_prefix with FlashAttention's layout (the GPU branch) returns a
    PagedPrefix over views of the draft layer's own cache, with FlashAttention's prefix call
    (the torch one standing in) and vLLM's merge; it attends like the copied prefix."""
    from types import SimpleNamespace

    from echo_vllm.kernels import gpu_backend
    from echo_vllm.kernels.cascade_tree_attention import paged_prefix_attention
    from echo_vllm.proposers.eagle_tree import EchoProposer

    monkeypatch.setattr(gpu_backend, "flash_prefix_attention", lambda fa_version: paged_prefix_attention)
    g = torch.Generator().manual_seed(1)
    cache = draft_cache(g)
    layer = SimpleNamespace(kv_cache=cache, impl=SimpleNamespace(head_size=DH, vllm_flash_attn_version=3))
    drafter = SimpleNamespace(kv_layout=HEAD_MAJOR, block_size=BLOCK, _draft_attn_layer=lambda: layer)
    paged = EchoProposer._draft_prefix(drafter, BLOCK_TABLE, PREFIX_LENS, 48)
    assert isinstance(paged, PagedPrefix) and paged.key_cache.data_ptr() == cache.data_ptr()
    gathered, _ = both_prefixes(cache)
    query = torch.randn(3, 2, HEADS, DH, generator=g)
    tree_k, tree_v = (torch.randn(3, 2, KV_HEADS, DH, generator=g) for _ in range(2))
    mask = torch.eye(2, dtype=torch.bool).expand(3, 2, 2)
    torch.testing.assert_close(paged.attend(query, tree_k, tree_v, mask, 0.125),
                               gathered.attend(query, tree_k, tree_v, mask, 0.125), atol=1e-5, rtol=1e-5)
