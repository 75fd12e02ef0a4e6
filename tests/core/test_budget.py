"""The super-tree budget: go deep, then wide; caps; connectivity; the goodput budget."""

import math

import pytest
import torch

from echo_vllm.core.budget import (
    compute_bound,
    AcceptanceCurve,
    CostModel,
    Exploration,
    MeasuredGoodput,
    LinearCost,
    allocate,
    allocation_order,
    chain_allocation_order,
    goodput_budget,
    measurement_sizes,
    most_confident_paths,
    speculation_pays,
)
from echo_vllm.core.tree import pool_depths

INF = math.inf
# one pool layout, K=2, steps 2: depths [1, 1, 2, 2, 2, 2], parents of depth 2: 0, 0, 1, 1
PARENTS = torch.tensor([[-1, -1, 0, 0, 1, 1]] * 2)
DEPTHS = pool_depths(2, 2)


def test_most_confident_path_worked_example():
    scores = torch.tensor([[-0.1, -0.9, -0.5, -0.2, -2.0, -3.0]])
    assert most_confident_paths(scores, PARENTS[:1], DEPTHS).nonzero()[:, 1].tolist() == [0, 3]


def test_path_of_a_request_that_stopped_at_depth_one():
    scores = torch.tensor([[-0.3, -0.1, -INF, -INF, -INF, -INF]])
    assert most_confident_paths(scores, PARENTS[:1], DEPTHS).nonzero()[:, 1].tolist() == [1]


def test_paths_of_requests_that_drafted_deep_stopped_or_drafted_nothing():
    scores = torch.tensor([
        [-0.1, -0.9, -0.5, -0.2, -2.0, -3.0],  # deepest best node 3, under node 0
        [-0.3, -0.1, -INF, -INF, -INF, -INF],  # stopped at depth 1
        [-INF] * 6,  # no drafts
    ])
    paths = most_confident_paths(scores, torch.cat([PARENTS, PARENTS[:1]]), DEPTHS)
    assert paths.tolist() == [[True, False, False, True, False, False],
                              [False, True, False, False, False, False], [False] * 6]


def test_deep_before_wide_across_requests():
    # request 0 is confident; request 1 is not. Its depth-1 sibling (-0.15) outscores
    # request 1's path, but paths are bought first.
    scores = torch.tensor([
        [-0.05, -0.15, -0.1, -0.6, -1.0, -1.1],
        [-1.0, -1.2, -1.5, -2.5, -3.0, -4.0],
    ])
    order = allocation_order(scores, PARENTS, DEPTHS, caps=torch.tensor([5, 5]))
    chosen = allocate(order, 2, 6, budget=4)
    assert chosen.nonzero().tolist() == [[0, 0], [0, 2], [1, 0], [1, 2]]
    # one more token goes wide, to the best remaining node of the batch
    chosen = allocate(order, 2, 6, budget=5)
    assert chosen[0, 1] and int(chosen.sum()) == 5


def test_caps_bound_each_request_and_freed_budget_reaches_others():
    scores = torch.tensor([
        [-0.05, -0.15, -0.1, -0.6, -1.0, -1.1],
        [-1.0, -1.2, -1.5, -2.5, -3.0, -4.0],
    ])
    order = allocation_order(scores, PARENTS, DEPTHS, caps=torch.tensor([1, 5]))  # request 0 gated
    chosen = allocate(order, 2, 6, budget=4)
    assert chosen.sum(dim=1).tolist() == [1, 3]
    assert chosen[0].nonzero().flatten().tolist() == [0]


