"""Tree attention as one Triton kernel, reading the prefix straight from a paged KV cache.

The GPU fallback (ECHO_VLLM_TREE_KERNEL=triton): the default is cascade attention
(kernels/cascade_tree_attention.py, FlashAttention for the prefix). This kernel reads every
prefix K/V once per (node, head) without tl.dot, so it is not expected to beat the cascade; it
stays until a GPU measurement (scripts/gpu_check.py) says whether it ever does.

The GPU counterpart of echo_vllm.kernels.tree_attention (the torch reference it is tested
against, tests/kernels/test_triton_tree_attention.py). One program per (request, tree node,
query head): an online softmax first over the request's prefix, block by block through its
block table, then over the tree's own keys under the node's ancestor mask.

Cache layout: vLLM 0.32's FlashAttention keeps one tensor per layer, logically
[num_blocks, Hkv, block_size, 2 * Dh] (K in the first Dh values of the last dimension, V in
the rest; its strides follow the KV cache layout, the last dimension is always contiguous).
The kernel takes it as FlashAttention's forward splits it, key_cache, value_cache =
kv_cache.transpose(1, 2).split(Dh, dim=-1): two strided [num_blocks, block_size, Hkv, Dh]
views, indexed through key_cache's block, slot and head strides (value_cache shares them, as
the two halves of one tensor do; unit stride within a head).
Shape key as in tree_attention.py: B requests, N nodes (padded), H / Hkv heads, Dh head size.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _attend(q, key_ptrs, value_ptrs, visible, load_mask, acc, running_sum, running_max):
    """Fold one tile of keys into the online softmax; returns (acc, running_sum, running_max).
    q [HEAD_DIM]; key_ptrs, value_ptrs [tile, HEAD_DIM]; visible [tile]."""
    k = tl.load(key_ptrs, mask=load_mask, other=0.0).to(tl.float32)
    v = tl.load(value_ptrs, mask=load_mask, other=0.0).to(tl.float32)
    scores = tl.where(visible, tl.sum(k * q[None, :], axis=1), -1.0e30)
    new_max = tl.maximum(running_max, tl.max(scores, axis=0))
    probs = tl.where(visible, tl.exp(scores - new_max), 0.0)
    correction = tl.exp(running_max - new_max)
    acc = acc * correction + tl.sum(probs[:, None] * v, axis=0)
    running_sum = running_sum * correction + tl.sum(probs, axis=0)
    return acc, running_sum, new_max


@triton.jit
def _tree_attention_kernel(
    query_ptr, tree_key_ptr, tree_value_ptr, tree_mask_ptr,
    key_cache_ptr, value_cache_ptr, block_table_ptr, prefix_lens_ptr, out_ptr,
    scale,
    stride_qb, stride_qn, stride_qh,
    stride_tb, stride_tn, stride_th,
    stride_mb, stride_mn,
    stride_cb, stride_cs, stride_ch,
    stride_btb,
    stride_ob, stride_on, stride_oh,
    head_dim,
    NUM_NODES: tl.constexpr,  # N padded to a power of two
    GROUP: tl.constexpr,  # query heads per kv head
    CACHE_BLOCK: tl.constexpr,  # tokens per KV-cache block
    HEAD_DIM: tl.constexpr,  # head_dim padded to a power of two
    BLOCK_TOKENS: tl.constexpr,  # prefix tokens per iteration
):
    req = tl.program_id(0)
    node = tl.program_id(1)
    head = tl.program_id(2)
    kv_head = head // GROUP
    dims = tl.arange(0, HEAD_DIM)
    dim_ok = dims < head_dim

    q = tl.load(query_ptr + req * stride_qb + node * stride_qn + head * stride_qh + dims,
                mask=dim_ok, other=0.0).to(tl.float32) * scale
    running_max = tl.full((), -1.0e30, tl.float32)
    running_sum = tl.zeros((), tl.float32)
    acc = tl.zeros((HEAD_DIM,), tl.float32)

    prefix_len = tl.load(prefix_lens_ptr + req)
    for start in range(0, prefix_len, BLOCK_TOKENS):
        pos = start + tl.arange(0, BLOCK_TOKENS)
        valid = pos < prefix_len
        block = tl.load(block_table_ptr + req * stride_btb + pos // CACHE_BLOCK, mask=valid, other=0)
        row = block.to(tl.int64) * stride_cb + (pos % CACHE_BLOCK) * stride_cs + kv_head * stride_ch
        offsets = row[:, None] + dims[None, :]
        acc, running_sum, running_max = _attend(
            q, key_cache_ptr + offsets, value_cache_ptr + offsets, valid,
            valid[:, None] & dim_ok[None, :], acc, running_sum, running_max,
        )

    nodes = tl.arange(0, NUM_NODES)
    visible = tl.load(tree_mask_ptr + req * stride_mb + node * stride_mn + nodes) != 0
    offsets = (req * stride_tb + nodes * stride_tn + kv_head * stride_th)[:, None] + dims[None, :]
    acc, running_sum, running_max = _attend(
        q, tree_key_ptr + offsets, tree_value_ptr + offsets, visible,
        visible[:, None] & dim_ok[None, :], acc, running_sum, running_max,
    )

    out = acc / running_sum
    tl.store(out_ptr + req * stride_ob + node * stride_on + head * stride_oh + dims,
             out.to(out_ptr.dtype.element_ty), mask=dim_ok)


def tree_attention_paged(
    query: torch.Tensor,
    tree_key: torch.Tensor,
    tree_value: torch.Tensor,
    tree_mask: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_table: torch.Tensor,
    prefix_lens: torch.Tensor,
    scale: float,
    block_tokens: int = 32,
) -> torch.Tensor:
    """query [B, N, H, Dh]; tree_key, tree_value [B, N, Hkv, Dh]; tree_mask [B, N, N] bool
    (every node sees itself); key_cache, value_cache [num_blocks, block_size, Hkv, Dh];
    block_table [B, nblk]; prefix_lens [B]. Returns [B, N, H, Dh] in query's dtype."""
    batch, num_nodes, heads, head_dim = query.shape
    kv_heads = tree_key.shape[2]
    padded_nodes = triton.next_power_of_2(num_nodes)
    if padded_nodes != num_nodes:  # padded keys are masked out; padded queries are dropped
        pad = padded_nodes - num_nodes
        tree_key = torch.nn.functional.pad(tree_key, (0, 0, 0, 0, 0, pad))
        tree_value = torch.nn.functional.pad(tree_value, (0, 0, 0, 0, 0, pad))
        tree_mask = torch.nn.functional.pad(tree_mask, (0, pad))
    query, tree_key, tree_value = (t.contiguous() for t in (query, tree_key, tree_value))
    tree_mask = tree_mask.to(torch.int8).contiguous()
    out = torch.empty_like(query)
    _tree_attention_kernel[(batch, num_nodes, heads)](
        query, tree_key, tree_value, tree_mask,
        key_cache, value_cache, block_table, prefix_lens, out,
        scale,
        query.stride(0), query.stride(1), query.stride(2),
        tree_key.stride(0), tree_key.stride(1), tree_key.stride(2),
        tree_mask.stride(0), tree_mask.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        block_table.stride(0),
        out.stride(0), out.stride(1), out.stride(2),
        head_dim,
        NUM_NODES=padded_nodes,
        GROUP=heads // kv_heads,
        CACHE_BLOCK=key_cache.shape[1],
        HEAD_DIM=triton.next_power_of_2(head_dim),
        BLOCK_TOKENS=block_tokens,
    )
    return out
