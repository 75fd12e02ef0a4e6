"""Echo's batch policy: what one step drafts, for the whole batch.

Per step, before drafting, `decide` says whether the step is worth drafting at all (echo
with the auto budget drafts only where speculation is measured or expected to pay at that
batch size), how deep to draft, and which per-request gate to apply; after the batch's
candidate pools are grown, `budget` says how many draft tokens the target verifies in all
(the elastic budget, core.budget: go deep, then wide). The policy learns from what it is
told: the target passes' times (`observe_pass`), the drafting times it clocks
itself, and how many drafts the target accepted (`observe_acceptance`).

Time comes from an injected clock and rank agreement from an injected `share` function, so
the decisions can be tested with scripted timings (tests/scheduler_patches/test_batch_policy.py).
Nothing here touches vLLM.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

from echo_vllm.config import EchoConfig
from echo_vllm.core.budget import (
    AcceptanceCurve,
    CostModel,
    Exploration,
    LinearCost,
    MeasuredGoodput,
    goodput_budget,
    speculation_pays,
)
from echo_vllm.core.gating import GrowthPolicy, ddd_policy, echo_policy, opt_tree_policy, static_policy
from echo_vllm.stats import EchoCounters

# How far elastic depth and width look back: the widest level bought in the last ELASTIC_WINDOW
# steps sets the frontier width drafted next, a depth's purchases in the last ELASTIC_WINDOW
# steps that drafted it decide whether it is drafted next, and one bought step in
# ELASTIC_WINDOW probes a depth deeper and a node wider.
ELASTIC_WINDOW = 8
# A depth past the first is drafted while the last step that drafted it bought a node there, or
# at least this share of the last ELASTIC_WINDOW steps that drafted it did: the budget buys a
# deep node only where it pays for that depth's drafting, but every step drafting that depth
# pays for it, bought or not.
DEPTH_KEPT_SHARE = 0.5
# Drafted steps measured (drafting time, acceptance) before echo may decide that a step is
# not worth drafting: its estimates must not rest on the first, noisiest steps, since steps
# it does not draft measure nothing about drafting.
MIN_DRAFTED_STEPS = 32
# Steps in a row of one choice (draft or not) after which one step takes the other
# (core.budget.Exploration): at least 16, at most 1024, and as many as keep what exploring
# costs to 1 % of the steps' time.
EXPLORATION_INTERVAL = 16
MAX_EXPLORATION_INTERVAL = 1024
MAX_EXPLORATION_SHARE = 0.01

Share = Callable[[list[float]], list[float]]  # rank 0's values on every tensor-parallel rank


@dataclass(frozen=True)
class StepPlan:
    """What one step drafts."""

    draft: bool  # False: the step drafts nothing (it writes only its rows' draft KV)
    depths: int  # draft depths to grow (elastic depth: from 1 to `max_depth`)
    width: int  # frontier nodes per depth and children per node (elastic width: may be below `topk`)
    gate: GrowthPolicy  # the per-request gate
    recording: bool  # calibrating: record gate statistics, whole trees, no budget
    spends_budget: bool  # a batch-wide budget selects the verified nodes (else each request's best)
    exploring: bool  # drafting although not drafting was expected to be better


@dataclass(frozen=True)
class _DraftingCall:
    """One step's drafting decision, timed."""

    called: float  # clock at the decision
    seconds: float  # drafting's own time (the decision and drafting, or writing the draft KV)
    req_ids: frozenset[str]
    drafted: bool