def test_every_budget_buys_a_connected_super_tree_deterministically():
    g = torch.Generator().manual_seed(0)
    batch, steps, topk = 6, 4, 3
    depths = pool_depths(steps, topk)
    pool = len(depths)
    parents = torch.full((batch, pool), -1)
    scores = torch.empty(batch, pool)
    for p in range(pool):
        if depths[p] > 1:
            parents[:, p] = torch.randint(0, p, (batch,), generator=g)
            # a real parent is one depth up
            candidates = (depths == depths[p] - 1).nonzero().flatten()
            parents[:, p] = candidates[torch.randint(0, len(candidates), (batch,), generator=g)]
            scores[:, p] = scores.gather(1, parents[:, p : p + 1]).squeeze(1) - torch.rand(batch, generator=g)
        else:
            scores[:, p] = -torch.rand(batch, generator=g)
    scores[2, depths > 2] = -INF  # a request gated after depth 2
    caps = torch.tensor([5, 30, 3, 12, 1, 8])
    order = allocation_order(scores, parents, depths, caps)
    assert torch.equal(order, allocation_order(scores, parents, depths, caps))
    for budget in range(0, len(order) + 1):
        chosen = allocate(order, batch, pool, budget)
        assert int(chosen.sum()) == budget
        assert bool((chosen.sum(dim=1) <= caps).all())
        has_parent = parents >= 0
        parent_chosen = chosen.gather(1, parents.clamp(min=0))
        assert bool((~chosen | ~has_parent | parent_chosen).all()), budget
        assert not bool(chosen[2, depths > 2].any())


def test_chain_allocation_order_worked_example():
    scores = torch.tensor([[-0.1, -0.4], [-0.2, -INF]])
    assert chain_allocation_order(scores, torch.tensor([2, 2])).tolist() == [0, 2, 1]


def test_chain_allocation_order_is_the_allocation_order_of_chains():
    g = torch.Generator().manual_seed(1)
    batch, steps = 7, 4
    depths = pool_depths(steps, 1)
    parents = torch.arange(-1, steps - 1).expand(batch, steps)
    # log-probabilities rounded to a few values, so that scores tie across requests and along paths
    logprobs = -(torch.randint(0, 3, (batch, steps), generator=g).float() / 4)
    scores = logprobs.cumsum(dim=1)
    scores[1, 2:] = -INF  # stopped after depth 2
    scores[4] = -INF  # drafted nothing
    caps = torch.tensor([4, 4, 1, 0, 4, 2, 3])
    order = chain_allocation_order(scores, caps)
    assert torch.equal(order, allocation_order(scores, parents, depths, caps))


def test_cost_model_interpolates_extrapolates_and_keeps_what_was_measured():
    cost = CostModel([8, 16, 32, 16], [1.0, 1.3, 2.0, 1.1])  # 16 timed twice: the faster pass counts
    assert torch.allclose(cost(torch.tensor([8, 16, 24, 48])), torch.tensor([1.0, 1.1, 1.55, 2.9], dtype=torch.float64))
    assert abs(float(cost(torch.tensor(4))) - 0.95) < 1e-12  # first segment's slope
    dip = CostModel([1, 2, 3], [1.0, 1.2, 0.9])  # a pass over 3 tokens faster than over 1 or 2
    assert dip.seconds.tolist() == [1.0, 1.2, 0.9]


def test_cost_model_moves_the_points_around_observed_passes():
    cost = CostModel([1, 5], [0.10, 0.20])
    cost.observe(2, 0.145, weight=0.5)  # the worked example
    assert torch.allclose(cost.seconds, torch.tensor([0.1075, 0.2025], dtype=torch.float64))
    cost = CostModel([8, 32, 64], [1.0, 2.0, 3.0])
    for _ in range(200):
        cost.observe(32, 3.0)
    assert abs(float(cost(torch.tensor(32))) - 3.0) < 0.01
    assert cost.to_dict()["seconds"][0] == 1.0 and cost.to_dict()["seconds"][2] == 3.0  # other sizes keep theirs
    for _ in range(200):
        cost.observe(100, 5.0)  # beyond the measured range: the end point moves
    assert abs(float(cost(torch.tensor(100))) - 5.0) < 0.01


