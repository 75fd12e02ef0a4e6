"""The runner times target passes and hands the batch policy one clock, which waits for a CUDA
device before reading the time and is the plain clock on CPU (no vLLM runner built: the mixin
sits over a stand-in base)."""

import time

import pytest
import torch

from echo_vllm.config import parse_echo_config
from echo_vllm.runner import EchoRunnerMixin


class StandInRunner:
    def __init__(self, vllm_config, device):
        self.device = device


class Runner(EchoRunnerMixin, StandInRunner):
    pass


@pytest.fixture
def echo_config():
    return parse_echo_config({"method": "echo", "model": "/heads/x", "policy": "echo", "budget": "auto"})


def test_on_cpu_the_policy_reads_the_plain_clock(echo_config):
    runner = Runner(None, torch.device("cpu"), echo_config)
    assert runner.echo_policy.clock is time.perf_counter


def test_on_cuda_every_timing_waits_for_the_device(echo_config, monkeypatch):
    synchronized = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device: synchronized.append(device))
    runner = Runner(None, torch.device("cuda", 0), echo_config)
    assert runner.echo_policy.clock is runner._echo_clock
    runner.echo_policy.clock()
    assert synchronized == [torch.device("cuda", 0)]
