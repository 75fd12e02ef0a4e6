"""Per-request growth decisions of the static, ddd, opt_tree and echo policies."""

import math

import torch

from echo_vllm.core.gating import (
    ddd_policy,
    echo_policy,
    expected_accepted,
    gate_statistic,
    opt_tree_policy,
)
from echo_vllm.core.tree import expand_frontier, pool_depths, root_frontier


def log(*probs):
    return torch.tensor([math.log(p) if p > 0 else -math.inf for p in probs])


def test_gate_statistics_worked_example():
    frontier = log(0.5, 0.2).unsqueeze(0)
    assert torch.allclose(gate_statistic(frontier, "frontier_sum"), torch.tensor([0.7]))
    assert torch.allclose(gate_statistic(frontier, "best_path"), torch.tensor([0.5]))


def test_unknown_statistic_is_named():
    try:
        gate_statistic(log(0.5).unsqueeze(0), "entropy")
    except ValueError as error:
        assert "'entropy'" in str(error) and "frontier_sum" in str(error)
    else:
        raise AssertionError("expected ValueError")


def test_expected_accepted_sums_the_best_path_probabilities():
    scores = torch.stack([log(0.6, 0.3, 0.2, 0.1), log(0.9, 0, 0, 0)])
    assert torch.allclose(expected_accepted(scores, torch.tensor([2, 3])), torch.tensor([0.9, 0.9]))


def test_echo_gates_only_below_its_threshold_at_its_judge_depth():
    policy = echo_policy(num_draft_tokens=8, judge_depths=(2,), thresholds=(0.4,),
                         remaining_num_draft_tokens=3, statistic="frontier_sum")
    frontier = torch.stack([log(0.3, 0.2), log(0.2, 0.1)])  # sums .5 and .3
    keep = policy.keep_growing(2, frontier, frontier, pool_depths(1, 2))
    assert keep.tolist() == [True, False]
    assert policy.stopped_num_draft_tokens == 3 and policy.check_depths == (2,)


def test_ddd_checks_every_listed_depth_with_one_threshold():
    policy = ddd_policy(num_draft_tokens=8, check_depths=(1, 2), threshold=0.5)
    assert policy.thresholds == (0.5, 0.5)
    frontier = torch.stack([log(0.3, 0.3), log(0.3, 0.1)])
    assert policy.keep_growing(1, frontier, frontier, pool_depths(1, 2)).tolist() == [True, False]
    assert policy.stopped_num_draft_tokens == 8


def test_opt_tree_stops_when_the_last_depth_adds_too_little():
    # request 0: depth 2 adds nodes of probability .5 and .3 over depth 1's .9 and .05;
    # request 1: depth 2 adds almost nothing
    frontier, pool = root_frontier(torch.stack([log(0.9, 0.05), log(0.6, 0.3)]), torch.tensor([[1, 2], [1, 2]]))
    children = torch.stack([
        torch.stack([log(0.56, 0.34), log(0.5, 0.4)]),
        torch.stack([log(0.01, 0.005), log(0.01, 0.005)]),
    ])
    frontier, pool = expand_frontier(frontier, children, torch.zeros(2, 2, 2, dtype=torch.long), pool)
    policy = opt_tree_policy(num_draft_tokens=3, steps=3, min_gain=0.1)
    assert policy.check_depths == (1, 2)
    keep = policy.keep_growing(2, frontier.scores, pool.scores, pool_depths(2, 2))
    # request 0: best 2 nodes .9 + .504 vs .9 + .05 -> gain .454; request 1: gain 0
    assert keep.tolist() == [True, False]