def test_cost_model_shape_survives_a_burst_during_start_up():
    # Sizes timed in turns, 3 rounds; a neighbour's burst slowed round 2 (one pass of each
    # size, 40 % more). Truth: 1 token 1.00, 2 tokens 1.06, 4 tokens 1.12.
    rounds = [[1.00, 1.06, 1.12], [1.40, 1.48, 1.57], [1.01, 1.07, 1.12]]
    cost = CostModel([1, 2, 4] * 3, [s for round_ in rounds for s in round_])
    assert torch.allclose(cost(torch.tensor([1, 2, 4])), torch.tensor([1.00, 1.06, 1.12], dtype=torch.float64))


def test_compute_bound_needs_two_doublings_that_almost_double_the_time():
    assert compute_bound([64, 128, 256], [0.010, 0.019, 0.037])
    assert not compute_bound([64, 128, 256], [0.010, 0.011, 0.020])  # the first doubling was nearly free
    assert not compute_bound([128, 256], [0.019, 0.037])  # one doubling is not enough
    assert compute_bound([256, 512, 600], [0.037, 0.074, 0.087])  # the last step need not be a doubling
    # the dense small sizes between powers of two are left out; none of them decides
    dense = list(range(1, 17))
    assert not compute_bound(dense, [0.01 * n for n in dense])
    assert compute_bound([*dense, 32], [0.01 * n for n in [*dense, 32]])  # steps 8 -> 16 -> 32


def test_measurement_sizes_are_dense_then_double():
    assert measurement_sizes(40) == [*range(1, 17), 32, 40]
    assert measurement_sizes(6) == [1, 2, 3, 4, 5, 6]
    assert measurement_sizes(64) == [*range(1, 17), 32, 64]


def test_goodput_budget_worked_example_and_load():
    cost = CostModel([2, 3, 4, 5], [1.0, 1.3, 1.6, 1.9])
    assert goodput_budget(torch.tensor([0.9, 0.5, 0.1]), 2, cost, overhead_s=0.0) == 1
    # a memory-bound pass (verification nearly free) buys every node
    flat = CostModel([2, 64], [1.0, 1.01])
    assert goodput_budget(torch.tensor([0.9, 0.5, 0.1]), 2, flat, overhead_s=0.0) == 3
    # unless its nodes' drafting costs: values at depths 1, 2, 3, drafting 0.1 s a depth beyond
    # the first -> goodput [2, 2.9, 3.4 / 1.1 = 3.09, 3.5 / 1.2 = 2.92] -> G = 2
    by_budget = torch.tensor([0.0, 0.0, 0.1, 0.2], dtype=torch.float64)
    assert goodput_budget(torch.tensor([0.9, 0.5, 0.1]), 2, flat, overhead_s=by_budget) == 2


def test_acceptance_curve_is_per_request_and_predicts_other_batch_sizes():
    curve = AcceptanceCurve(max_drafts_per_request=2)
    # 4 requests, 4 nodes bought in order with values .8 .6 .4 .2: per request, one draft
    # each gains .5; a second draft gains nothing (none drafted)
    curve.observe(torch.tensor([0.8, 0.6, 0.4, 0.2]), num_requests=4)
    assert torch.allclose(curve.gains(4, torch.tensor([0, 1, 2, 4, 8])),
                          torch.tensor([0.0, 0.8, 1.4, 2.0, 2.0], dtype=torch.float64))
    # 8 requests: the same per-request curve, twice the tokens
    assert torch.allclose(curve.gains(8, torch.tensor([2, 8])), torch.tensor([1.6, 4.0], dtype=torch.float64))
    # the EMA moves toward a step that drafted nothing
    curve.observe(torch.zeros(0), num_requests=4)
    assert torch.allclose(curve.gains(4, torch.tensor([4])), torch.tensor([1.8], dtype=torch.float64))


