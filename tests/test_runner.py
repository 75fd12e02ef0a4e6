"""The runner times target passes and hands the batch policy one clock, which waits for a CUDA
device before reading the time and is the plain clock on CPU (no vLLM runner built: the mixin
sits over a stand-in base); a verified tree's predicted drafts by depth."""

import time

import pytest
import torch

from echo_vllm.config import parse_echo_config
from echo_vllm.runner import EchoRunnerMixin, predicted_by_depth


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


def test_a_trees_path_probabilities_are_summed_by_depth():
    # root; two depth-1 nodes; a depth-2 child of the first; a depth-3 child of that
    assert predicted_by_depth([-1, 0, 0, 1, 3], [0.0, 0.6, 0.2, 0.3, 0.1]) == pytest.approx([0.8, 0.3, 0.1])
    assert predicted_by_depth([-1], [0.0]) == []
