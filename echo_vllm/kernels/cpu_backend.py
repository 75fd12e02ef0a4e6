"""vLLM's CPU attention backend with tree rows.

vLLM's CPU kernel (`cpu_attention_with_kv_cache`) knows only causal masks. This subclass runs
it for the whole batch, then recomputes the rows of draft trees that are not chains with
torch tree attention read straight from the paged cache (a chain's causal answer is already
right). The trees ride on the attention metadata object
(kernels.tree_attention.METADATA_ATTRIBUTE), set by echo's runner for target layers only.
Registered over vLLM's CPU_ATTN entry (keeping that name) by echo's CPU worker.
"""

from __future__ import annotations

import torch
from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend, CPUAttentionBackendImpl

from echo_vllm.kernels.paged_kv import packed_blocks
from echo_vllm.kernels.tree_attention import METADATA_ATTRIBUTE, TreeAttentionBatch


class EchoCPUAttentionBackendImpl(CPUAttentionBackendImpl):
    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs):
        output = super().forward(layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs)
        trees: TreeAttentionBatch | None = getattr(attn_metadata, METADATA_ATTRIBUTE, None)
        if trees is not None:
            self._rewrite_tree_rows(query, key, value, kv_cache, trees, output)
        return output

    def _rewrite_tree_rows(self, query, key, value, kv_cache, trees: TreeAttentionBatch, output):
        q = query.view(query.shape[0], self.num_heads, self.head_size)[trees.token_rows]
        k = key.view(key.shape[0], self.num_kv_heads, self.head_size)[trees.token_rows]
        v = value.view(value.shape[0], self.num_kv_heads, self.head_size)[trees.token_rows]
        out = packed_tree_attention(q, k, v, kv_cache, trees, self.scale)  # [R, N, H, Dh]
        output.view(output.shape[0], -1)[trees.node_rows] = (
            out.reshape(-1, self.num_heads * self.head_size)[trees.node_index].to(output.dtype))


def packed_tree_attention(query: torch.Tensor, tree_key: torch.Tensor, tree_value: torch.Tensor,
                          kv_cache: torch.Tensor, trees: TreeAttentionBatch, scale: float) -> torch.Tensor:
    """kernels.tree_attention.tree_attention with the prefix read from one layer's CPU_PACKED
    cache (kernels/paged_kv.py) a whole block at a time: one copy of each tree's prefix
    blocks, in which K is already transposed per block ([Dh, bs], what the scores' product
    reads), and one softmax over [prefix blocks | tree keys] under the step's mask bias
    (prefix_mask_bias). query [R, N, H, Dh]; tree_key, tree_value [R, N, Hkv, Dh]. Returns
    [R, N, H, Dh] float32.

    Memory: scores [R, H, N, padded prefix]: at 64 trees of 9 nodes over 4k-token prefixes,
    9 heads, ~85 MB, which a CPU host has.
    """
    num_requests, nodes, heads, head_dim = query.shape
    kv_heads, block_size = kv_cache.shape[1], kv_cache.shape[2]
    group = heads // kv_heads
    blocks, bias = prefix_mask_bias(trees, kv_heads, group, block_size)
    prefix_tokens = bias.shape[-1] - nodes
    key_blocks, value_blocks = packed_blocks(kv_cache.index_select(0, blocks))
    batch = num_requests * kv_heads
    prefix_k = key_blocks.view(num_requests, -1, kv_heads, head_dim, block_size).permute(0, 2, 3, 1, 4).reshape(
        batch, head_dim, prefix_tokens).float()
    prefix_v = value_blocks.view(num_requests, -1, kv_heads, block_size, head_dim).transpose(1, 2).reshape(
        batch, prefix_tokens, head_dim).float()
    # each kv head's query rows, group-major: [R * Hkv, G * N, Dh]
    q = query.view(num_requests, nodes, kv_heads, group, head_dim).permute(0, 2, 3, 1, 4).reshape(
        batch, group * nodes, head_dim).float()
    tree_k = tree_key.permute(0, 2, 3, 1).reshape(batch, head_dim, nodes).float()
    tree_v = tree_value.transpose(1, 2).reshape(batch, nodes, head_dim).float()
    probs = torch.cat([
        torch.baddbmm(bias[..., :prefix_tokens], q, prefix_k, alpha=scale),
        torch.baddbmm(bias[..., prefix_tokens:], q, tree_k, alpha=scale),
    ], dim=-1).softmax(dim=-1)
    out = torch.bmm(probs[..., :prefix_tokens], prefix_v).baddbmm_(probs[..., prefix_tokens:], tree_v)
    return out.view(num_requests, kv_heads, group, nodes, head_dim).permute(0, 3, 1, 2, 4).reshape(
        num_requests, nodes, heads, head_dim)


def prefix_mask_bias(trees: TreeAttentionBatch, kv_heads: int, group: int,
                     block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What packed_tree_attention needs of the step's trees, derived once a step for every
    layer: the cache blocks holding each tree's prefix, flattened request-major [R * nblk],
    and the additive mask [R * Hkv, G * N, nblk * bs + N]: 0 where a query row sees the key
    (prefix positions before the tree's root; its ancestors and itself), -inf elsewhere."""
    derived_key = ("cpu_packed", kv_heads, group, block_size)
    if derived_key not in trees.derived:
        num_blocks = min(-(-trees.max_prefix_len // block_size), trees.block_table.shape[1])
        nodes = trees.mask.shape[1]
        positions = torch.arange(num_blocks * block_size, device=trees.mask.device)
        visible = torch.cat([
            (positions < trees.prefix_lens.view(-1, 1)).unsqueeze(1).expand(-1, nodes, -1), trees.mask,
        ], dim=2)  # [R, N, P + N]
        bias = torch.zeros(visible.shape, device=visible.device).masked_fill_(~visible, -torch.inf)
        bias = bias.repeat(1, group, 1).repeat_interleave(kv_heads, dim=0)  # rows group-major, per kv head
        trees.derived[derived_key] = (trees.block_table[:, :num_blocks].long().flatten(), bias)
    return trees.derived[derived_key]


class EchoCPUAttentionBackend(CPUAttentionBackend):
    @staticmethod
    def get_impl_cls() -> type[CPUAttentionBackendImpl]:
        return EchoCPUAttentionBackendImpl