def test_linear_cost_fits_a_line_and_a_single_point():
    fit = LinearCost()
    assert fit(10) is None
    fit.observe(10, 0.02)
    fit.observe(10, 0.04)
    assert 0.02 < fit(64) < 0.04  # one x: the weighted mean, whatever x is asked
    falling = LinearCost()
    for x, y in ((1, 0.02), (16, 0.01)):  # e.g. deeper trees drafted at low load
        falling.observe(x, y)
    assert falling(64) == falling(1) > 0.01
    line = LinearCost()
    for x in (1, 4, 16, 64, 8, 32):
        line.observe(x, 0.005 + 0.001 * x)
    assert abs(line(100) - 0.105) < 1e-9 and abs(line(2) - 0.007) < 1e-9
    assert line(-100) == 0.0


def test_speculation_pays_worked_example():
    curve = AcceptanceCurve(max_drafts_per_request=1)
    curve.observe(torch.tensor([0.45, 0.45]), num_requests=2)
    cost = CostModel([2, 3, 4], [1.0, 1.1, 1.2])
    assert speculation_pays(2, curve, cost, draft_seconds=0.1)
    assert not speculation_pays(2, curve, cost, draft_seconds=0.5)


def test_speculation_stops_paying_as_load_makes_verification_compute_bound():
    # CPU-like target: fixed cost, then ~linear per token; the draft costs per request
    cost = CostModel([1, 16, 64, 256], [0.03, 0.05, 0.15, 0.55])
    curve = AcceptanceCurve(max_drafts_per_request=1)
    curve.observe(torch.full((8,), 0.4), num_requests=8)
    draft = LinearCost()
    for b in (1, 8, 64):
        draft.observe(b, 0.004 + 0.0003 * b)
    assert speculation_pays(1, curve, cost, draft(1))
    assert not speculation_pays(64, curve, cost, draft(64))


def test_acceptance_curve_scales_the_drafts_belief_to_what_the_target_accepts_at_each_depth():
    curve = AcceptanceCurve(max_drafts_per_request=2, max_depth=2)
    values, depths = torch.tensor([0.6, 0.5]), torch.tensor([1, 2])
    assert torch.equal(curve.scales, torch.ones(2, dtype=torch.float64))
    curve.observe_verified(predicted=[0.6, 0.5], accepted=[0, 0])
    assert (curve.scales > 0.85).all()  # the prior: one rejected step does not zero a depth
    for _ in range(2000):
        # the draft is right about depth 1 and overconfident by 2x at depth 2: a request
        # whose target accepted 2 drafts accepted one node at depth 1 and one at depth 2
        curve.observe_verified(predicted=[6.0, 5.0], accepted=[6, 2.5])
    assert torch.allclose(curve.scales, torch.tensor([1.0, 0.5], dtype=torch.float64), atol=1e-2)
    assert torch.allclose(curve.calibrated(values, depths), torch.tensor([0.6, 0.25], dtype=torch.float64), atol=1e-2)
    # a depth no longer verified drifts back to the prior, so it is bought and measured again
    for _ in range(400):
        curve.observe_verified(predicted=[6.0], accepted=[6])
    assert curve.scales[1] > 0.95


def test_a_second_draft_the_draft_overrates_is_not_bought_once_its_depth_is_measured():
    # batch 1; passes of 1, 2, 3 tokens cost 50, 53, 60 ms; a drafted step's other work 20 ms
    cost = CostModel([1, 2, 3], [0.050, 0.053, 0.060])
    values, depths = torch.tensor([0.7, 0.25]), torch.tensor([1, 2])
    curve = AcceptanceCurve(max_drafts_per_request=2, max_depth=2)
    # as the draft believes: the second draft's 0.25 tokens are worth its 7 ms
    assert goodput_budget(curve.calibrated(values, depths), 1, cost, 0.020) == 2
    for _ in range(200):  # verified: depth 1 as believed, depth 2 accepted half as often
        curve.observe_verified(predicted=[0.7, 0.45], accepted=[0.7, 0.225])
    assert goodput_budget(curve.calibrated(values, depths), 1, cost, 0.020) == 1


