"""vLLM's FlashAttention backend with tree rows (GPU).

FlashAttention takes no mask: this subclass runs it for the whole batch, then recomputes the
rows of draft trees that are not chains with echo's Triton tree-attention kernel, which reads
the prefix straight from FlashAttention's paged cache. The trees ride on the attention
metadata exactly as on CPU (kernels.tree_attention.METADATA_ATTRIBUTE). Registered over
vLLM's FLASH_ATTN entry (keeping that name) by echo's GPU worker.

Written to vLLM 0.32's FlashAttention interfaces and checked at worker start
(scheduler_patches/overrides.py), but never run on a GPU: this project's GPU machine cannot
hold a full vLLM install. The kernel itself is tested against the torch reference
(tests/kernels/test_triton_tree_attention.py).
"""

from __future__ import annotations

from vllm.v1.attention.backends.flash_attn import FlashAttentionBackend, FlashAttentionImpl

from echo_vllm.kernels.tree_attention import METADATA_ATTRIBUTE, TreeAttentionBatch
from echo_vllm.kernels.triton_tree_attention import tree_attention_paged


class EchoFlashAttentionImpl(FlashAttentionImpl):
    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs):
        output = super().forward(layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs)
        trees: TreeAttentionBatch | None = getattr(attn_metadata, METADATA_ATTRIBUTE, None)
        if trees is not None:
            key_cache, value_cache = kv_cache.transpose(1, 2).split(self.head_size, dim=-1)
            q = query.view(query.shape[0], self.num_heads, self.head_size)[trees.token_rows]
            k = key.view(key.shape[0], self.num_kv_heads, self.head_size)[trees.token_rows]
            v = value.view(value.shape[0], self.num_kv_heads, self.head_size)[trees.token_rows]
            out = tree_attention_paged(
                q, k, v, trees.mask, key_cache, value_cache, trees.block_table,
                trees.prefix_lens, self.scale,
            )
            rows = trees.token_rows[trees.is_node]
            output.view(output.shape[0], -1)[rows] = out[trees.is_node].reshape(rows.shape[0], -1).to(output.dtype)
        return output


class EchoFlashAttentionBackend(FlashAttentionBackend):
    @staticmethod
    def get_impl_cls() -> type[FlashAttentionImpl]:
        return EchoFlashAttentionImpl
