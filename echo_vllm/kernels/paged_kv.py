"""Reading and moving K/V in vLLM's paged KV caches, one layout per attention backend.

Both vLLM 0.32 backends echo extends store one tensor per layer, shaped
[num_blocks, kv_heads, block_size, 2 * head_size]; slot s lives in block s // block_size at
offset s % block_size. What the bytes mean differs:

  CPU_PACKED   CPU attention (`vec`/`vec16` kernels, fp32/fp16): for each (block, head) the
               first block_size * head_size values hold K *transposed* ([head_size,
               block_size]) and the next block_size * head_size hold V ([block_size,
               head_size]), as the C++ writer `cpu_attn_reshape_and_cache` lays them out
               (checked against it in tests/kernels/test_paged_kv.py).
  HEAD_MAJOR   FlashAttention: entry [block, head, offset] holds K in its first head_size
               values and V in the rest (vLLM splits the last dimension in two).

Shape key: M slots, Hkv kv heads, Dh head size, bs block size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

SUPPORTED_ISAS = ("vec", "vec16")


def check_isa(isa: str) -> None:
    if isa not in SUPPORTED_ISAS:
        raise RuntimeError(
            f"echo-vllm: tree attention reads the CPU KV cache in the {SUPPORTED_ISAS} layouts, "
            f"but this engine uses {isa!r} (bf16 on AMX / ARM / other CPUs); run with "
            "dtype float32 or float16"
        )


def packed_blocks(kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CPU_PACKED: K view [nb, Hkv, Dh, bs] and V view [nb, Hkv, bs, Dh] of one layer's cache."""
    num_blocks, kv_heads, block_size, two_dh = kv_cache.shape
    head_size = two_dh // 2
    flat = kv_cache.view(num_blocks, kv_heads, 2, block_size * head_size)
    key = flat[:, :, 0].view(num_blocks, kv_heads, head_size, block_size)
    value = flat[:, :, 1].view(num_blocks, kv_heads, block_size, head_size)
    return key, value


def gather_kv(kv_cache: torch.Tensor, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V of `slots` [M] as dense [M, Hkv, Dh] tensors (copies)."""
    block_size = kv_cache.shape[2]
    key, value = packed_blocks(kv_cache)
    blocks, offsets = slots // block_size, slots % block_size
    k = key[blocks, :, :, offsets]  # [M, Hkv, Dh]
    v = value[blocks, :, offsets, :]  # [M, Hkv, Dh]
    return k, v


def scatter_kv(kv_cache: torch.Tensor, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Write dense k, v [M, Hkv, Dh] into `slots` [M] of the cache, in place."""
    block_size = kv_cache.shape[2]
    key, value = packed_blocks(kv_cache)
    blocks, offsets = slots // block_size, slots % block_size
    key[blocks, :, :, offsets] = k.to(kv_cache.dtype)
    value[blocks, :, offsets, :] = v.to(kv_cache.dtype)


def gather_kv_head_major(kv_cache: torch.Tensor, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """HEAD_MAJOR counterpart of gather_kv: K and V of `slots` [M] as [M, Hkv, Dh] copies."""
    block_size, head_size = kv_cache.shape[2], kv_cache.shape[3] // 2
    entries = kv_cache[slots // block_size, :, slots % block_size]  # [M, Hkv, 2*Dh]
    return entries[..., :head_size].clone(), entries[..., head_size:].clone()


def scatter_kv_head_major(kv_cache: torch.Tensor, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """HEAD_MAJOR counterpart of scatter_kv."""
    block_size = kv_cache.shape[2]
    kv_cache[slots // block_size, :, slots % block_size] = torch.cat([k, v], dim=-1).to(kv_cache.dtype)


@dataclass(frozen=True)
class KvLayout:
    name: str
    gather: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    scatter: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]


CPU_PACKED = KvLayout("cpu_packed", gather_kv, scatter_kv)
HEAD_MAJOR = KvLayout("head_major", gather_kv_head_major, scatter_kv_head_major)


def move_kv(
    layout: KvLayout, kv_caches: list[torch.Tensor], src_slots: torch.Tensor, dst_slots: torch.Tensor
) -> None:
    """Copy K/V from src_slots to dst_slots [M] in every layer's cache.

    All sources are read before any destination is written, so overlapping moves are safe.
    """
    for kv_cache in kv_caches:
        k, v = layout.gather(kv_cache, src_slots)
        layout.scatter(kv_cache, dst_slots, k, v)


def slots_of(block_table: torch.Tensor, positions: torch.Tensor, block_size: int) -> torch.Tensor:
    """Slots of token positions through block tables: [B, nblk] and [B, M] -> [B, M].

    Worked example: block table [[7, 2]], block size 32: positions [[0, 31, 32]] ->
    [[224, 255, 64]].
    """
    blocks = block_table.long().gather(1, positions // block_size)
    return blocks * block_size + positions % block_size


def prefix_slots(block_table: torch.Tensor, prefix_lens: torch.Tensor, block_size: int) -> torch.Tensor:
    """Slots of positions 0..len-1 of each request, [B, max len]; the padding repeats the
    last real slot (callers mask it out by length). Every length must be >= 1."""
    max_len = int(prefix_lens.max())
    positions = torch.arange(max_len, device=block_table.device).expand(len(prefix_lens), max_len)
    positions = positions.minimum((prefix_lens.to(positions.device) - 1).view(-1, 1))
    return slots_of(block_table, positions, block_size)