def test_exploration_waits_long_enough_to_keep_its_cost_share():
    exploration = Exploration(interval=2, max_interval=10, max_share=0.5)
    assert [exploration.due(choice=False, cost=0.0) for _ in range(3)] == [False, False, True]  # nothing known
    assert [exploration.due(choice=False, cost=1.5) for _ in range(8)] == [False, False, False, True] * 2
    assert [exploration.due(choice=False, cost=0.2) for _ in range(3)] == [False, False, True]  # cheap: interval
    assert [exploration.due(choice=False, cost=50.0) for _ in range(11)] == [False] * 10 + [True]  # max_interval
    # a change of choice restarts the count, and explores the other way (an undrafted step)
    exploration.due(choice=False, cost=0.0)
    assert [exploration.due(choice=True, cost=0.0) for _ in range(3)] == [False, False, True]
    with pytest.raises(ValueError, match="interval"):
        Exploration(interval=8, max_interval=4, max_share=0.01)
    with pytest.raises(ValueError, match="max_share"):
        Exploration(interval=2, max_interval=4, max_share=0.0)


def test_measured_goodput_worked_example_and_batch_classes():
    measured = MeasuredGoodput(min_steps=3, decay=1.0, request_decay=1.0)
    for _ in range(3):
        measured.observe(1, drafted=False, seconds=0.10)
        assert measured.ratio(1) is None  # drafted steps not measured yet
    for _ in range(3):
        measured.observe(1, drafted=True, seconds=0.12, predicted=0.5, accepted=0.3)
    assert measured.ratio(1) is None  # three pairs of weight 1/4: not yet min_pairs
    measured.observe(1, drafted=True, seconds=0.12, predicted=0.5, accepted=0.3)
    assert measured.ratio(1) == pytest.approx(1.3 / 0.12 / 10.0)
    # batch sizes 4-7 are another class: nothing measured there
    assert measured.ratio(4) is None
    for batch in (4, 7, 5):
        measured.observe(batch, drafted=False, seconds=0.2)
        measured.observe(batch, drafted=True, seconds=0.3, predicted=batch / 3, accepted=batch / 5)
    assert measured.ratio(6) == pytest.approx((1 + 0.6 / 3) / 1.5)
    assert measured.ratio(1) > 1.0  # the classes' seconds do not mix


def test_measured_goodput_follows_recent_steps():
    measured = MeasuredGoodput(min_steps=1, decay=0.5, request_decay=0.5, min_pairs=0.5)
    measured.observe(1, drafted=False, seconds=0.1)
    for _ in range(4):
        measured.observe(1, drafted=True, seconds=0.2, predicted=0.5, accepted=0)  # drafts all rejected
    assert measured.ratio(1) == pytest.approx(0.5)
    for _ in range(12):  # then accepted, and drafted steps as fast as the undrafted one
        measured.observe(1, drafted=True, seconds=0.1, predicted=0.5, accepted=0.5)
    assert measured.ratio(1) == pytest.approx(1.5 / 2.0, rel=1e-3)  # the seconds: not until compared again
    for _ in range(4):
        measured.observe(1, drafted=False, seconds=0.1)
        for _ in range(4):
            measured.observe(1, drafted=True, seconds=0.1, predicted=0.5, accepted=0.5)
    assert measured.ratio(1) == pytest.approx(1.5, rel=0.02)


