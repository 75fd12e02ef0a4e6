"""Sweet-Spot calibration on synthetic records with a known best judge depth."""

import torch

from echo_vllm.core.budget import CostModel
from echo_vllm.core.calibration import (
    NOT_ACCEPTED,
    StepCosts,
    accepted_lengths,
    choose_gate,
    choose_sweet_spot,
    choose_threshold,
    choose_tree,
    gate_outcome,
    roc_auc,
    step_costs,
    tree_ranks,
)


def test_roc_auc_perfect_random_and_ties():
    assert roc_auc(torch.tensor([0.9, 0.8, 0.1, 0.2]), torch.tensor([True, True, False, False])) == 1.0
    assert roc_auc(torch.tensor([0.1, 0.2, 0.9, 0.8]), torch.tensor([True, True, False, False])) == 0.0
    assert roc_auc(torch.tensor([0.5, 0.5]), torch.tensor([True, False])) == 0.5
    assert roc_auc(torch.tensor([0.5, 0.6]), torch.tensor([True, True])) == 0.5


def synthetic_records(count: int, seed: int = 0):
    """Steps 5. Depth 2 is informative: the statistic there is high iff more than 2 drafts
    were accepted; elsewhere it is noise. The accepted node at depth j has rank 2(j-1)."""
    g = torch.Generator().manual_seed(seed)
    accepted = torch.randint(0, 5, (count,), generator=g)
    depth_index = torch.arange(5 - 1)
    path_ranks = torch.where(depth_index < accepted.view(-1, 1), 2 * depth_index, NOT_ACCEPTED)
    noise = torch.rand(count, 4, generator=g)
    statistics = noise.clone()
    statistics[:, 1] = torch.where(accepted > 2, 0.6 + 0.4 * noise[:, 1], 0.4 * noise[:, 1])
    return statistics, path_ranks


def linear_costs(base_s: float, per_token_s: float, per_depth_s: float, nodes: int = 16) -> StepCosts:
    return StepCosts(tuple(base_s + per_token_s * (n - 1) for n in range(1, nodes + 1)), per_depth_s)


def test_a_cut_keeps_the_leading_accepted_nodes_within_its_size():
    path_ranks = torch.tensor([[0, 2, 4, NOT_ACCEPTED], [0, 1, NOT_ACCEPTED, NOT_ACCEPTED]])
    assert accepted_lengths(path_ranks).tolist() == [3, 2]
    costs = linear_costs(1.0, per_token_s=0.0, per_depth_s=0.0)
    # gate both at depth 3, cut to 3 nodes (2 drafts): ranks < 2 are kept
    committed, _, gated = gate_outcome(torch.zeros(2), path_ranks, 3, 1.0, 16, 3, costs)
    assert gated == 1.0 and committed == (1 + 1 + 1 + 2) / 2


def test_sweet_spot_finds_the_informative_depth_and_a_separating_threshold():
    statistics, path_ranks = synthetic_records(2000)
    costs = linear_costs(1.0, per_token_s=0.02, per_depth_s=0.05)
    best, table = choose_sweet_spot(statistics, path_ranks, num_draft_tokens=16,
                                    remaining_num_draft_tokens=4, costs=costs)
    assert [row.depth for row in table] == [1, 2, 3, 4]
    assert best.depth == 2
    assert table[1].auc > 0.99 and 0.4 < table[0].auc < 0.6
    assert 0.4 <= best.threshold <= 0.61
    assert best.goodput_gain > 1.0
    assert 0.5 < best.gated_fraction < 0.7  # accepted in {0, 1, 2}: 3 of 5 values


def test_no_gate_when_verification_and_drafting_are_free():
    statistics, path_ranks = synthetic_records(500)
    costs = linear_costs(1.0, per_token_s=0.0, per_depth_s=0.0)
    choice = choose_threshold(statistics[:, 1], path_ranks, depth=2, num_draft_tokens=16,
                              remaining_num_draft_tokens=4, costs=costs)
    assert choice.threshold == 0.0 and choice.gated_fraction == 0.0 and choice.goodput_gain == 1.0


