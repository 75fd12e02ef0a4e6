"""The batch policy's decisions under scripted timings: a fake clock and scripted passes, no
engine, no machine timing (echo_vllm/scheduler_patches/batch_policy.py)."""

import dataclasses

import torch

from echo_vllm.config import parse_echo_config
from echo_vllm.core.budget import CostModel
from echo_vllm.scheduler_patches.batch_policy import (
    EXPLORATION_INTERVAL,
    MIN_DRAFTED_STEPS,
    BatchPolicy,
)
from echo_vllm.stats import EchoCounters

ECHO_AUTO = {"method": "echo", "model": "head", "steps": 3, "topk": 2, "num_draft_tokens": 5,
             "judge_depth": 1, "threshold": 0.0}


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_policy(options=ECHO_AUTO, share=lambda values: values):
    clock = FakeClock()
    policy = BatchPolicy(parse_echo_config(options), EchoCounters(), share=share, clock=clock)
    policy.cost_model = CostModel([1, 8, 64], [0.010, 0.010, 0.012])
    return policy, clock


def run_step(policy, clock, batch, draft_s, accepted_per_request, pass_s=0.010):
    """One engine step as the drafter and the runner report it: the decision, drafting (or
    writing the step's draft KV), the target pass, and its acceptance. Returns the plan."""
    req_ids = [f"r{i}" for i in range(batch)]
    plan = policy.decide(req_ids)
    if plan.draft:
        clock.now += draft_s
        policy.budget(plan, torch.full((batch * 4,), 0.5), torch.ones(batch * 4, dtype=torch.int64), batch)
    else:
        clock.now += 0.0001
    policy.drafted(plan, req_ids)
    clock.now += pass_s
    policy.observe_pass(batch * (5 if plan.draft else 1), pass_s)
    if plan.draft:
        policy.observe_acceptance({req_id: ([0.5], accepted_per_request) for req_id in req_ids})
    return plan


def test_drafts_the_first_steps_whatever_it_expects():
    policy, clock = make_policy()
    plans = [run_step(policy, clock, 1, draft_s=0.050, accepted_per_request=0) for _ in range(MIN_DRAFTED_STEPS)]
    assert all(plan.draft for plan in plans)
    assert policy.counters.num_drafted_steps == MIN_DRAFTED_STEPS