def test_measured_seconds_are_compared_with_their_neighbours():
    """The machine slows down twofold over 800 steps while echo drafts, one undrafted step in
    16: compared with its neighbours, each undrafted step gives the ratio of the two choices'
    seconds as it is (a mean of the undrafted steps would be as old as they are); a change
    of one choice alone shows once the other one is taken again."""
    measured = MeasuredGoodput(min_steps=4, decay=0.9, request_decay=0.99)
    for step in range(800):
        slower = 1.0 + step / 800
        if step % 16 == 0:
            measured.observe(1, drafted=False, seconds=0.10 * slower)
        else:
            measured.observe(1, drafted=True, seconds=0.12 * slower, predicted=0.5, accepted=0.3)
    assert measured.ratio(1) == pytest.approx(1.3 / 1.2, rel=0.01)
    for _ in range(15):
        measured.observe(1, drafted=True, seconds=0.24, predicted=0.5, accepted=0.3)  # drafting turns dear
    assert measured.ratio(1) > 1.0
    for _ in range(8):
        measured.observe(1, drafted=False, seconds=0.2)
        for _ in range(15):
            measured.observe(1, drafted=True, seconds=0.48, predicted=0.5, accepted=0.3)
    assert measured.ratio(1) < 0.8


def test_measured_acceptance_settles_by_requests_and_seconds_by_steps():
    """At batch 1 a drafted step accepts 0 or 1 drafts as one request's luck has it: a run of
    misses must not turn the choice, while a slower pass shows within a few dozen steps. At batch 64
    one step is 64 draws: the acceptance follows the latest steps."""
    measured = MeasuredGoodput(min_steps=4, decay=0.9, request_decay=0.99)
    for step in range(300):
        measured.observe(1, drafted=False, seconds=0.100)
        measured.observe(1, drafted=True, seconds=0.110, predicted=0.5, accepted=1 if step % 10 < 3 else 0)
    assert measured.ratio(1) == pytest.approx(1.3 / 1.1, rel=0.02)
    for _ in range(8):  # eight misses in a row (p = 0.06 at 30 % acceptance)
        measured.observe(1, drafted=True, seconds=0.110, predicted=0.5, accepted=0)
    assert measured.ratio(1) > 1.1
    for _ in range(16):  # drafted steps turn slower
        measured.observe(1, drafted=False, seconds=0.100)
        measured.observe(1, drafted=True, seconds=0.150, predicted=0.5, accepted=0)
    assert measured.ratio(1) < 1.0
    for _ in range(8):
        measured.observe(64, drafted=False, seconds=0.3)
        measured.observe(64, drafted=True, seconds=0.33, predicted=32.0, accepted=19.2)
    measured.observe(64, drafted=True, seconds=0.33, predicted=32.0, accepted=0)
    earlier = sum(0.99 ** (64 * k) for k in range(1, 9))  # the 8 steps before, decayed
    assert measured.accepted_share() == pytest.approx(0.6 * earlier / (earlier + 1.0), rel=0.01)


def test_accepted_share_of_the_batch_weighs_its_requests_own_records():
    measured = MeasuredGoodput(own_decay=1.0, prior_drafts=2.0)
    measured.observe(1, drafted=True, seconds=0.1, predicted=10.0, accepted=3.0)  # pooled share 0.3
    measured.observe_requests({"new": (4.0, 4.0)})
    assert measured.accepted_share() == pytest.approx(0.3)  # no batch yet: the pooled share
    measured.set_batch(["new"])
    assert measured.accepted_share() == pytest.approx((4 + 2 * 0.3) / (4 + 2))  # the worked example
    measured.set_batch(["other"])  # "new" finished: its record is gone, "other" has none
    assert measured.accepted_share() == pytest.approx(0.3) and measured.own == {}


def test_a_request_the_draft_suits_is_not_judged_by_the_requests_before_it():
    # Batch size 1: requests on which the draft is three times too confident stop drafting;
    # the next request's explorations, all accepted, bring its drafting back within a few.
    measured = MeasuredGoodput(min_steps=4, decay=0.9, request_decay=0.99)
    measured.set_batch(["code"])
    for _ in range(100):
        measured.observe(1, drafted=False, seconds=0.05)
        measured.observe(1, drafted=True, seconds=0.08, predicted=1.5, accepted=0.5)
        measured.observe_requests({"code": (1.5, 0.5)})
    assert measured.ratio(1) < 1.0
    measured.set_batch(["chat"])
    explorations = 0
    while measured.ratio(1) < 1.0:
        measured.observe(1, drafted=True, seconds=0.08, predicted=1.5, accepted=1.5)
        measured.observe_requests({"chat": (1.5, 1.5)})
        explorations += 1
    assert explorations <= 3
    pooled = MeasuredGoodput(min_steps=4, decay=0.9, request_decay=0.99)  # without a batch: pooled only
    for _ in range(100):
        pooled.observe(1, drafted=False, seconds=0.05)
        pooled.observe(1, drafted=True, seconds=0.08, predicted=1.5, accepted=0.5)
    for _ in range(3):
        pooled.observe(1, drafted=True, seconds=0.08, predicted=1.5, accepted=1.5)
    assert pooled.ratio(1) < 1.0


