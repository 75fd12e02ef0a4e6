"""Agreement across tensor-parallel ranks."""

from __future__ import annotations

import torch
from vllm.distributed import get_tensor_model_parallel_world_size, get_tp_group


def same_on_every_rank(values: list[float]) -> list[float]:
    """Rank 0's values on every tensor-parallel rank. Ranks time their own passes, so
    decisions made from timings (budget, calibrated gate) could differ; all ranks must
    verify the same trees."""
    if get_tensor_model_parallel_world_size() == 1:
        return values
    shared = torch.tensor(values, dtype=torch.float64, device=get_tp_group().device)
    get_tp_group().broadcast(shared, src=0)
    return shared.tolist()