def test_a_head_that_never_pays_stops_drafting_but_explores_every_interval():
    policy, clock = make_policy()
    policy.max_exploration_share = 0.99  # the wait stays at its floor: EXPLORATION_INTERVAL
    plans = [run_step(policy, clock, 1, draft_s=0.020, accepted_per_request=0) for _ in range(400)]
    after_warm_up = [plan.draft for plan in plans[MIN_DRAFTED_STEPS:]]
    # not drafting from the first decision on; then one drafted step after every
    # EXPLORATION_INTERVAL undrafted ones in a row
    expected = ([False] * EXPLORATION_INTERVAL + [True]) * (len(after_warm_up) // (EXPLORATION_INTERVAL + 1) + 1)
    assert after_warm_up == expected[: len(after_warm_up)]
    counters = policy.counters
    assert counters.num_exploration_steps == after_warm_up.count(True)
    assert counters.num_undrafted_steps == after_warm_up.count(False)
    assert all(plan.exploring == plan.draft for plan in plans[MIN_DRAFTED_STEPS:])


def test_dear_explorations_wait_longer():
    policy, clock = make_policy()  # default share: exploring may cost 1 % of the steps
    plans = [run_step(policy, clock, 1, draft_s=0.020, accepted_per_request=0) for _ in range(2000)]
    explorations = [i for i, plan in enumerate(plans[MIN_DRAFTED_STEPS:]) if plan.draft]
    gaps = [b - a for a, b in zip(explorations, explorations[1:])]
    # a drafted step costs 2 undrafted ones more than the one it replaces: the wait is
    # about 2 / 0.01 = 200 steps, not EXPLORATION_INTERVAL
    assert explorations[0] > 150
    assert gaps and all(gap > 150 for gap in gaps), gaps


def test_a_head_that_pays_keeps_drafting_and_explores_undrafted_steps():
    policy, clock = make_policy()
    policy.max_exploration_share = 0.99
    plans = [run_step(policy, clock, 1, draft_s=0.002, accepted_per_request=1.0) for _ in range(200)]
    after_warm_up = plans[MIN_DRAFTED_STEPS:]
    undrafted = [i for i, plan in enumerate(after_warm_up) if not plan.draft]
    assert len(undrafted) >= 3 and all(b - a == EXPLORATION_INTERVAL + 1 for a, b in zip(undrafted, undrafted[1:]))
    assert not any(plan.exploring for plan in after_warm_up)  # exploring = drafting against the odds only


def test_rank_zeros_choice_wins():
    """Ranks time their own passes; every rank follows rank 0's shared decision."""
    rank_zero_drafts = lambda values: [1.0, 0.0] if len(values) == 2 else values  # noqa: E731
    policy, clock = make_policy(share=rank_zero_drafts)
    plans = [run_step(policy, clock, 1, draft_s=0.020, accepted_per_request=0) for _ in range(100)]
    # this rank measures that drafting loses, but rank 0 says it pays: it drafts, exploring
    # (not drafting) once per interval
    after_warm_up = [plan.draft for plan in plans[MIN_DRAFTED_STEPS:]]
    assert after_warm_up.count(False) == len(after_warm_up) // (EXPLORATION_INTERVAL + 1)


def test_forced_choice_overrides_the_decision():
    policy, clock = make_policy()
    policy.forced_choice = False
    assert not any(run_step(policy, clock, 4, 0.0, 1.0).draft for _ in range(10))
    policy.forced_choice = True
    assert all(run_step(policy, clock, 4, 0.5, 0.0).draft for _ in range(10))
    assert policy.counters.num_exploration_steps == 0


def test_exploring_buys_at_least_one_draft_per_request():
    policy, _ = make_policy()
    policy.cost_model = CostModel([1, 8, 64], [0.01, 0.08, 0.64])  # every verified token costs
    plan = policy.decide(["a", "b", "c"])
    exploring = dataclasses.replace(plan, exploring=True)
    # node values so low that the goodput budget buys nothing
    assert policy.budget(plan, torch.full((12,), 1e-6), torch.ones(12, dtype=torch.int64), 3) == 0
    assert policy.budget(exploring, torch.full((12,), 1e-6), torch.ones(12, dtype=torch.int64), 3) == 3
    assert policy.counters.num_budgeted_steps == 2 and policy.counters.budget_sum == 3


def test_a_deeper_node_pays_for_its_depths_drafting():
    policy, clock = make_policy({**ECHO_AUTO, "topk": 1, "num_draft_tokens": 4})
    policy.cost_model = CostModel([1, 64], [0.010, 0.010])  # verifying more tokens is free
    for _ in range(9):  # every step drafts 3 deep; drafting takes 2 ms a depth
        plan = dataclasses.replace(policy.decide(["a"]), depths=3)
        clock.now += 0.002
        policy.grew(2, 0.004)  # the drafter grew depths 2 and 3 in 4 ms
        clock.now += 0.004
        policy.drafted(plan, ["a"])
        clock.now += 0.010
    plan = policy.decide(["a"])
    depths = torch.tensor([1, 2, 3])
    # goodput by budget: 1 / .012, 1.9 / .012, 2.4 / .014 = 171, 2.45 / .016 = 153: depth 3 does
    # not pay for its drafting although verifying it is free, though no step drafted shallower
    assert policy.budget(plan, torch.tensor([0.9, 0.5, 0.05]), depths, 1) == 2
    assert policy.budget(plan, torch.tensor([0.9, 0.5, 0.4]), depths, 1) == 3  # 2.8 / .016 = 175


def test_static_policy_always_drafts_every_depth_without_a_budget():
    policy, clock = make_policy({"method": "echo", "model": "head", "steps": 3, "policy": "static"})
    plans = [run_step(policy, clock, 2, draft_s=1.0, accepted_per_request=0) for _ in range(50)]
    assert all(plan.draft and plan.depths == 3 and not plan.spends_budget for plan in plans)


def test_elastic_depth_and_width_follow_what_the_budget_bought():
    policy, _ = make_policy({**ECHO_AUTO, "topk": 4, "num_draft_tokens": 9})
    plan = policy.decide(["a"])
    assert (plan.depths, plan.width) == (3, 4)  # nothing bought yet: the whole shape
    for _ in range(3):  # steps drafting 3 deep whose budget buys one node, one path
        policy.bought(3, deepest=1, widest=1)
    plan = policy.decide(["a"])
    assert (plan.depths, plan.width) == (1, 1)  # a chain of one
    for _ in range(5):
        policy.bought(1, deepest=1, widest=1)
    # every ELASTIC_WINDOW-th step probes one deeper and one wider
    assert policy.num_bought_steps == 8
    plan = policy.decide(["a"])
    assert (plan.depths, plan.width) == (2, 2)
    policy.bought(2, deepest=2, widest=1)  # the probe's budget bought depth 2: drafted again
    plan = policy.decide(["a"])
    assert (plan.depths, plan.width) == (2, 1)
    policy.bought(2, deepest=1, widest=1)  # not bought there, and in 1 of the 5 steps that drafted it
    plan = policy.decide(["a"])
    assert (plan.depths, plan.width) == (1, 1)
    for _ in range(8):  # a budget that buys nothing: one depth-1 draft is still valued
        policy.bought(1, deepest=0, widest=0)
    plan = policy.decide(["a"])
    assert (plan.depths, plan.width) == (1, 1)


def test_a_depth_stays_drafted_while_half_the_steps_drafting_it_buy_there():
    # 3 drafts a request: trees never grow past 3 deep, so a probe adds no depth here
    policy, _ = make_policy({**ECHO_AUTO, "topk": 4, "num_draft_tokens": 4})
    for _ in range(4):
        policy.bought(3, deepest=3, widest=3)
    assert (policy.decide(["a"]).depths, policy.decide(["a"]).width) == (3, 3)
    for _ in range(4):  # depth 3 no longer bought, in 4 of the last 8 steps that drafted it
        policy.bought(3, deepest=2, widest=1)
        assert policy.decide(["a"]).depths == 3
    policy.bought(3, deepest=2, widest=1)  # 3 of the last 8: depth 3 is no longer drafted
    plan = policy.decide(["a"])
    # (no probe; the width is still the widest level bought in the last 8 steps)
    assert policy.num_bought_steps % 8 != 0 and (plan.depths, plan.width) == (2, 3)


def test_trees_grow_past_their_starting_depth_by_probes_up_to_a_chain_of_every_draft():
    # trees start 3 deep; 5 drafts a request: a budget spending depth first may reach 5
    policy, _ = make_policy({**ECHO_AUTO, "num_draft_tokens": 6})
    assert policy.config.max_depth == 5
    assert (policy.decide(["a"]).depths, policy.decide(["a"]).width) == (3, 2)  # nothing bought yet
    for _ in range(7):  # a path bought 3 deep: depth 4 was never drafted, so it waits for a probe
        policy.bought(3, deepest=3, widest=1)
    assert (policy.decide(["a"]).depths, policy.decide(["a"]).width) == (3, 1)
    policy.bought(3, deepest=3, widest=1)  # the 8th: a probe drafts 4 deep
    assert (policy.decide(["a"]).depths, policy.decide(["a"]).width) == (4, 2)
    policy.bought(4, deepest=4, widest=1)  # the probe's budget bought depth 4: kept
    assert policy.decide(["a"]).depths == 4
    for _ in range(7):
        policy.bought(4, deepest=4, widest=1)
    assert policy.decide(["a"]).depths == 5  # the next probe
    policy.bought(5, deepest=5, widest=1)
    assert policy.decide(["a"]).depths == 5
    for _ in range(7):  # a probe at the deepest a tree may grow adds no depth
        policy.bought(5, deepest=5, widest=1)
    assert policy.num_bought_steps % 8 == 0 and policy.decide(["a"]).depths == 5
    policy.bought(5, deepest=4, widest=1)  # depth 5 not bought: still drafted (last 8: 7 of 8 bought)
    assert policy.decide(["a"]).depths == 5


def test_only_echo_spending_a_budget_grows_past_steps():
    def max_depth(**options):
        return parse_echo_config({**ECHO_AUTO, "num_draft_tokens": 6, **options}).max_depth
    assert max_depth() == 5  # echo, budget auto
    assert max_depth(budget=2) == 5  # a fixed budget: capped by the budget when drafting
    assert max_depth(num_draft_tokens=3) == 3  # never shallower than steps
    # chains that start 2 deep may hold 5 drafts: they grow to 5 deep
    assert max_depth(steps=2, topk=1) == 5
    static = parse_echo_config({"method": "echo", "model": "head", "policy": "static", "steps": 3, "topk": 1,
                                "num_draft_tokens": 4})
    assert static.max_depth == 3


def test_a_fixed_budget_never_drafts_deeper_or_wider_than_it_buys():
    policy, _ = make_policy({**ECHO_AUTO, "topk": 4, "num_draft_tokens": 9, "budget": 2})
    assert (policy.decide(["a"]).depths, policy.decide(["a"]).width) == (2, 2)  # nothing bought yet
    for _ in range(8):  # a probe step is due: still no deeper, no wider than the budget reaches
        policy.bought(2, deepest=2, widest=2)
    assert policy.num_bought_steps % 8 == 0
    plan = policy.decide(["a", "b"])
    assert (plan.depths, plan.width) == (2, 2)
    policy, _ = make_policy({**ECHO_AUTO, "budget": 1})
    plan = policy.decide(["a"])
    assert (plan.depths, plan.width) == (1, 1)  # one draft a step: a chain of one


def test_step_overhead_is_the_time_outside_drafting_and_the_pass():
    policy, clock = make_policy()
    for _ in range(5):
        run_step(policy, clock, 2, draft_s=0.004, accepted_per_request=0.5)
        clock.now += 0.003  # the engine's own work between steps
    assert abs(policy.step_seconds_besides_drafting(2) - 0.003) < 1e-9
    assert abs(policy.draft_seconds(2) - 0.004) < 1e-9