class BatchPolicy:
    """Echo's per-step decisions for the batch and the measurements behind them."""

    def __init__(self, config: EchoConfig, counters: EchoCounters, share: Share,
                 clock: Callable[[], float] = time.perf_counter):
        self.config = config
        self.counters = counters
        self.share = share
        self.clock = clock
        self.gate = growth_policy(config)
        # echo without a gate calibrates one online over its first verification steps
        # (scheduler_patches/gate_calibration.py); `calibrated` switches it on
        self.recording = config.calibration_steps is not None
        # The auto budget's inputs: the target pass cost model (measured at start-up, refined
        # each pass), the drafting time per step by batch size, and the acceptance per request.
        self.cost_model: CostModel | None = None
        self.draft_cost = LinearCost()
        # Drafting seconds against the depths drafted, per batch-size class: what one more
        # depth costs, which the budget weighs against what that depth's nodes are expected
        # to add (elastic depth then drafts only depths that pay). Every drafted step gives
        # two points: its whole drafting at the depth it reached, and the same less the time
        # it spent growing past depth 1 (`grew`) at depth 1. So the slope is measured at
        # whatever depth echo drafts: were it fit to whole steps alone, a budget that always
        # drafts as deep would never see what a shallower step saves, and would go on buying
        # the deep nodes that keep it deep.
        self.draft_depth_costs: dict[int, LinearCost] = {}
        self._grown = (0, 0.0)  # the current step's depths grown past depth 1, and their seconds
        # The rest of a step's time, by batch size: scheduling, input preparation, output
        # processing (the time between two drafting calls, less the drafting and the target
        # pass between them).
        self.step_overhead = LinearCost()
        self.acceptance_curve = AcceptanceCurve(config.num_draft_tokens - 1, config.max_depth)
        self.last_pass_seconds: float | None = None
        self.last_budget: int | None = None
        # what drafted and undrafted steps really gave, and the steps that take the choice
        # not expected to be better so that both measurements stay current
        self.measured_goodput = MeasuredGoodput()
        # per batch-size class, as the measurements are: a batch filling up or draining passes
        # through smaller classes, whose choices must not restart the wait of the full batch's
        self.explorations: dict[int, Exploration] = {}
        self.max_exploration_share = MAX_EXPLORATION_SHARE
        # None: decide each step; True / False: every step drafts / does not (for benchmarks
        # that measure one choice alone, and tests)
        self.forced_choice: bool | None = None
        # Elastic depth and width: draft the depths the budget kept buying where they were
        # drafted (DEPTH_KEPT_SHARE), and a frontier as wide as the most nodes it bought at one
        # depth of one request in recent steps, so a tight budget stops paying for drafts it
        # never verifies (a budget that buys one path drafts a chain, at a chain's cost). One
        # step in ELASTIC_WINDOW drafts a depth deeper and a node wider (a probe), so an ample
        # budget can show it would buy more: trees grow back to `topk` wide, and from `steps`
        # deep (where they start) to `max_depth`.
        self.bought_where_drafted: dict[int, deque[bool]] = {
            depth: deque(maxlen=ELASTIC_WINDOW) for depth in range(2, config.max_depth + 1)}
        self.recent_bought_widths: deque[int] = deque(maxlen=ELASTIC_WINDOW)
        self.num_bought_steps = 0
        self._verified_since_decision = (0.0, 0)  # predicted, accepted drafts
        self._last_call: _DraftingCall | None = None
        self._called: float | None = None  # clock at the current step's decision

    # ---- what the policy is -----------------------------------------------------------

    def spends_budget(self) -> bool:
        """Echo with a batch-wide budget (fixed or auto), not while calibrating."""
        return self.gate.name == "echo" and self.config.budget is not None and not self.recording

    def auto_budget(self) -> bool:
        """Echo spending a budget it sets itself, and deciding which steps to draft."""
        return self.spends_budget() and self.config.budget == "auto"

    def draft_seconds(self, batch: int) -> float:
        """Expected seconds to draft a step of `batch` requests (0 before any was timed)."""
        return self.draft_cost(batch) or 0.0

    def drafting_seconds(self, batch: int, node_depths: torch.Tensor) -> torch.Tensor:
        """[M + 1] expected seconds to draft a step of `batch` requests as deep as the first G
        of nodes at `node_depths` [M] (in allocation order) reach, G = 0..M (at least depth 1:
        drafting at all is the step decision's business, not the budget's)."""
        deepest = torch.cat([torch.ones(1, dtype=torch.int64), node_depths.cpu().long().cummax(0).values.clamp(min=1)])
        depth_cost = self.draft_depth_costs.get(batch.bit_length())
        if depth_cost is None:  # no step of this class drafted yet
            return torch.full(deepest.shape, self.draft_seconds(batch), dtype=torch.float64)
        by_depth = torch.tensor([depth_cost(d) for d in range(int(deepest[-1]) + 1)], dtype=torch.float64)
        return by_depth[deepest]

    def step_seconds_besides_drafting(self, batch: int) -> float:
        """Expected seconds of a step of `batch` requests outside the target pass and drafting."""
        return self.step_overhead(batch) or 0.0

    # ---- the step's decisions ---------------------------------------------------------

    def decide(self, req_ids: list[str]) -> StepPlan:
        """The plan of the step whose drafts `req_ids` (batch order) are about to get."""
        self._called = self.clock()
        self._observe_previous_step(self._called, req_ids)
        self.measured_goodput.set_batch(req_ids)
        draft, exploring = self._speculation_pays(len(req_ids))
        depths, width = self._shape_to_draft()
        return StepPlan(draft, depths, width, self.gate, self.recording, self.spends_budget(), exploring)

    def grew(self, depths: int, seconds: float) -> None:
        """The step's drafting grew `depths` depths past depth 1 in `seconds` (its clock)."""
        self._grown = (depths, seconds)

    def drafted(self, plan: StepPlan, req_ids: list[str]) -> None:
        """The step's drafting is done (its drafts reached the host)."""
        now = self.clock()
        grown, growing_seconds = self._grown
        self._grown = (0, 0.0)
        if plan.draft:
            drafting = now - self._called
            self.draft_cost.observe(len(req_ids), drafting)
            batch_class = len(req_ids).bit_length()
            if batch_class not in self.draft_depth_costs:  # not setdefault: that would build one every step
                self.draft_depth_costs[batch_class] = LinearCost()
            depth_costs = self.draft_depth_costs[batch_class]
            depth_costs.observe(1 + grown, drafting)
            if grown:
                depth_costs.observe(1, drafting - growing_seconds)
        else:
            self.counters.num_undrafted_steps += 1
        self._last_call = _DraftingCall(self._called, now - self._called, frozenset(req_ids), plan.draft)

    def budget(self, plan: StepPlan, node_values: torch.Tensor | None, node_depths: torch.Tensor | None,
               batch: int) -> int | None:
        """Draft tokens the batch verifies (None: every node the requests' caps allow).
        node_values, node_depths [M]: the pool nodes' path probabilities and draft depths, in
        allocation order (the auto budget's inputs; None for a fixed budget)."""
        budget = self.config.budget
        if budget == "auto":
            values = self.acceptance_curve.calibrated(node_values, node_depths)
            self.acceptance_curve.observe(values, batch)
            self.counters.num_drafted_steps += 1
            # no cost model yet (start-up passes): every node the caps allow
            budget = None if self.cost_model is None else goodput_budget(
                values, batch, self.cost_model,
                self.drafting_seconds(batch, node_depths) + self.step_seconds_besides_drafting(batch))
            if budget is not None and plan.exploring:
                budget = max(budget, batch)  # measure at least one draft per request
            (shared,) = self.share([-1 if budget is None else budget])
            budget = None if shared < 0 else int(shared)
        self.last_budget = budget
        if budget is not None:
            self.counters.budget_sum += budget
            self.counters.num_budgeted_steps += 1
        return budget

    def bought(self, drafted_depths: int, deepest: int, widest: int) -> None:
        """The step drafted `drafted_depths` depths; its budget bought nodes as deep as `deepest`
        and at most `widest` at one depth of one request (elastic depth and width)."""
        for depth in range(2, drafted_depths + 1):
            self.bought_where_drafted[depth].append(deepest >= depth)
        self.recent_bought_widths.append(widest)
        self.num_bought_steps += 1

    # ---- what it learns ---------------------------------------------------------------

    def observe_pass(self, tokens: int, seconds: float) -> None:
        """A target pass over `tokens` tokens took `seconds`, sampling included."""
        if self.cost_model is not None:
            self.cost_model.observe(tokens, seconds)
            self.last_pass_seconds = seconds

    def observe_acceptance(self, verified: dict[str, tuple[list[float], int]]) -> None:
        """One verification of trees echo drafted: per request, the summed path probabilities
        of its verified draft nodes by depth (1, 2, ...) and how many drafts the target accepted."""
        depths = self.config.max_depth
        predicted_by_depth = [sum(p[d] for p, _ in verified.values() if d < len(p)) for d in range(depths)]
        accepted_by_depth = [sum(a > d for _, a in verified.values()) for d in range(depths)]
        self.acceptance_curve.observe_verified(predicted_by_depth, accepted_by_depth)
        self.measured_goodput.observe_requests({req_id: (sum(p), a) for req_id, (p, a) in verified.items()})
        predicted = sum(sum(p) for p, _ in verified.values())
        accepted = sum(a for _, a in verified.values())
        self._verified_since_decision = (self._verified_since_decision[0] + predicted,
                                         self._verified_since_decision[1] + accepted)

    def calibrated(self, gate: GrowthPolicy) -> None:
        """The gate chosen by calibration: gating on, recording off."""
        self.gate = gate
        self.recording = False

    def _observe_previous_step(self, now: float, req_ids: list[str]) -> None:
        """What the previous drafting decision led to, timed up to `now`: the step's other
        work (the time less that call and the target pass since), when requests ran through
        (no idle engine in between); and the step's goodput under that decision, when the
        same requests ran through (no prefill of a new one in the pass)."""
        (predicted, accepted), self._verified_since_decision = self._verified_since_decision, (0.0, 0)
        last = self._last_call
        if last is None:
            return
        if self.last_pass_seconds is not None and not last.req_ids.isdisjoint(req_ids):
            self.step_overhead.observe(len(req_ids), now - last.called - last.seconds - self.last_pass_seconds)
        if last.req_ids == frozenset(req_ids):
            self.measured_goodput.observe(len(req_ids), last.drafted, now - last.called, predicted, accepted)

    def _speculation_pays(self, batch: int) -> tuple[bool, bool]:
        """(draft this step, exploring). Echo with the auto budget drafts a step only when
        speculation is expected to beat a plain step at this batch size: as measured
        (core.budget.MeasuredGoodput) once drafted and undrafted steps were both measured at
        this batch size, as its model predicts (core.budget.speculation_pays) before. Until the
        target's cost model is measured and MIN_DRAFTED_STEPS steps were drafted, it drafts;
        and now and then a step takes the other choice (core.budget.Exploration). The same
        decision on every rank."""
        if self.forced_choice is not None:
            return self.forced_choice, False
        if not (self.auto_budget() and self.cost_model is not None
                and self.counters.num_drafted_steps >= MIN_DRAFTED_STEPS):
            return True, False
        measured = self.measured_goodput
        ratio = measured.ratio(batch)
        pays = (ratio >= 1.0 if ratio is not None else
                speculation_pays(batch, self.acceptance_curve, self.cost_model, self.draft_cost(batch),
                                 self.step_seconds_besides_drafting(batch)))
        # What the latest exploration cost sets the wait for the next one.
        cost = measured.latest_cost(batch, drafted=not pays)
        shared_pays, shared_cost = self.share([float(pays), cost])
        shared_pays = bool(shared_pays)
        exploration = self.explorations.get(batch.bit_length())
        if exploration is None:  # not setdefault: that would build one every step
            exploration = self.explorations[batch.bit_length()] = Exploration(
                EXPLORATION_INTERVAL, MAX_EXPLORATION_INTERVAL, self.max_exploration_share)
        explore = exploration.due(shared_pays, shared_cost)
        self.counters.num_exploration_steps += explore
        return shared_pays != explore, explore and not shared_pays

    def _shape_to_draft(self) -> tuple[int, int]:
        """(depths, width): `steps` and `topk`, or with a budget the depths it kept buying
        (DEPTH_KEPT_SHARE) and the widest level bought lately (at least 1), one more of each
        on a probe step: trees start `steps` deep and grow past it by probes, up to
        `max_depth`. A fixed budget of G drafts per step never buys a node deeper, or a level
        wider, than G."""
        steps, max_depth, topk, budget = self.config.steps, self.config.max_depth, self.config.topk, self.config.budget
        if not self.spends_budget():
            return steps, topk
        if budget != "auto":
            steps, max_depth, topk = min(steps, budget), min(max_depth, budget), min(topk, budget)
        if not self.num_bought_steps:  # nothing bought yet: the whole starting shape
            return steps, topk
        depths = 1  # a budget that bought nothing still leaves one depth-1 draft to value
        while depths < max_depth and self._depth_kept(depths + 1, steps):
            depths += 1
        probe = int(self.num_bought_steps % ELASTIC_WINDOW == 0)
        return min(max_depth, depths + probe), min(topk, max(1, *self.recent_bought_widths) + probe)

    def _depth_kept(self, depth: int, steps: int) -> bool:
        """Whether the steps that drafted `depth` lately bought a node there often enough to
        draft it again; while none drafted it yet, whether it is in the starting shape (`steps`
        deep): a deeper one is drafted first by a probe."""
        record = self.bought_where_drafted[depth]
        if not record:
            return depth <= steps
        return record[-1] or sum(record) >= DEPTH_KEPT_SHARE * len(record)

    def stats(self) -> dict:
        """The policy as it stands (gate, budget, the inputs of its decisions)."""
        gate, curve = self.gate, self.acceptance_curve
        return {
            "policy": gate.name,
            "gate_statistic": gate.statistic if gate.name == "echo" else None,
            "judge_depth": list(gate.check_depths),
            "threshold": list(gate.thresholds),
            "remaining_num_draft_tokens": gate.stopped_num_draft_tokens,
            "budget": self.config.budget,
            "acceptance_curve": None if curve.gains_per_request is None else {
                "drafts_per_request": curve.grid.tolist(),
                "accepted_per_request": curve.gains_per_request.tolist()},
            "accepted_per_predicted_by_depth": curve.scales.tolist(),
            "cost_model": None if self.cost_model is None else self.cost_model.to_dict(),
        }


def growth_policy(config: EchoConfig) -> GrowthPolicy:
    """The per-request policy the config names (echo_vllm.core.gating)."""
    if config.policy == "ddd":
        return ddd_policy(config.num_draft_tokens, config.judge_depth, config.threshold[0])
    if config.policy == "opt_tree":
        return opt_tree_policy(config.num_draft_tokens, config.steps, config.threshold[0])
    if config.policy == "echo":  # without judge depths (online calibration): no gate yet
        return echo_policy(config.num_draft_tokens, config.judge_depth, config.threshold,
                           config.remaining_num_draft_tokens or config.num_draft_tokens, config.gate_statistic)
    return static_policy(config.num_draft_tokens)

