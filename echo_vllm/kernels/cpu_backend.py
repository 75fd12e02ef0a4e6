"""vLLM's CPU attention backend with tree rows.

vLLM's CPU kernel (`cpu_attention_with_kv_cache`) knows only causal masks. When a step has
draft trees that are not chains, this subclass answers their rows with torch tree attention
read straight from the paged cache, and runs vLLM's kernel only if the step also has other
rows (plain decode tokens, chains, prefills), whose causal answers are right. The trees ride on
the attention metadata object (kernels.tree_attention.METADATA_ATTRIBUTE), set by echo's
runner for target layers only. Registered over vLLM's CPU_ATTN entry (keeping that name) by
echo's CPU worker.
"""

from __future__ import annotations

import torch
from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend, CPUAttentionBackendImpl

from echo_vllm.kernels.paged_kv import packed_blocks
from echo_vllm.kernels.tree_attention import METADATA_ATTRIBUTE, TreeAttentionBatch


class EchoCPUAttentionBackendImpl(CPUAttentionBackendImpl):
    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs):
        trees: TreeAttentionBatch | None = getattr(attn_metadata, METADATA_ATTRIBUTE, None)
        # vLLM's kernel would compute every tree row only to have it overwritten: a step of
        # trees alone skips it (one 6-node tree over 300 tokens: 0.04 ms beside the tree
        # rows' 0.18 ms a layer, benchmarks/cpu_tree_attention.py)
        if trees is None or trees.node_rows.numel() < attn_metadata.num_actual_tokens:
            output = super().forward(layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs)
        if trees is not None:
            q = query.view(query.shape[0], self.num_heads, self.head_size)[trees.token_rows]
            out = packed_tree_attention(q, kv_cache, trees, self.scale)  # [R, N, H, Dh]
            output.view(output.shape[0], -1)[trees.node_rows] = (
                out.reshape(-1, self.num_heads * self.head_size)[trees.node_index].to(output.dtype))
        return output


def packed_tree_attention(query: torch.Tensor, kv_cache: torch.Tensor, trees: TreeAttentionBatch,
                          scale: float) -> torch.Tensor:
    """kernels.tree_attention.tree_attention with every key read from one layer's CPU_PACKED
    cache (kernels/paged_kv.py), the tree's own included: vLLM writes the step's K/V into the
    cache before attention runs (`do_kv_cache_update`), node j of a tree at position
    prefix_len + j. One copy of each tree's blocks, in which K is already transposed per block
    ([Dh, bs], what the scores' product reads), and one softmax under the step's mask bias
    (cache_mask_bias). query [R, N, H, Dh]. Returns [R, N, H, Dh] float32.

    Memory: scores [R * Hkv, G * N, blocks * bs]: at 64 trees of 9 nodes over 4k-token
    prefixes, 9 heads, ~85 MB, which a CPU host has.
    """
    num_requests, nodes, heads, head_dim = query.shape
    kv_heads, block_size = kv_cache.shape[1], kv_cache.shape[2]
    group = heads // kv_heads
    blocks, bias = cache_mask_bias(trees, kv_heads, group, block_size)
    positions = bias.shape[-1]
    key_blocks, value_blocks = packed_blocks(kv_cache.index_select(0, blocks))
    batch = num_requests * kv_heads
    keys = key_blocks.view(num_requests, -1, kv_heads, head_dim, block_size).permute(0, 2, 3, 1, 4).reshape(
        batch, head_dim, positions).float()
    values = value_blocks.view(num_requests, -1, kv_heads, block_size, head_dim).transpose(1, 2).reshape(
        batch, positions, head_dim).float()
    # each kv head's query rows, group-major: [R * Hkv, G * N, Dh]
    q = query.view(num_requests, nodes, kv_heads, group, head_dim).permute(0, 2, 3, 1, 4).reshape(
        batch, group * nodes, head_dim).float()
    probs = torch.baddbmm(bias, q, keys, alpha=scale).softmax(dim=-1)
    return torch.bmm(probs, values).view(num_requests, kv_heads, group, nodes, head_dim).permute(
        0, 3, 1, 2, 4).reshape(num_requests, nodes, heads, head_dim)


def cache_mask_bias(trees: TreeAttentionBatch, kv_heads: int, group: int,
                    block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What packed_tree_attention needs of the step's trees, derived once a step for every
    layer: the cache blocks holding each tree, flattened request-major [R * nblk], and the
    additive mask [R * Hkv, G * N, nblk * bs]: 0 where a query row sees the position (the
    prefix before the tree's root; the tree's nodes its mask allows: its ancestors and
    itself), -inf elsewhere. Padding rows also see their root, so that no row is empty.

    Worked example: one tree, parents [-1, 0, 0], prefix 2, block size 8: node 2 sees positions
    0, 1 (prefix), 2 (root) and 4 (itself), not 3 (its sibling).
    """
    derived_key = ("cpu_packed", kv_heads, group, block_size)
    if derived_key not in trees.derived:
        nodes = trees.mask.shape[1]
        num_blocks = min(-(-(trees.max_prefix_len + nodes) // block_size), trees.block_table.shape[1])
        node = torch.arange(num_blocks * block_size, device=trees.mask.device) - trees.prefix_lens.view(-1, 1)
        in_tree = (node >= 0) & (node < nodes)  # [R, L]: the position holds a tree node
        sees_node = trees.mask | ((~trees.is_node).unsqueeze(-1) & (torch.arange(nodes, device=node.device) == 0))
        sees_node = sees_node.gather(2, node.clamp(0, nodes - 1).unsqueeze(1).expand(-1, nodes, -1))  # [R, N, L]
        visible = (node < 0).unsqueeze(1) | (in_tree.unsqueeze(1) & sees_node)
        bias = torch.zeros(visible.shape, device=visible.device).masked_fill_(~visible, -torch.inf)
        bias = bias.repeat(1, group, 1).repeat_interleave(kv_heads, dim=0)  # rows group-major, per kv head
        trees.derived[derived_key] = (trees.block_table[:, :num_blocks].long().flatten(), bias)
    return trees.derived[derived_key]


class EchoCPUAttentionBackend(CPUAttentionBackend):
    @staticmethod
    def get_impl_cls() -> type[CPUAttentionBackendImpl]:
        return EchoCPUAttentionBackendImpl
