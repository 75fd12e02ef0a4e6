"""The drafter's view of each growing request's draft-KV prefix, one per device kind.

The drafter's tree steps attend to the committed prefix plus the tree drafted so far. How the
prefix is read is chosen once, where the drafter builds it (proposers/eagle_tree.py):

  GatheredPrefix  CPU: the prefix copied out of the packed cache once per drafted step, then
                  the torch reference tree_attention (the CPU drafter as it always was).
  PagedPrefix     GPU: the prefix stays in the paged cache; each tree step is cascade attention
                  (kernels/cascade_tree_attention.py) with the injected prefix attention
                  (FlashAttention on GPU): nothing copies the prefix.

Both offer `attend` (query [A, N, H, Dh], tree keys [A, M, Hkv, Dh], mask [A, N, M] ->
[A, N, H, Dh]) and `select` (the rows at `keep` [A'], as the drafter drops stopped requests).
Imports torch only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from echo_vllm.kernels.cascade_tree_attention import (
    MergeAttentionStates,
    PrefixAttention,
    cascade_tree_attention,
    merge_attention_states,
    paged_prefix_attention,
)
from echo_vllm.kernels.tree_attention import tree_attention


@dataclass(frozen=True)
class GatheredPrefix:
    key: torch.Tensor  # [A, P, Hkv, Dh], padded; the first lens[a] rows are real
    value: torch.Tensor
    lens: torch.Tensor  # [A] int64

    def attend(self, query, tree_key, tree_value, tree_mask, scale: float) -> torch.Tensor:
        return tree_attention(query, tree_key, tree_value, tree_mask, self.key, self.value, self.lens, scale)

    def select(self, keep: torch.Tensor) -> "GatheredPrefix":
        return GatheredPrefix(self.key[keep], self.value[keep], self.lens[keep])


@dataclass(frozen=True)
class PagedPrefix:
    key_cache: torch.Tensor  # [num_blocks, bs, Hkv, Dh] view of the draft layer's cache
    value_cache: torch.Tensor
    block_table: torch.Tensor  # [A, nblk] int32
    lens: torch.Tensor  # [A] int64
    max_len: int  # >= every length (host int)
    prefix_attention: PrefixAttention = paged_prefix_attention
    merge: MergeAttentionStates = merge_attention_states

    def attend(self, query, tree_key, tree_value, tree_mask, scale: float) -> torch.Tensor:
        return cascade_tree_attention(
            query, tree_key, tree_value, tree_mask, self.key_cache, self.value_cache, self.block_table,
            self.lens, self.max_len, scale, prefix_attention=self.prefix_attention, merge=self.merge,
        )

    def select(self, keep: torch.Tensor) -> "PagedPrefix":
        return replace(self, block_table=self.block_table[keep], lens=self.lens[keep])