def test_measured_acceptance_is_pooled_over_batch_classes():
    """A few drafted steps at batch 4 that accepted nothing are bad luck, not a measurement:
    the share of predicted drafts accepted comes from every class's steps, while each class
    keeps its own prediction per request and its own seconds."""
    measured = MeasuredGoodput(min_steps=2, decay=0.9, request_decay=0.99)
    for step in range(200):
        measured.observe(1, drafted=True, seconds=0.06, predicted=0.5, accepted=step % 2)
        measured.observe(1, drafted=False, seconds=0.05)
    for _ in range(3):
        measured.observe(4, drafted=False, seconds=0.06)
        measured.observe(4, drafted=True, seconds=0.065, predicted=1.2, accepted=0)
    share = measured.accepted_share()
    assert 0.9 < share < 1.0
    assert measured.ratio(4) == pytest.approx((1 + share * 0.3) * 0.06 / 0.065)
    assert measured.ratio(4) > 1.0
    assert measured.ratio(1) == pytest.approx((1 + share * 0.5) * 0.05 / 0.06)


def test_latest_cost_worked_example():
    """A drafted exploration among undrafted steps: what it cost beyond undrafted steps
    committing as many tokens, in undrafted steps."""
    measured = MeasuredGoodput(min_steps=4, decay=1.0, request_decay=1.0)
    for _ in range(4):
        measured.observe(64, drafted=False, seconds=0.3)
    assert measured.latest_cost(64, drafted=True) == 0.0  # no drafted step yet
    measured.observe(64, drafted=True, seconds=0.45, predicted=12.8, accepted=12.8)
    assert measured.ratio(64) is None  # drafting step after step: not yet measured
    assert measured.latest_cost(64, drafted=True) == pytest.approx((0.45 - 0.36) / 0.3)  # one step suffices
    assert measured.latest_cost(64, drafted=False) == 0.0  # drafting not measured: min_steps
    assert measured.latest_cost(32, drafted=True) == 0.0  # another class


def test_latest_cost_takes_the_latest_step_at_its_choices_mean_tokens():
    """At batch 1 most drafted steps accept nothing: such a step, as fast as the others, costs
    nothing; a slow one does, and a fast one costs nothing (not less than nothing)."""
    measured = MeasuredGoodput(min_steps=2, decay=1.0, request_decay=1.0)
    for _ in range(4):
        measured.observe(1, drafted=False, seconds=0.05)
        measured.observe(1, drafted=True, seconds=0.06, predicted=1.0, accepted=1)
    measured.observe(1, drafted=True, seconds=0.06, predicted=1.0, accepted=0)
    assert measured.latest_cost(1, drafted=True) == 0.0  # 1.8 tokens' worth of undrafted steps: 0.09 s
    measured.observe(1, drafted=True, seconds=0.18, predicted=1.0, accepted=0)
    assert measured.latest_cost(1, drafted=True) == pytest.approx((0.18 - 0.05 * 10.0 / 6) / 0.05)
    # an undrafted step among drafted ones, against drafting's 10 tokens in 0.48 s
    measured.observe(1, drafted=False, seconds=0.1)
    assert measured.latest_cost(1, drafted=False) == pytest.approx((0.1 - 0.48 / 10.0) / (0.48 / 6))
