"""Tree attention: each tree node attends to its request's whole prefix, then to the tree
nodes its mask allows (its ancestors and itself).

Shape key: B requests, N query nodes per request, M tree keys per request, P prefix tokens
(padded to the longest prefix of the batch), H query heads, Hkv kv heads (H % Hkv == 0,
grouped-query attention), Dh head size.

This torch implementation is the reference every faster kernel is tested against (the CPU
path, kernels/cpu_backend.py, reads the prefix straight from the paged cache instead).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

# The attribute of vLLM's attention metadata that carries a TreeAttentionBatch (set by echo's
# runner on the target layers' metadata only).
METADATA_ATTRIBUTE = "echo_tree"


@dataclass(frozen=True)
class TreeAttentionBatch:
    """The non-chain trees of one step, as every target attention layer needs them.

    Shape key: R trees, N nodes (padded). Tensors live on the model's device.
    """

    token_rows: torch.Tensor  # [R, N] int64: row of each node among the step's tokens
    is_node: torch.Tensor  # [R, N] bool: False in padding (rows repeat a real node's)
    mask: torch.Tensor  # [R, N, N] bool: node i sees node j (ancestors and itself)
    block_table: torch.Tensor  # [R, nblk] int32: each tree's KV-cache blocks
    prefix_lens: torch.Tensor  # [R] int64: tokens in the cache before each root
    block_size: int
    max_prefix_len: int  # >= every prefix length (host int: kernels read it without a device sync)
    node_rows: torch.Tensor  # [T'] int64: token rows of the real nodes (padding left out)
    node_index: torch.Tensor  # [T'] int64: where each of them sits in the flattened [R * N] rows
    # what a backend derives from the above once a step for every layer to reuse, by its own keys
    derived: dict = field(default_factory=dict, compare=False, repr=False)


def tree_attention_batch(
    token_rows: torch.Tensor, is_node: torch.Tensor, mask: torch.Tensor, block_table: torch.Tensor,
    prefix_lens: torch.Tensor, block_size: int, device: torch.device | str,
) -> TreeAttentionBatch:
    """A TreeAttentionBatch from host tensors, moved to `device`. What every layer would
    otherwise derive with a device sync (boolean indexing, a max) is derived here, once a step.

    Worked example: token_rows [[1, 2, 3], [4, 5, 5]], is_node [[T, T, T], [T, T, F]] ->
    node_rows [1, 2, 3, 4, 5], node_index [0, 1, 2, 3, 4].
    """
    node_index = is_node.flatten().nonzero().flatten()
    return TreeAttentionBatch(
        token_rows=token_rows.to(device), is_node=is_node.to(device), mask=mask.to(device),
        block_table=block_table.to(device), prefix_lens=prefix_lens.to(device), block_size=block_size,
        max_prefix_len=int(prefix_lens.max()) if prefix_lens.numel() else 0,
        node_rows=token_rows.flatten()[node_index].to(device), node_index=node_index.to(device),
    )


def tree_attention(
    query: torch.Tensor,
    tree_key: torch.Tensor,
    tree_value: torch.Tensor,
    tree_mask: torch.Tensor,
    prefix_key: torch.Tensor,
    prefix_value: torch.Tensor,
    prefix_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Masked attention over [prefix | tree] keys, for a batch of requests.

    query [B, N, H, Dh]; tree_key, tree_value [B, M, Hkv, Dh] (RoPE already applied);
    tree_mask [B, N, M] bool (query node i may see tree key j); prefix_key, prefix_value
    [B, P, Hkv, Dh], of which the first prefix_lens [B] rows of each request are real.
    Every query must see at least one key. Returns [B, N, H, Dh].
    """
    num_queries, prefix_pad = query.shape[1], prefix_key.shape[1]
    prefix_visible = torch.arange(prefix_pad, device=query.device) < prefix_lens.view(-1, 1)
    visible = torch.cat(
        [prefix_visible.unsqueeze(1).expand(-1, num_queries, -1), tree_mask], dim=2
    )  # [B, N, P+M]
    keys = torch.cat([prefix_key, tree_key], dim=1).transpose(1, 2)  # [B, Hkv, P+M, Dh]
    values = torch.cat([prefix_value, tree_value], dim=1).transpose(1, 2)
    out = F.scaled_dot_product_attention(
        query.transpose(1, 2), keys.to(query.dtype), values.to(query.dtype),
        attn_mask=visible.unsqueeze(1), scale=scale, enable_gqa=True,
    )  # [B, H, N, Dh]
    return out.transpose(1, 2)
