"""vLLM's CPU attention backend with tree rows.

vLLM's CPU kernel (`cpu_attention_with_kv_cache`) knows only causal masks. This subclass runs
it for the whole batch, then recomputes the rows of draft trees that are not chains with
torch tree attention (a chain's causal answer is already right). The trees ride on the
attention metadata object (kernels.tree_attention.METADATA_ATTRIBUTE), set by echo's runner
for target layers only. Registered over vLLM's CPU_ATTN entry (keeping that name) by echo's
CPU worker.
"""

from __future__ import annotations

from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend, CPUAttentionBackendImpl

from echo_vllm.kernels.paged_kv import gather_kv, prefix_slots
from echo_vllm.kernels.tree_attention import METADATA_ATTRIBUTE, TreeAttentionBatch, tree_attention


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
        # a root at position 0 has an empty prefix: gather one (masked) slot anyway
        slots = prefix_slots(trees.block_table, trees.prefix_lens.clamp(min=1), trees.block_size)
        prefix_k, prefix_v = gather_kv(kv_cache, slots.flatten())
        prefix_shape = (*slots.shape, self.num_kv_heads, self.head_size)
        out = tree_attention(
            q, k, v, trees.mask, prefix_k.view(prefix_shape), prefix_v.view(prefix_shape),
            trees.prefix_lens, self.scale,
        )  # [R, N, H, Dh]
        rows = trees.token_rows[trees.is_node]
        output.view(output.shape[0], -1)[rows] = out[trees.is_node].reshape(rows.shape[0], -1).to(output.dtype)


class EchoCPUAttentionBackend(CPUAttentionBackend):
    @staticmethod
    def get_impl_cls() -> type[CPUAttentionBackendImpl]:
        return EchoCPUAttentionBackendImpl
