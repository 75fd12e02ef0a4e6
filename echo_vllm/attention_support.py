"""The attention features echo's tree path does not implement, found in a vLLM config and, once
the model is loaded and its KV cache laid out, in its attention layers: refused at start-up,
naming the feature and what to do, instead of verifying trees with wrong logits.

Echo's tree attention (kernels/) computes plain softmax attention of each tree node over the
whole committed prefix plus its ancestors, from one paged KV cache in the model's dtype, at
RoPE positions prefix + depth. Where vLLM's FlashAttention forward does more, the tree rows
would silently differ from what the target computes without speculation:

  sliding window         the prefix part would have to be windowed
  logits soft-capping    scores capped by tanh before the softmax
  attention sinks        an extra per-head logit in the softmax's denominator
  ALiBi                  a per-head distance bias added to the scores
  quantized KV cache     fp8 caches need the q/k/v descales
  M-RoPE                 vLLM reads `mrope_positions`, which echo does not rewrite
  decode context par.    the KV cache is split across ranks
  several KV groups      echo reads one block table for every layer
  kernel block size      echo addresses the cache in the KV manager's blocks

Config-level features are refused where echo's options are parsed (ValueError, before any
weight loads); the layers' and the KV cache's once echo's worker has loaded the model and laid
out its cache (RuntimeError). Duck-typed over vLLM's objects (no vLLM import), so tests give
small stand-ins.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# KV-cache dtypes stored as plain floating point (vLLM's CacheDType names)
PLAIN_KV_CACHE_DTYPES = ("auto", "float16", "bfloat16", "float32", "float")
WITHOUT_ECHO = "serve this model without method 'echo'"

SLIDING_WINDOW = "sliding window"
SOFT_CAP = "logits soft-capping"
SINKS = "attention sinks"
ALIBI = "ALiBi position biases"
QUANTIZED_KV = "quantized KV cache"
MROPE = "M-RoPE (multimodal rotary positions)"
DCP = "decode context parallelism"
KV_GROUPS = "more than one KV-cache group"
KERNEL_BLOCK = "a kernel block size other than the KV manager's"


@dataclass(frozen=True)
class Unsupported:
    """One attention feature echo's tree path does not implement, where it was found, and
    what the user can do."""

    feature: str
    found: str
    what_to_do: str

    def __str__(self) -> str:
        return f"{self.feature} ({self.found}): {self.what_to_do}"


def config_features(model_config: Any, parallel_config: Any, cache_dtype: str) -> list[Unsupported]:
    """The unsupported features a vLLM config shows before any weight loads (empty: none)."""
    found = []
    window = model_config.get_sliding_window()
    if window is not None:
        found.append(Unsupported(SLIDING_WINDOW, f"{window} tokens", "set disable_sliding_window=True (it caps "
                                 f"max_model_len at the window) or {WITHOUT_ECHO}"))
    soft_cap = getattr(model_config.hf_text_config, "attn_logit_softcapping", None)
    if soft_cap:
        found.append(Unsupported(SOFT_CAP, f"attn_logit_softcapping={soft_cap}", WITHOUT_ECHO))
    if model_config.uses_alibi:
        found.append(Unsupported(ALIBI, "the model's config", WITHOUT_ECHO))
    if model_config.uses_mrope:
        found.append(Unsupported(MROPE, "the model's rope_scaling", WITHOUT_ECHO))
    if cache_dtype not in PLAIN_KV_CACHE_DTYPES:
        found.append(Unsupported(QUANTIZED_KV, f"kv_cache_dtype={cache_dtype!r}",
                                 f"leave kv_cache_dtype 'auto' or {WITHOUT_ECHO}"))
    dcp = parallel_config.decode_context_parallel_size
    if dcp > 1:
        found.append(Unsupported(DCP, f"decode_context_parallel_size={dcp}", f"set it to 1 or {WITHOUT_ECHO}"))
    return found


def _layers_where(layers: dict[str, Any], holds) -> str | None:
    """'N of M attention layers, e.g. <name>' for the layers where `holds(layer)`, else None."""
    names = [name for name, layer in layers.items() if holds(layer)]
    if not names:
        return None
    return f"{len(names)} of {len(layers)} attention layers, e.g. {names[0]}"


# (feature, does a vLLM Attention layer (with its backend `impl`) use it, what to do)
_LAYER_CHECKS = (
    (SLIDING_WINDOW, lambda layer: getattr(layer, "sliding_window", None) is not None,
     f"set disable_sliding_window=True or {WITHOUT_ECHO}"),
    (SOFT_CAP, lambda layer: bool(getattr(layer.impl, "logits_soft_cap", None)), WITHOUT_ECHO),
    (SINKS, lambda layer: bool(getattr(layer, "has_sink", False)), WITHOUT_ECHO),
    (ALIBI, lambda layer: getattr(layer.impl, "alibi_slopes", None) is not None, WITHOUT_ECHO),
    (QUANTIZED_KV, lambda layer: getattr(layer, "kv_cache_dtype", "auto") not in PLAIN_KV_CACHE_DTYPES,
     f"set kv_cache_dtype to the model's dtype (the checkpoint may ask for fp8) or {WITHOUT_ECHO}"),
)


def layer_features(layers: dict[str, Any], kv_cache_groups: Sequence[Any],
                   kernel_block_sizes: Sequence[int]) -> list[Unsupported]:
    """The unsupported features of the loaded model's attention layers (by name) and of its KV
    cache layout: the groups of vLLM's KVCacheConfig and the runner's kernel block size of each."""
    found = []
    for feature, holds, what_to_do in _LAYER_CHECKS:
        where = _layers_where(layers, holds)
        if where is not None:
            found.append(Unsupported(feature, where, what_to_do))
    if len(kv_cache_groups) > 1:
        found.append(Unsupported(KV_GROUPS, f"{len(kv_cache_groups)} groups: layers of different attention kinds "
                                 "or shapes", WITHOUT_ECHO))
    for group, kernel_block_size in zip(kv_cache_groups, kernel_block_sizes):
        manager_block_size = group.kv_cache_spec.block_size
        if kernel_block_size != manager_block_size:
            found.append(Unsupported(KERNEL_BLOCK, f"kernel {kernel_block_size}, KV manager {manager_block_size}",
                                     f"set block_size={kernel_block_size}"))
    return found


def unsupported_attention_features(vllm_config: Any, layers: dict[str, Any] | None = None,
                                   kv_cache_config: Any = None,
                                   kernel_block_sizes: Iterable[int] = ()) -> list[Unsupported]:
    """Every attention feature of this engine echo's tree path does not implement (each named
    once): the config's, and, when given (after load / KV cache initialisation), the layers'
    and the cache layout's."""
    found = config_features(vllm_config.model_config, vllm_config.parallel_config,
                            vllm_config.cache_config.cache_dtype)
    groups = kv_cache_config.kv_cache_groups if kv_cache_config is not None else ()
    named = {unsupported.feature for unsupported in found}
    found += [u for u in layer_features(layers or {}, groups, list(kernel_block_sizes)) if u.feature not in named]
    return found


def refuse(features: list[Unsupported], error: type[Exception]) -> None:
    """Raise `error` naming every unsupported feature and what to do, unless there is none."""
    if features:
        raise error("echo-vllm: method 'echo' verifies draft trees with plain attention, but this model uses "
                    + "; ".join(str(f) for f in features))
