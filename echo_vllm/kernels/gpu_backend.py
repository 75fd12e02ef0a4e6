"""vLLM's FlashAttention backend with tree rows (GPU).

FlashAttention takes no mask: this subclass runs it for the whole batch, then recomputes the
rows of draft trees that are not chains as cascade attention (kernels/cascade_tree_attention.py):
the prefix part is vLLM's FlashAttention varlen call over the paged cache through the block
table (non-causal, with its softmax LSE), the tree part a dense masked attention over the
tree's own N x N keys, and vLLM's `merge_attn_states` joins them. Nothing copies a prefix.
The trees ride on the attention metadata exactly as on CPU (kernels.tree_attention.METADATA_ATTRIBUTE).
Registered over vLLM's FLASH_ATTN entry (keeping that name) by echo's GPU worker.

The Triton kernel (kernels/triton_tree_attention.py) is the fallback, chosen with
ECHO_VLLM_TREE_KERNEL=triton: it reads K/V once per (node, head) and is not expected to beat
the cascade path, but that was never measured on a GPU (docs/GPU.md).

Written to vLLM 0.32's FlashAttention interfaces and checked at worker start
(scheduler_patches/overrides.py). Only `flash_prefix_attention` and vLLM's merge are CUDA-only;
everything around them is tested on CPU with the torch prefix attention injected
(tests/kernels/test_backends.py).
"""

from __future__ import annotations

import functools
import os

import torch
from vllm.v1.attention.backends.flash_attn import FlashAttentionBackend, FlashAttentionImpl
from vllm.v1.attention.ops.merge_attn_states import merge_attn_states

from echo_vllm.kernels.cascade_tree_attention import PrefixAttention, cascade_tree_attention
from echo_vllm.kernels.tree_attention import METADATA_ATTRIBUTE, TreeAttentionBatch

TREE_KERNELS = ("cascade", "triton")


def tree_kernel_from_env() -> str:
    kernel = os.environ.get("ECHO_VLLM_TREE_KERNEL", "cascade")
    if kernel not in TREE_KERNELS:
        raise ValueError(f"echo-vllm: ECHO_VLLM_TREE_KERNEL must be one of {TREE_KERNELS}, got {kernel!r}; "
                         "unset it for the default (cascade)")
    return kernel


@functools.cache
def flash_prefix_attention(fa_version: int) -> PrefixAttention:
    """(a) of cascade tree attention on GPU: vLLM's FlashAttention varlen call, every query row
    of a request (N per request) seeing its whole prefix, non-causal, through the block table.
    FlashAttention returns LSE as [H, T], the layout merge_attn_states takes."""
    from vllm.v1.attention.backends.fa_utils import flash_attn_varlen_func  # CUDA builds only

    def attend(query, key_cache, value_cache, block_table, prefix_lens, max_prefix_len, scale):
        total, num_requests = query.shape[0], block_table.shape[0]
        nodes = total // num_requests
        cu_seqlens_q = torch.arange(0, total + 1, nodes, dtype=torch.int32, device=query.device)
        return flash_attn_varlen_func(
            q=query, k=key_cache, v=value_cache, cu_seqlens_q=cu_seqlens_q, max_seqlen_q=nodes,
            seqused_k=prefix_lens.to(torch.int32), max_seqlen_k=max(1, max_prefix_len), softmax_scale=scale,
            causal=False, block_table=block_table.to(torch.int32), return_softmax_lse=True, fa_version=fa_version,
        )

    return attend


def paged_tree_attention(query, tree_key, tree_value, tree_mask, key_cache, value_cache, block_table,
                         prefix_lens, max_prefix_len, scale, fa_version, kernel="cascade"):
    """Tree attention [R, N, H, Dh] with the prefix read from FlashAttention's paged cache
    (key_cache, value_cache [num_blocks, bs, Hkv, Dh]): cascade (default) or the Triton fallback."""
    if kernel == "triton":
        from echo_vllm.kernels.triton_tree_attention import tree_attention_paged

        return tree_attention_paged(query, tree_key, tree_value, tree_mask, key_cache, value_cache, block_table,
                                    prefix_lens, scale)
    return cascade_tree_attention(query, tree_key, tree_value, tree_mask, key_cache, value_cache, block_table,
                                  prefix_lens, max_prefix_len, scale,
                                  prefix_attention=flash_prefix_attention(fa_version), merge=merge_attn_states)


class EchoFlashAttentionImpl(FlashAttentionImpl):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tree_kernel = tree_kernel_from_env()  # a wrong value fails at start-up

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs):
        output = super().forward(layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs)
        trees: TreeAttentionBatch | None = getattr(attn_metadata, METADATA_ATTRIBUTE, None)
        if trees is not None:
            self._rewrite_tree_rows(query, key, value, kv_cache, trees, output)
        return output

    def _rewrite_tree_rows(self, query, key, value, kv_cache, trees: TreeAttentionBatch, output):
        """Tree attention for the trees' rows, written over what FlashAttention wrote there.
        Index tensors come precomputed with the batch: no device sync here."""
        key_cache, value_cache = kv_cache.transpose(1, 2).split(self.head_size, dim=-1)
        q = query.view(query.shape[0], self.num_heads, self.head_size)[trees.token_rows]
        k = key.view(key.shape[0], self.num_kv_heads, self.head_size)[trees.token_rows]
        v = value.view(value.shape[0], self.num_kv_heads, self.head_size)[trees.token_rows]
        out = paged_tree_attention(q, k, v, trees.mask, key_cache, value_cache, trees.block_table,
                                   trees.prefix_lens, trees.max_prefix_len, self.scale,
                                   self.vllm_flash_attn_version, self.tree_kernel)  # [R, N, H, Dh]
        out = out.reshape(-1, self.num_heads * self.head_size)[trees.node_index]
        output.view(output.shape[0], -1)[trees.node_rows] = out.to(output.dtype)


class EchoFlashAttentionBackend(FlashAttentionBackend):
    @staticmethod
    def get_impl_cls() -> type[FlashAttentionImpl]:
        return EchoFlashAttentionImpl