def test_choose_gate_picks_the_informative_statistic():
    statistics, path_ranks = synthetic_records(2000)
    noise_only = torch.rand(statistics.shape, generator=torch.Generator().manual_seed(1))
    both = torch.stack([noise_only, statistics], dim=-1)  # frontier_sum: noise; best_path: informative
    costs = linear_costs(1.0, per_token_s=0.02, per_depth_s=0.05)
    name, best, tables = choose_gate(both, path_ranks, 16, None, costs)
    assert name == "best_path" and best.depth == 2
    assert set(tables) == {"frontier_sum", "best_path"} and len(tables["best_path"]) == 4
    # no count given: a gated request keeps the count with the best goodput; here the
    # accepted nodes at depths 1 and 2 rank 0 and 2 in the pool, so keeping both takes 3
    # drafts (4 nodes), and every node more only costs
    assert best.remaining_num_draft_tokens == 4


def test_gated_requests_keep_the_count_that_is_cheapest_to_verify():
    statistics, path_ranks = synthetic_records(2000)
    # with verification dearer by the node, 4 nodes would do (test above); a pass over 5
    # nodes per request that costs less than one over 2 to 4 (kernels chosen by shape) wins
    verify_s = [1.0, 1.2, 1.15, 1.1, 0.95] + [1.0 + 0.02 * n for n in range(6, 17)]
    best, _ = choose_sweet_spot(statistics, path_ranks, 16, None, StepCosts(tuple(verify_s), 0.05))
    assert best.remaining_num_draft_tokens == 5


def test_step_costs_from_a_cost_model():
    cost = CostModel([4, 64], [1.0, 4.0])  # 4 roots: 1 s; each further token 0.05 s
    costs = step_costs(cost, draft_depth_s=0.16, batch_size=4, num_draft_tokens=16)
    assert len(costs.verify_s) == 16 and costs.verifying(1) == 0.25
    assert abs(costs.verifying(16) - 1.0) < 1e-12  # 64 tokens: 4 s for 4 requests
    assert abs(costs.per_draft_depth_s - 0.04) < 1e-12


def test_a_smaller_tree_keeps_the_leading_accepted_nodes_within_its_size_and_depth():
    path_ranks = torch.tensor([[0, 3, 1], [0, 1, 2], [1, NOT_ACCEPTED, NOT_ACCEPTED]])
    assert tree_ranks(path_ranks, 2, 4).tolist() == [[0, NOT_ACCEPTED], [0, 1], [1, NOT_ACCEPTED]]
    assert tree_ranks(path_ranks, 3, 2).tolist() == [[0, NOT_ACCEPTED, NOT_ACCEPTED], [0, NOT_ACCEPTED, NOT_ACCEPTED],
                                                     [NOT_ACCEPTED] * 3]


def test_the_tree_is_as_large_as_verifying_it_pays_for():
    _, path_ranks = synthetic_records(2000)  # the accepted node at depth j has rank 2(j - 1)
    # verifying is free and drafting nearly so: the whole recorded tree, 4 deep (ranks up to 6
    # need 8 nodes)
    free = choose_tree(path_ranks, step_costs(CostModel([1, 64], [1.0, 1.0]), 0.001, 1, 16), 16)
    assert (free.steps, free.num_draft_tokens) == (4, 8)
    assert free.goodput_gain == 1.0  # as good as the recorded 16 nodes: the tie goes to the smaller tree
    # every verified token costs as much as the pass's base: the smallest tree
    dear = choose_tree(path_ranks, step_costs(CostModel([1, 64], [1.0, 64.0]), 0.001, 1, 16), 16)
    assert (dear.steps, dear.num_draft_tokens) == (2, 2)
    # each depth costs a fifth of a pass: a shallower tree
    deep_dear = choose_tree(path_ranks, step_costs(CostModel([1, 64], [1.0, 1.0]), 0.2, 1, 16), 16)
    assert deep_dear.steps < 4 and deep_dear.num_draft_tokens == 2 * deep_dear.steps
