"""What differs by device, decided once here: the dtype echo's tools start engines with, and
the clock echo's timings read.

- dtype: vLLM's CPU engine dies with SIGILL in bf16 on the CPUs this project runs on, so the
  tools ask for float32 there; everywhere else "auto" (the checkpoint's bf16 / fp16), since
  FlashAttention takes fp16 / bf16 only.
- clock: GPU work is asynchronous, so a wall-clock reading taken without synchronizing
  measures kernel launches, not work. Echo's cost model (the runner's target-pass timings and
  the batch policy's drafting clocks) reads one clock that synchronizes the
  device first on CUDA and is the plain clock on CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

CPU_DTYPE = "float32"


def model_dtype(is_cpu: bool) -> str:
    """The `dtype` engine option for vLLM's CPU platform (`is_cpu`) or any other."""
    return CPU_DTYPE if is_cpu else "auto"


def tool_dtype() -> str:
    """The `dtype` echo's tools (calibrate, bench, serving, training data) start engines with,
    on this machine's vLLM platform."""
    from vllm.platforms import current_platform

    return model_dtype(current_platform.is_cpu())


def synchronizing_clock(device: torch.device) -> Callable[[], float]:
    """`time.perf_counter`, after the device's queued work has finished (CUDA); on other
    devices the plain clock (their work is done when the call returns)."""
    if device.type != "cuda":
        return time.perf_counter

    def clock() -> float:
        torch.cuda.synchronize(device)
        return time.perf_counter()

    return clock
