"""Tree attention as cascade attention: prefix part, tree part, merged by log-sum-exp.

Every tree node sees its request's whole committed prefix, with no mask; only the tree part
(N query nodes x M tree keys per request, both <= 129) needs the ancestor mask. So:

  (a) prefix attention over the paged KV cache through the block table, with each
      (query row, head)'s softmax log-sum-exp (LSE);
  (b) dense attention over the tree keys under the tree mask, with its LSE;
  (c) the standard merge: out = (e^lse_a out_a + e^lse_b out_b) / (e^lse_a + e^lse_b).

Nothing copies a request's prefix per node: (a)'s memory grows with nodes x chunk, not with
nodes x prefix. On GPU, (a) is vLLM's FlashAttention varlen call and (c) vLLM's
`merge_attn_states` (kernels/gpu_backend.py injects them); the torch versions here run
everywhere (CPU tests, scripts/gpu_check.py on a machine without vLLM). This module imports
torch only.

Conventions, vLLM's (so FlashAttention's outputs feed the merge unchanged): query rows are
flattened, T = R * N (request-major, N rows per request), outputs [T, H, Dh], LSE [H, T]
float32, -inf where a row saw no key (FlashAttention may write +inf there; both merges read
any infinite LSE as "no keys").
Shape key: R requests (trees), N query nodes, M tree keys, H / Hkv query / kv heads
(H % Hkv == 0, query head h reads kv head h // (H // Hkv)), Dh head size, bs block size.
Caches: [num_blocks, bs, Hkv, Dh] views (FlashAttention's split of vLLM's cache).
"""

from __future__ import annotations

from typing import Protocol

import torch

# prefix tokens each step of the torch prefix attention reads, per request, in cache blocks
PREFIX_CHUNK_TOKENS = 512


