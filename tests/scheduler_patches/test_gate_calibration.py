"""Sweet-Spot records and the gate chosen online from them (scheduler_patches/gate_calibration.py)."""

import torch

from echo_vllm.config import parse_echo_config
from echo_vllm.core.budget import CostModel
from echo_vllm.core.calibration import NOT_ACCEPTED
from echo_vllm.scheduler_patches.batch_policy import BatchPolicy
from echo_vllm.scheduler_patches.gate_calibration import GateCalibration
from echo_vllm.stats import EchoCounters

ONLINE = {"method": "echo", "model": "head", "policy": "echo", "steps": 5, "topk": 4, "num_draft_tokens": 16, "calibration_steps": 40}


def make(options=ONLINE):
    policy = BatchPolicy(parse_echo_config(options), EchoCounters(), share=lambda values: values)
    policy.cost_model = CostModel([1, 16], [0.010, 0.030])
    return policy, GateCalibration(policy.config, policy)


def test_a_record_pairs_the_drafted_statistics_with_the_accepted_paths_ranks():
    policy, calibration = make()
    statistics = [[0.9, 0.8], [0.5, 0.4], [0.2, 0.1], [0.1, 0.0]]  # depths 1-4, two statistics
    node_ranks = [-1, 0, 3, 1, 7, 2]  # by tree node
    calibration.record("a", 2, (statistics, node_ranks), accepted_nodes=[2, 4], prefix_len=12)
    calibration.record("a", 1, (statistics, node_ranks), accepted_nodes=[1], prefix_len=15)
    calibration.record("a", 0, None, accepted_nodes=[], prefix_len=16)  # a cut tree: no record
    assert calibration.records == [
        (statistics, [3, 7, NOT_ACCEPTED, NOT_ACCEPTED, NOT_ACCEPTED], [-1.0, 12.0]),
        (statistics, [0, NOT_ACCEPTED, NOT_ACCEPTED, NOT_ACCEPTED, NOT_ACCEPTED], [2.0, 15.0]),
    ]
    # the running accepted length: 2, then 0.5 * 2 + 0.5 * 1, then 0.5 * 1.5 + 0
    calibration.record("a", 0, (statistics, node_ranks), accepted_nodes=[], prefix_len=16)
    assert calibration.records[-1][2] == [0.75, 16.0]


def test_online_calibration_switches_the_gate_on_after_its_steps():
    policy, calibration = make()
    assert policy.recording and not policy.spends_budget()
    g = torch.Generator().manual_seed(0)
    for step in range(40):
        for request in range(4):
            accepted = int(torch.randint(0, 5, (1,), generator=g))
            informative = 0.9 if accepted > 2 else 0.1  # depth 2 tells who accepts deep
            statistics = [[0.5, 0.5], [informative, informative], [0.5, 0.5], [0.5, 0.5]]
            ranks = [-1] + list(range(15))
            calibration.record(f"r{request}", accepted, (statistics, ranks), list(range(1, accepted + 1)), 10)
        calibration.step_verified(4)
        assert policy.recording == (step < 39)
    assert not policy.recording and calibration.online_steps is None and calibration.records == []
    assert policy.gate.name == "echo" and policy.gate.check_depths == (2,)
    assert 0.1 <= policy.gate.thresholds[0] <= 0.9


def test_no_gate_is_chosen_before_a_whole_tree_was_recorded():
    policy, calibration = make()
    for _ in range(50):
        calibration.step_verified(1)
    assert policy.recording and calibration.online_steps == 40
