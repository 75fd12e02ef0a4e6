"""Tree attention: each node attends to the whole prefix plus its own ancestors (and itself).

Shape key: N tree nodes of one request, P prefix tokens (already in the KV cache), H query
heads, Hkv kv heads (H % Hkv == 0, grouped-query attention), Dh head size.

This torch implementation is the reference every faster kernel is tested against, and the
CPU path (vLLM's CPU attention kernel knows only causal masks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def tree_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    prefix_key: torch.Tensor,
    prefix_value: torch.Tensor,
    ancestor_mask: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Attention of one request's tree nodes.

    query [N, H, Dh]; key, value [N, Hkv, Dh] (the nodes' own, RoPE already applied);
    prefix_key, prefix_value [P, Hkv, Dh]; ancestor_mask [N, N] bool (row i: node i's
    ancestors and itself). Returns [N, H, Dh].
    """
    num_nodes, prefix_len = query.shape[0], prefix_key.shape[0]
    keys = torch.cat([prefix_key, key]).transpose(0, 1)  # [Hkv, P+N, Dh]
    values = torch.cat([prefix_value, value]).transpose(0, 1)
    visible = torch.cat(
        [torch.ones(num_nodes, prefix_len, dtype=torch.bool, device=query.device), ancestor_mask],
        dim=1,
    )  # [N, P+N]
    out = F.scaled_dot_product_attention(
        query.transpose(0, 1), keys.to(query.dtype), values.to(query.dtype),
        attn_mask=visible, scale=scale, enable_gqa=True,
    )  # [H, N, Dh]
    return out.transpose(0, 1)