class PrefixAttention(Protocol):
    def __call__(self, query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                 block_table: torch.Tensor, prefix_lens: torch.Tensor, max_prefix_len: int,
                 scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """query [T, H, Dh] (T = R * N); block_table [R, nblk]; prefix_lens [R] (each request's
        keys: positions 0..len-1); max_prefix_len >= every length (host int). Returns
        out [T, H, Dh], lse [H, T] float32."""


class MergeAttentionStates(Protocol):
    def __call__(self, output: torch.Tensor, prefix_output: torch.Tensor, prefix_lse: torch.Tensor,
                 suffix_output: torch.Tensor, suffix_lse: torch.Tensor) -> None:
        """Write the merge of two partial attentions [T, H, Dh] (LSE [H, T]) into output."""


def _grouped(query: torch.Tensor, num_requests: int, kv_heads: int) -> torch.Tensor:
    """[T, H, Dh] -> [R, Hkv, G*N, Dh] float32: each kv head's query rows, group-major.

    Worked example: R 1, N 2, H 4, Hkv 2 -> kv head 1 holds rows (h2,n0), (h2,n1), (h3,n0), (h3,n1).
    """
    total, heads, head_dim = query.shape
    nodes, group = total // num_requests, heads // kv_heads
    q = query.reshape(num_requests, nodes, kv_heads, group, head_dim).permute(0, 2, 3, 1, 4)
    return q.reshape(num_requests, kv_heads, group * nodes, head_dim).float()


def _ungrouped(out: torch.Tensor, lse: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of _grouped for out [R, Hkv, G*N, Dh] and lse [R, Hkv, G*N]:
    -> out [T, H, Dh], lse [H, T] (contiguous)."""
    num_requests, kv_heads, rows, head_dim = out.shape
    group = heads // kv_heads
    nodes = rows // group
    out = out.view(num_requests, kv_heads, group, nodes, head_dim).permute(0, 3, 1, 2, 4)
    lse = lse.view(num_requests, kv_heads, group, nodes).permute(1, 2, 0, 3)
    return out.reshape(num_requests * nodes, heads, head_dim), lse.reshape(heads, num_requests * nodes)


def paged_prefix_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_table: torch.Tensor,
    prefix_lens: torch.Tensor,
    max_prefix_len: int,
    scale: float,
    chunk_tokens: int = PREFIX_CHUNK_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(a) in torch: non-causal attention of every query row to its request's prefix, read
    from the paged cache in chunks of whole blocks with an online softmax (a PrefixAttention).

    Per chunk it holds the chunk's K/V [R, C, Hkv, Dh] and scores [R, H, N, C]: memory grows
    with nodes x chunk, never with nodes x prefix. Returns out [T, H, Dh] in query's dtype
    (0 where the prefix is empty) and lse [H, T] float32 (-inf there).
    """
    num_requests, heads = block_table.shape[0], query.shape[1]
    block_size, kv_heads, head_dim = key_cache.shape[1:]
    q = _grouped(query, num_requests, kv_heads) * scale  # [R, Hkv, G*N, Dh]
    running_max = torch.full(q.shape[:3], -torch.inf, device=q.device)
    running_sum = torch.zeros(q.shape[:3], device=q.device)
    acc = torch.zeros_like(q)
    lens = prefix_lens.to(q.device).view(-1, 1)
    blocks_per_chunk = max(1, chunk_tokens // block_size)
    num_blocks = min(-(-max_prefix_len // block_size), block_table.shape[1])
    for first in range(0, num_blocks, blocks_per_chunk):
        blocks = block_table[:, first : min(first + blocks_per_chunk, num_blocks)].long()
        k = key_cache[blocks].flatten(1, 2).permute(0, 2, 3, 1).float()  # [R, Hkv, Dh, C]
        v = value_cache[blocks].flatten(1, 2).transpose(1, 2).float()  # [R, Hkv, C, Dh]
        positions = first * block_size + torch.arange(k.shape[-1], device=q.device)
        visible = (positions < lens).view(num_requests, 1, 1, -1)  # [R, 1, 1, C]
        scores = (q @ k).masked_fill_(~visible, -torch.inf)  # [R, Hkv, G*N, C]
        new_max = torch.maximum(running_max, scores.amax(dim=-1))
        safe_max = new_max.masked_fill(new_max == -torch.inf, 0.0)  # no key yet: exp() -> 0, not NaN
        probs = torch.exp(scores - safe_max.unsqueeze(-1))
        correction = torch.exp(running_max - safe_max)
        running_sum = running_sum * correction + probs.sum(dim=-1)
        acc = acc * correction.unsqueeze(-1) + probs @ v
        running_max = new_max
    seen = running_sum > 0
    out = acc / running_sum.clamp(min=torch.finfo(torch.float32).tiny).unsqueeze(-1)
    lse = torch.where(seen, running_max + running_sum.clamp(min=torch.finfo(torch.float32).tiny).log(), -torch.inf)
    out, lse = _ungrouped(out, lse, heads)
    return out.to(query.dtype), lse


def tree_part_attention(
    query: torch.Tensor, tree_key: torch.Tensor, tree_value: torch.Tensor, tree_mask: torch.Tensor, scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(b): query [R, N, H, Dh] to tree_key, tree_value [R, M, Hkv, Dh] under tree_mask
    [R, N, M] bool, dense in float32 (M <= 129 keys). Returns out [T, H, Dh] in query's dtype,
    lse [H, T] float32 (-inf for a row that sees no tree key)."""
    num_requests, _, heads, head_dim = query.shape
    kv_heads = tree_key.shape[2]
    q = _grouped(query.reshape(-1, heads, head_dim), num_requests, kv_heads) * scale  # [R, Hkv, G*N, Dh]
    k = tree_key.permute(0, 2, 3, 1).float()  # [R, Hkv, Dh, M]
    v = tree_value.transpose(1, 2).float()  # [R, Hkv, M, Dh]
    group = heads // kv_heads
    visible = tree_mask.repeat(1, group, 1).unsqueeze(1)  # [R, 1, G*N, M], rows group-major
    scores = (q @ k).masked_fill_(~visible, -torch.inf)
    lse = scores.logsumexp(dim=-1)  # [R, Hkv, G*N]
    safe_lse = lse.masked_fill(lse == -torch.inf, 0.0)
    out = torch.exp(scores - safe_lse.unsqueeze(-1)) @ v
    out, lse = _ungrouped(out, lse, heads)
    return out.to(query.dtype), lse


def merge_attention_states(
    output: torch.Tensor, prefix_output: torch.Tensor, prefix_lse: torch.Tensor,
    suffix_output: torch.Tensor, suffix_lse: torch.Tensor,
) -> None:
    """(c) in torch, vLLM's merge_attn_states contract: outputs [T, H, Dh], LSE [H, T]; an
    infinite LSE (either sign) means that part saw no key; both empty -> 0. Writes output."""
    prefix_lse, suffix_lse = (lse.float().masked_fill(lse.isinf(), -torch.inf) for lse in (prefix_lse, suffix_lse))
    top = torch.maximum(prefix_lse, suffix_lse)
    top = top.masked_fill(top == -torch.inf, 0.0)
    prefix_weight, suffix_weight = torch.exp(prefix_lse - top), torch.exp(suffix_lse - top)
    total = (prefix_weight + suffix_weight).clamp(min=torch.finfo(torch.float32).tiny)
    prefix_weight = (prefix_weight / total).t().unsqueeze(-1)  # [T, H, 1]
    suffix_weight = (suffix_weight / total).t().unsqueeze(-1)
    output.copy_(prefix_output.float() * prefix_weight + suffix_output.float() * suffix_weight)


def cascade_tree_attention(
    query: torch.Tensor,
    tree_key: torch.Tensor,
    tree_value: torch.Tensor,
    tree_mask: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_table: torch.Tensor,
    prefix_lens: torch.Tensor,
    max_prefix_len: int,
    scale: float,
    prefix_attention: PrefixAttention = paged_prefix_attention,
    merge: MergeAttentionStates = merge_attention_states,
) -> torch.Tensor:
    """Tree attention (what kernels.tree_attention.tree_attention computes) from the paged
    cache: (a) + (b), merged by (c).

    query [R, N, H, Dh]; tree_key, tree_value [R, M, Hkv, Dh]; tree_mask [R, N, M] bool;
    key_cache, value_cache [num_blocks, bs, Hkv, Dh]; block_table [R, nblk]; prefix_lens [R];
    max_prefix_len >= every prefix length (host int: no device sync). Every query must see at
    least one key. Returns [R, N, H, Dh] in query's dtype.
    """
    num_requests, nodes, heads, head_dim = query.shape
    flat_query = query.reshape(num_requests * nodes, heads, head_dim)
    prefix_out, prefix_lse = prefix_attention(flat_query, key_cache, value_cache, block_table, prefix_lens,
                                              max_prefix_len, scale)
    tree_out, tree_lse = tree_part_attention(query, tree_key, tree_value, tree_mask, scale)
    out = torch.empty_like(prefix_out)
    merge(out, prefix_out, prefix_lse, tree_out.to(prefix_out.dtype), tree_lse)
    return out.view(num_requests, nodes, heads, head_dim).to(query.dtype)
