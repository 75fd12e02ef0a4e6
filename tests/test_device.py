"""The dtype echo's tools ask for and the clock its timings read, by device."""

import time

import torch

from echo_vllm.device import model_dtype, synchronizing_clock, tool_dtype


def test_float32_on_the_cpu_platform_the_models_dtype_elsewhere():
    assert model_dtype(is_cpu=True) == "float32"  # bf16 kills vLLM's CPU engine here (SIGILL)
    assert model_dtype(is_cpu=False) == "auto"  # FlashAttention takes fp16 / bf16 only


def test_tools_on_this_machine_ask_for_float32():
    assert tool_dtype() == "float32"


def test_the_cpu_clock_is_the_plain_clock():
    assert synchronizing_clock(torch.device("cpu")) is time.perf_counter


def test_the_cuda_clock_reads_the_time_after_the_device_finished(monkeypatch):
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device: events.append(("synchronize", device)))
    monkeypatch.setattr(time, "perf_counter", lambda: events.append(("clock",)) or 12.5)
    clock = synchronizing_clock(torch.device("cuda", 1))
    assert clock() == 12.5
    assert events == [("synchronize", torch.device("cuda", 1)), ("clock",)]
