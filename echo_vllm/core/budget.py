"""The elastic budget: one verification budget per step for the whole batch (the super-tree).

The batch's candidate pools form one super-tree. A budget of G draft tokens is spent
  1. go deep: on each request's most confident path (the best node of the deepest depth it
     drafted, and its ancestors), most confident nodes first across requests;
  2. go wide: what is left on the other nodes, by cumulative score across the whole batch.
Each request stops at its cap (num_draft_tokens - 1, or less for a gated request). With a
small budget (high load) the choice is between requests; with an ample one (low load) every
request gets its path and the rest widens trees: depth against width within a request.

The budget itself follows load (auto): a cost model of the target pass (seconds for a pass
verifying T tokens, measured at start-up, refined online) and the nodes' expected acceptance
give the goodput of every G; the budget is the G with the best goodput, i.e. where one more
verified token costs more time than the tokens it is expected to buy.

Drafting itself costs time every step, whatever the budget buys. Before drafting, echo asks
whether speculation pays at all at this batch size (`speculation_pays`): the expected
acceptance per request of recent drafted steps (`AcceptanceCurve`), the target cost model and
the drafting time and the rest of a step's time (scheduling, input preparation: `LinearCost`
fits, online) give the best goodput with speculation, against the goodput of a plain step.
That model rests on estimates (passes timed at start-up, the draft's own probabilities scaled
by what was accepted at their depth); what a step really costs also depends on what the model cannot see
(other processes sharing the cores, the engine's own work between passes). So echo also
measures what each choice gave (`MeasuredGoodput`: committed tokens per second of drafted and
of undrafted steps, by batch size) and, once both choices are measured at a batch size, the
measurement decides. Now and then a step takes the other choice (`Exploration`), so that the
measurement of the choice not taken stays current and an estimate that turned pessimistic does
not stop drafting for good.

Shape key: B requests, P pool nodes per request, M = B*P, G budget (draft tokens).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import torch


def most_confident_paths(pool_scores: torch.Tensor, parent_idx: torch.Tensor, pool_depth: torch.Tensor) -> torch.Tensor:
    """[B, P] bool: each request's best node at the deepest depth it drafted, plus its ancestors.

    pool_scores [B, P] (-inf where never drafted); parent_idx [B, P] (-1 at depth 1);
    pool_depth [P]. Worked example (K=2): scores [-.1, -.9, -.5, -.2, -2, -3] at depths
    [1, 1, 2, 2, 2, 2], parents [-1, -1, 0, 0, 1, 1] -> best depth-2 node 3, path {0, 3}.
    """
    drafted = torch.isfinite(pool_scores)
    deepest = torch.where(drafted, pool_depth, 0).max(dim=1, keepdim=True).values
    at_deepest = drafted & (pool_depth == deepest)
    node = torch.where(at_deepest, pool_scores, -torch.inf).argmax(dim=1, keepdim=True)  # [B, 1]
    # walked up one depth at a time by gathers (no masked indexing: it would read each step's
    # rows back to the host); a request without drafts, or past its depth-1 node, adds 0
    on_path = torch.zeros_like(pool_scores, dtype=torch.int64)
    alive = drafted.any(dim=1, keepdim=True)
    for _ in range(int(pool_depth.max())):
        on_path.scatter_add_(1, node, alive.long())
        node = parent_idx.gather(1, node)
        alive = alive & (node >= 0)
        node = node.clamp(min=0)
    return on_path > 0


def allocation_order(pool_scores: torch.Tensor, parent_idx: torch.Tensor, pool_depth: torch.Tensor,
                     caps: torch.Tensor, path: torch.Tensor | None = None) -> torch.Tensor:
    """[L] flat indices (b * P + p) of the nodes a budget may buy, in the order it buys them:
    most-confident-path nodes first, then the rest; each group by score, then depth. Each
    request appears at most caps[b] times. Any prefix of the order is closed under parents
    (a parent is on the path whenever its child is, and scores at least as high). `path`:
    most_confident_paths of the same pool, when the caller has it already."""
    batch, pool_size = pool_scores.shape
    drafted = torch.isfinite(pool_scores)
    if path is None:
        path = most_confident_paths(pool_scores, parent_idx, pool_depth)
    group = torch.where(path, 0, torch.where(drafted, 1, 2)).flatten()
    depth = pool_depth.expand(batch, pool_size).flatten()
    order = torch.argsort(depth, stable=True)
    order = order[torch.argsort(-pool_scores.flatten()[order], stable=True)]
    order = order[torch.argsort(group[order], stable=True)]
    global_rank = torch.empty_like(order)
    global_rank[order] = torch.arange(order.numel(), device=order.device)
    rank_in_request = global_rank.view(batch, pool_size).argsort(dim=1).argsort(dim=1)
    eligible = (drafted & (rank_in_request < caps.view(batch, 1).to(pool_scores.device))).flatten()
    return order[eligible[order]]


def chain_allocation_order(pool_scores: torch.Tensor, caps: torch.Tensor) -> torch.Tensor:
    """allocation_order of chain pools (topk 1: pool position p holds the node at depth p + 1,
    child of position p - 1), in a few tensor operations. Every drafted node of a chain is on
    its request's most confident path, and its rank within the request is its position
    (scores never increase along a path): the order is the drafted nodes within each
    request's cap, by score, then depth.

    Worked example: scores [[-.1, -.4], [-.2, -inf]], caps [2, 2] -> [0, 2, 1]."""
    batch, pool_size = pool_scores.shape
    device = pool_scores.device
    position = torch.arange(pool_size, device=device)
    # flat indices (b * P + p) depth by depth, so the stable sort by score breaks ties by depth
    flat_by_depth = torch.arange(batch * pool_size, device=device).view(batch, pool_size).t().flatten()
    order = flat_by_depth[torch.argsort(-pool_scores.t().flatten(), stable=True)]
    eligible = (torch.isfinite(pool_scores) & (position < caps.view(batch, 1).to(device))).flatten()
    return order[eligible[order]]


def piecewise_linear(x: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """The line through points (xs, ys) [n >= 2, xs increasing] at x (any shape), extended
    beyond the points with the end segments' slopes."""
    right = torch.searchsorted(xs, x).clamp(1, len(xs) - 1)
    x0, x1, y0, y1 = xs[right - 1], xs[right], ys[right - 1], ys[right]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def allocate(order: torch.Tensor, batch: int, pool_size: int, budget: int | None) -> torch.Tensor:
    """[B, P] bool: the nodes the first `budget` entries of the order buy (None: all)."""
    bought = order if budget is None else order[:budget]
    chosen = torch.zeros(batch * pool_size, dtype=torch.bool, device=order.device)
    chosen[bought] = True
    return chosen.view(batch, pool_size)


class CostModel:
    """Seconds of one target pass as a function of the tokens it verifies (all requests'
    roots and drafts): piecewise linear through measured points, extended beyond the measured
    range with the end segments' slopes, each point refined online by the passes that run
    near it.

    Each size's fastest start-up pass counts: contention on a shared machine only ever adds
    time, so the minimum is the estimate a burst of other work disturbs least (the start-up
    passes take turns across sizes, so a burst slows one pass of several sizes rather than
    every pass of one size). The curve is not forced to rise with the tokens: which matrix
    kernels a pass runs depends on its shape, and on the CPU measured a pass over 3 or 4
    tokens is faster than one over 1 or 2 (docs/RESULTS.md); the budget buys drafts where
    they are cheap. A size timed wrong at start-up is corrected where it matters: a size that
    looks cheap gets run, and its passes move its point."""

    def __init__(self, tokens: list[int], seconds: list[float]):
        if len(tokens) < 2 or len(tokens) != len(seconds):
            raise ValueError(f"echo-vllm: a cost model needs >= 2 (tokens, seconds) points, got {tokens}, {seconds}")
        by_tokens: dict[int, list[float]] = {}
        for t, s in zip(tokens, seconds):
            by_tokens.setdefault(int(t), []).append(float(s))
        points = sorted(by_tokens)
        if len(points) < 2:
            raise ValueError(f"echo-vllm: a cost model needs >= 2 distinct token counts, got {tokens}")
        self.tokens = torch.tensor(points, dtype=torch.float64)
        self.seconds = torch.tensor([min(by_tokens[t]) for t in points], dtype=torch.float64)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """Seconds for passes of `tokens` tokens (any shape)."""
        return piecewise_linear(tokens.to(torch.float64), self.tokens, self.seconds).clamp(min=0.0)

    def observe(self, tokens: int, seconds: float, weight: float = 0.05) -> None:
        """Online refinement with a pass just timed: the two points around `tokens` move
        toward its time, each in proportion to its interpolation weight (a least-mean-squares
        step of the piecewise linear model; beyond the measured range the end point moves).
        Passes timed at start-up leave out what serving adds (attention over the cache and
        over the trees, sampling); this adds it at the sizes traffic runs, however it grows
        with the tokens.

        Worked example: points (1, 0.10 s), (5, 0.20 s); a pass of 2 tokens took 0.145 s
        (predicted 0.125): weight 0.5 moves the first point by 0.5 * 0.75 * 0.02 = 0.0075
        and the second by 0.5 * 0.25 * 0.02 = 0.0025.
        """
        upper = int(torch.searchsorted(self.tokens, torch.tensor(float(tokens), dtype=torch.float64)).clamp(
            1, len(self.tokens) - 1))
        lower = upper - 1
        span = float(self.tokens[upper] - self.tokens[lower])
        share = min(max((tokens - float(self.tokens[lower])) / span, 0.0), 1.0)  # the upper point's
        error = seconds - float(self(torch.tensor(tokens)))
        self.seconds[lower] += weight * (1.0 - share) * error
        self.seconds[upper] += weight * share * error

    def to_dict(self) -> dict:
        return {"tokens": [int(t) for t in self.tokens], "seconds": [float(s) for s in self.seconds]}


# Sizes up to this many tokens are each timed at start-up: neighbours among them can differ
# most (the kernels' choice by shape); beyond, sizes double.
DENSE_SIZES = 16


def measurement_sizes(max_tokens: int) -> list[int]:
    """Token counts to time target passes at: every count up to DENSE_SIZES, then powers of
    two up to max_tokens, and it.

    Worked example: 40 -> [1, 2, ..., 16, 32, 40]; 6 -> [1, 2, 3, 4, 5, 6].
    """
    sizes = list(range(1, min(DENSE_SIZES, max_tokens) + 1))
    sizes += [1 << i for i in range(DENSE_SIZES.bit_length(), max_tokens.bit_length()) if 1 << i < max_tokens]
    return sizes + [max_tokens] if sizes[-1] < max_tokens else sizes


def compute_bound(tokens: list[int], seconds: list[float], min_share: float = 0.9) -> bool:
    """Whether the last two steps between measured sizes grew the pass time almost as much
    as the tokens (time ratio >= min_share * token ratio), past DENSE_SIZES and over powers of
    two below it (the dense sizes between them would make steps too small to tell): the pass
    is compute-bound there, so the cost model's extension beyond its last point (the end
    slope) holds and larger sizes need not be timed.

    Worked example: tokens [64, 128, 256], seconds [.010, .019, .037] -> ratios 1.9 and
    1.95 >= 0.9 * 2 -> True; seconds [.010, .011, .020] -> 1.1 < 1.8 -> False.
    """
    doubling = [(t, s) for t, s in zip(tokens, seconds) if t >= DENSE_SIZES or t & (t - 1) == 0]
    if len(doubling) < 3 or doubling[-1][0] <= DENSE_SIZES:
        return False
    (t0, s0), (t1, s1), (t2, s2) = doubling[-3:]
    return s1 / max(s0, 1e-12) >= min_share * t1 / t0 and s2 / max(s1, 1e-12) >= min_share * t2 / t1


def goodput_budget(node_values: torch.Tensor, num_requests: int, cost: CostModel,
                   overhead_s: float | torch.Tensor) -> int:
    """The budget G (draft tokens) with the best expected goodput for this step.

    node_values [L]: expected accepted tokens each node of the allocation order adds (its
    path probability), in that order. Step goodput for G: (num_requests committed tokens
    for sure + the first G values) / (cost(num_requests + G) + overhead_s). overhead_s: the
    step's seconds besides the pass, one number or one per budget [L + 1] (drafting as deep
    as the first G nodes reach: a deeper node must pay for its depth's drafting too). Ties go
    to the smaller budget. Worked example: values [.9, .5, .1], 2 requests, cost 1 s + .3 s
    per token beyond 2, no overhead -> goodput [2, 2.23, 2.13, 1.84] -> G = 1.
    """
    gains = torch.cat([torch.zeros(1, dtype=torch.float64), node_values.to(torch.float64).cpu().cumsum(0)])
    return int(step_goodputs(num_requests, gains, cost, overhead_s).argmax())


def step_goodputs(num_requests: int, gains: torch.Tensor, cost: CostModel,
                  overhead_s: float | torch.Tensor) -> torch.Tensor:
    """Expected committed tokens per second of a step, for every budget G = 0..len(gains)-1:
    (num_requests + gains[G]) / (cost(num_requests + G) + overhead_s[G]); gains[0] = 0;
    overhead_s one number for every G, or one per G."""
    tokens = num_requests + torch.arange(len(gains), dtype=torch.float64)
    return (num_requests + gains) / (cost(tokens) + overhead_s)


class AcceptanceCurve:
    """Expected accepted draft tokens per request, against draft tokens verified per request,
    when a step's budget is spent in allocation order: an EMA over the drafted steps.

    Each drafted step contributes its cumulative node values (the draft's path probabilities
    as calibrated, in the order the budget buys them) divided by its number of requests, on a
    grid of 1/8 draft token per request. Normalised per request, steps of any batch size
    combine, and the curve predicts a step at another batch size B: gains(G) = B * curve(G / B).

    The draft's probabilities are its own belief; on live traffic it may be over- or
    under-confident, and not alike at every depth: a deeper node's probability compounds the
    draft's errors along its path, and from depth 2 on the head reads its own hidden states
    instead of the target's. `calibrated` scales each node by its depth's accepted / predicted
    drafts over recent verified trees, so that a deep node is bought for what deep nodes are
    accepted, not for what shallow ones are (one scale for all would let the many depth-1
    nodes set the price of the few deep ones).
    """

    GRID_PER_TOKEN = 8

    def __init__(self, max_drafts_per_request: int, max_depth: int = 1, weight: float = 0.1):
        self.grid = torch.arange(max_drafts_per_request * self.GRID_PER_TOKEN + 1, dtype=torch.float64) / self.GRID_PER_TOKEN
        self.gains_per_request: torch.Tensor | None = None  # [grid], None until a step is observed
        self.weight = weight
        # decayed sums per draft depth 1..max_depth: predicted, accepted drafts
        self.verified = torch.zeros(max_depth, 2, dtype=torch.float64)

    # Predicted and accepted tokens assumed at each depth before any verification (as if the
    # draft were calibrated): a few early rejections must not drive a scale to 0, after which
    # echo would never buy that depth again and never see otherwise. A depth no longer bought
    # decays back toward this prior (`observe_verified` decays every depth), so it is bought
    # and measured again.
    PRIOR_TOKENS = 4.0

    @property
    def scales(self) -> torch.Tensor:
        """[max_depth] accepted draft tokens per token the draft's probabilities predicted, by depth."""
        predicted, accepted = self.verified.unbind(1)
        return (accepted + self.PRIOR_TOKENS) / (predicted + self.PRIOR_TOKENS)

    def calibrated(self, node_values: torch.Tensor, node_depths: torch.Tensor) -> torch.Tensor:
        """Node values [M] (path probabilities) scaled by their depth's [M] accepted share."""
        rows = (node_depths.cpu().long() - 1).clamp(0, len(self.verified) - 1)
        return node_values.to(torch.float64).cpu() * self.scales[rows]

    def observe_verified(self, predicted: list[float], accepted: list[int], decay: float = 0.98) -> None:
        """One verification step, by draft depth 1, 2, ...: the summed path probabilities of
        the verified draft nodes and how many of them the target accepted (a request whose
        target accepted a drafts accepted one node at each depth 1..a)."""
        step = torch.zeros_like(self.verified)
        depths = min(len(predicted), len(self.verified))
        step[:depths, 0] = torch.tensor(predicted[:depths], dtype=torch.float64)
        step[:depths, 1] = torch.tensor(accepted[:depths], dtype=torch.float64)
        self.verified = decay * self.verified + step

    def observe(self, node_values: torch.Tensor, num_requests: int) -> None:
        """One drafted step: calibrated node_values [L] in allocation order, for num_requests requests."""
        cumulative = torch.cat([torch.zeros(1, dtype=torch.float64), node_values.to(torch.float64).cpu().cumsum(0)])
        per_request = torch.arange(len(cumulative), dtype=torch.float64) / num_requests
        if len(cumulative) < 2:  # no node drafted: nothing to gain at any budget
            step = torch.zeros_like(self.grid)
        else:
            step = piecewise_linear(self.grid.clamp(max=float(per_request[-1])), per_request, cumulative / num_requests)
        if self.gains_per_request is None:
            self.gains_per_request = step
        else:
            self.gains_per_request = (1 - self.weight) * self.gains_per_request + self.weight * step

    def gains(self, num_requests: int, budgets: torch.Tensor) -> torch.Tensor:
        """Expected accepted draft tokens of a step of num_requests requests, per budget."""
        assert self.gains_per_request is not None, "no drafted step observed yet"
        per_request = (budgets.to(torch.float64) / num_requests).clamp(max=float(self.grid[-1]))
        return num_requests * piecewise_linear(per_request, self.grid, self.gains_per_request)


class LinearCost:
    """Seconds as a + b * x, fit online by exponentially weighted least squares (recent
    observations count most). With one x seen so far, or a fit that slopes down (costs do
    not fall as x grows), it predicts the weighted mean: optimistic where nothing was
    measured, so a decision taken on it gets measured there and corrects it."""

    def __init__(self, decay: float = 0.95):
        self.decay = decay
        self.sums = torch.zeros(5, dtype=torch.float64)  # weight, x, y, x*x, x*y

    def observe(self, x: float, seconds: float) -> None:
        self.sums = self.decay * self.sums + torch.tensor([1.0, x, seconds, x * x, x * seconds], dtype=torch.float64)

    def __call__(self, x: float) -> float | None:
        """Predicted seconds at x (never negative), or None before any observation."""
        weight, sx, sy, sxx, sxy = self.sums.tolist()
        if weight == 0.0:
            return None
        mean_x, mean_y = sx / weight, sy / weight
        variance = sxx / weight - mean_x * mean_x
        slope = (sxy / weight - mean_x * mean_y) / variance if variance > 1e-9 * max(1.0, mean_x * mean_x) else 0.0
        if slope <= 0.0:
            return max(mean_y, 0.0)
        return max(mean_y + slope * (x - mean_x), 0.0)


def speculation_pays(num_requests: int, curve: AcceptanceCurve, cost: CostModel, draft_seconds: float,
                     step_overhead_s: float = 0.0) -> bool:
    """Whether drafting a step of num_requests requests is expected to beat a plain step.

    Best goodput with speculation, over every budget G the curve can fill:
    (requests + gains(G)) / (cost(requests + G) + draft_seconds + step_overhead_s), against
    the plain step's requests / (cost(requests) + step_overhead_s). Worked example: 2
    requests, curve gains .45 per request at one draft each, cost 1 s + .1 s per token beyond
    2, no overhead, drafting .1 s -> best G = 2: 2.9 / 1.3 = 2.23 > 2.0 pays; drafting .5 s ->
    2.9 / 1.7 = 1.71 (and G = 1: 2.45 / 1.6 = 1.53) does not.
    """
    budgets = torch.arange(int(curve.grid[-1] * num_requests) + 1)
    with_speculation = step_goodputs(num_requests, curve.gains(num_requests, budgets), cost,
                                     draft_seconds + step_overhead_s)
    plain = step_goodputs(num_requests, torch.zeros(1, dtype=torch.float64), cost, step_overhead_s)
    return bool(with_speculation.max() > plain[0])


class MeasuredGoodput:
    """Committed tokens per request per second that drafted and undrafted steps reached, as
    measured, by batch-size class (1, 2-3, 4-7, 8-15, ...).

    A step's outcome is what its drafting decision led to: the seconds from that decision to
    the next one (drafting, the engine's work between passes, the target pass that verifies
    the drafts) and the tokens that pass committed per request (1 + accepted drafts). Each
    choice keeps decayed sums per class, so its recent steps count most, and its latest step.
    A step's seconds decay by step (`decay` per newer step of the choice).

    The two choices' seconds are compared in pairs of neighbours, never as two means: the
    choice taken rarely (explorations) is measured once in many steps, so its mean would be
    as old as its steps, and the machine's speed drifts meanwhile (other processes, clocks;
    on the 2-core CPU a mean a run old was 8 % off, more than drafting's margin at a full
    batch). Each of the first `span` steps of a run of one choice is paired with the mean of
    the last `span` steps of the other choice's run just before it (when the class's steps
    follow each other, at most `span` steps apart), giving log(drafted / undrafted seconds)
    at weight 1 / span; these decay by `decay` per unit of weight. An exploration between two
    runs of the other choice is so compared with its neighbours on both sides, and a change
    of speed that both choices share cancels. A change of one choice alone shows at the next
    change of choice.

    Its accepted drafts are one draw per request, as noisy as one request's luck at batch 1
    (mostly 0 or 1) and about as rare at batch 4 (a few drafted steps there may accept none),
    so they are not averaged per class. Per class a choice keeps the drafts' *predicted*
    acceptance per request (the summed path probabilities of the verified nodes: no luck in
    it, and it follows how many drafts each request verifies at that class); the accepted
    share of what was predicted is pooled over all classes. Both decay by request
    (`request_decay` per request of a newer step): the pooled share needs about
    1 / (1 - request_decay) requests to settle, and at batch 64 one step is 64 draws.
    Tokens per request = 1 + share x predicted per request, with the share of the batch being
    decided (`set_batch`): each of its requests' own record (`own_decay` per step of that
    request), with the pooled share as its prior, worth `prior_drafts` predicted drafts. How
    far the draft's confidence is off depends on the text (on this CPU's sets the pooled
    share was about 1.0 on chat and arithmetic and 0.3 on code): pooled alone, one set's
    share carried into the next requests for about 1 / (1 - request_decay) drafts, and with
    drafting stopped only explorations brought it back.

    `ratio` compares the two choices once drafted steps hold `min_steps` steps' weight in the
    batch's class and its pairs `min_pairs` weight.

    Worked example: undrafted steps at batch 1 commit 1 token in 0.10 s (10 tokens/s); the
    drafted steps beside them take 0.12 s and predict 0.5 accepted drafts per request, of
    which the target accepts 60 % -> 1.3 tokens in 0.12 s (10.8 tokens/s): ratio 1.083,
    drafting pays.
    """

    def __init__(self, min_steps: float = 4.0, decay: float = 0.9, request_decay: float = 0.99,
                 own_decay: float = 0.95, prior_drafts: float = 2.0, span: int = 4, min_pairs: float = 1.0):
        self.min_steps, self.decay, self.request_decay = min_steps, decay, request_decay
        self.own_decay, self.prior_drafts = own_decay, prior_drafts
        self.span, self.min_pairs = span, min_pairs
        self.step = 0  # steps decided (set_batch), to tell whether a class's steps follow each other
        self.runs: dict[int, _Run] = {}  # class -> its current run of one choice
        self.pairs: dict[int, list[float]] = {}  # class -> weight, weighted log(drafted / undrafted seconds)
        self.own: dict[str, list[float]] = {}  # request -> predicted, accepted drafts (decayed by its steps)
        self.batch: tuple[str, ...] = ()  # the requests of the step being decided
        # (class, drafted) -> step weight, seconds, request weight, predicted drafts (summed)
        self.sums: dict[tuple[int, bool], list[float]] = {}
        self.latest: dict[tuple[int, bool], float] = {}  # (class, drafted) -> seconds of the latest step
        self.verified = [0.0, 0.0]  # over all classes: predicted, accepted drafts (decayed by request)

    def observe(self, batch: int, drafted: bool, seconds: float, predicted: float = 0.0,
                accepted: float = 0.0) -> None:
        """One step's outcome: its seconds and its verified drafts' predicted and accepted
        count (summed over its requests)."""
        key = (batch.bit_length(), drafted)
        steps, total, requests, predictions = self.sums.get(key, (0.0, 0.0, 0.0, 0.0))
        d, r = self.decay, self.request_decay ** batch
        self.sums[key] = [d * steps + 1.0, d * total + seconds, r * requests + batch,
                          r * predictions + predicted]
        self.latest[key] = seconds
        self._pair(key[0], drafted, seconds)
        if predicted > 0.0:
            self.verified = [r * self.verified[0] + predicted, r * self.verified[1] + accepted]

    def observe_requests(self, verified: dict[str, tuple[float, float]]) -> None:
        """Each request's verified drafts in one step: predicted (path probabilities) and accepted."""
        for req_id, (predicted, accepted) in verified.items():
            own_predicted, own_accepted = self.own.get(req_id, (0.0, 0.0))
            self.own[req_id] = [self.own_decay * own_predicted + predicted, self.own_decay * own_accepted + accepted]

    def _pair(self, batch_class: int, drafted: bool, seconds: float) -> None:
        """Pair a step with the other choice's steps just before it (the class docstring)."""
        run = self.runs.get(batch_class)
        if run is None or self.step - run.last_step > self.span:  # the class's steps do not follow each other
            run = self.runs[batch_class] = _Run(drafted, deque(maxlen=self.span))
        elif run.drafted != drafted:
            run.previous = sum(run.recent) / len(run.recent)
            run.drafted = drafted
            run.recent.clear()
        # one of the run's first `span` steps (`recent` holds at most `span`)
        if run.previous is not None and len(run.recent) < self.span and run.previous > 0.0 and seconds > 0.0:
            log_ratio = math.log(seconds / run.previous) * (1.0 if drafted else -1.0)
            weight, total = self.pairs.get(batch_class, (0.0, 0.0))
            weight_decay = self.decay ** (1.0 / self.span)
            self.pairs[batch_class] = [weight_decay * weight + 1.0 / self.span,
                                       weight_decay * total + log_ratio / self.span]
        run.recent.append(seconds)
        run.last_step = self.step

    def set_batch(self, req_ids: list[str]) -> None:
        """The requests of the step about to be decided; the records of requests no longer
        running are dropped."""
        self.step += 1
        self.batch = tuple(req_ids)
        self.own = {req_id: self.own[req_id] for req_id in self.batch if req_id in self.own}

    def accepted_share(self) -> float:
        """Drafts the target accepted per draft the path probabilities predicted: for the
        batch being decided, its requests' own records with the pooled share as their prior;
        before any batch, the share pooled over all classes.

        Worked example: pooled share 0.3; a request whose own steps predicted 4 drafts and
        had 4 accepted, prior_drafts 2 -> (4 + 2 * 0.3) / (4 + 2) = 0.77.
        """
        predicted, accepted = self.verified
        pooled = accepted / predicted if predicted > 0.0 else 0.0
        if not self.batch:
            return pooled
        records = [self.own.get(req_id, (0.0, 0.0)) for req_id in self.batch]
        prior = self.prior_drafts * len(records)
        return (sum(a for _, a in records) + prior * pooled) / (sum(p for p, _ in records) + prior)

    def _means(self, batch: int, drafted: bool, min_steps: float) -> tuple[float, float] | None:
        """(tokens per request, seconds per step) of one choice at this batch size's class,
        once it holds `min_steps` steps' weight there."""
        steps, seconds, requests, predicted = self.sums.get((batch.bit_length(), drafted), (0.0, 0.0, 0.0, 0.0))
        if steps < min_steps:
            return None
        return 1.0 + self.accepted_share() * predicted / requests, seconds / steps

    def ratio(self, batch: int) -> float | None:
        """Goodput of drafted steps over undrafted ones at this batch size's class: drafted
        steps' tokens per request over their paired seconds ratio; None until both were
        measured there."""
        drafted = self._means(batch, True, self.min_steps)
        weight, total = self.pairs.get(batch.bit_length(), (0.0, 0.0))
        if drafted is None or weight < self.min_pairs:
            return None
        return drafted[0] / math.exp(total / weight)

    def latest_cost(self, batch: int, drafted: bool) -> float:
        """What the latest step of one choice (drafted or not) cost beyond what the
        other choice takes for as many tokens, in steps of the other choice (0 where it cost
        less, and before both are measured at this class: `min_steps` of the other choice, one
        step of this one): what Exploration's wait takes. Its tokens are the choice's mean: one
        step's acceptance is too noisy to judge it by at small batches (at batch 1 most drafted
        steps accept nothing).

        Worked example: undrafted steps commit 1 token per request in 0.30 s; the latest
        drafted step took 0.45 s and drafted steps commit 1.2 tokens -> undrafted steps take
        0.36 s for those: cost (0.45 - 0.36) / 0.30 = 0.3.
        """
        key = (batch.bit_length(), drafted)
        other = self._means(batch, not drafted, self.min_steps)
        if key not in self.latest or other is None or other[1] <= 0.0:
            return 0.0
        tokens, _ = self._means(batch, drafted, 1.0)  # one step: self.latest has it
        other_tokens, other_seconds = other
        return max(self.latest[key] - tokens / other_tokens * other_seconds, 0.0) / other_seconds


@dataclass
class _Run:
    """Steps in a row of one choice at one batch-size class (MeasuredGoodput's pairs)."""

    drafted: bool
    recent: deque  # seconds of its last `span` steps
    previous: float | None = None  # mean seconds of the other choice's last steps before this run
    last_step: int = 0  # MeasuredGoodput.step at its latest step


class Exploration:
    """When a step takes the other choice than the one expected to be better.

    A choice's goodput is measured only on the steps that take it: without exploration, after
    a pessimistic turn of the estimates (a hard stretch of traffic, a noisy timing) echo would
    never draft again and never learn that drafting pays once more, and the measurement of
    undrafted steps would go stale while drafting wins. After a wait of steps in a row of the
    same choice, the next step takes the other one (an exploration step). The wait keeps what
    exploring costs to `max_share` of the steps: after an exploration that cost `cost` (beyond
    the choice taken, as a share of one of its steps) it is cost / max_share steps, at least
    `interval` (cheap explorations keep both measurements current, and one gone stale is soon
    redone) and at most `max_interval`. A drafted exploration is dearest where speculation
    does not pay (a full batch on a compute-bound device). A change of choice restarts the
    count.

    Worked example, interval 2, max_interval 10, max_share 0.5, exploring cost 1.5 steps
    each time: F F T F F F T F F F T ... (wait 3); at cost 0.2: F F T F F T (wait 2).
    """

    def __init__(self, interval: int, max_interval: int, max_share: float):
        if not 0 < interval <= max_interval:
            raise ValueError(f"echo-vllm: exploration needs 0 < interval <= max_interval, got {interval}, {max_interval}")
        if not 0.0 < max_share < 1.0:
            raise ValueError(f"echo-vllm: exploration needs 0 < max_share < 1, got {max_share}")
        self.interval, self.max_interval, self.max_share = interval, max_interval, max_share
        self.choice: bool | None = None
        self.in_a_row = 0

    def wait(self, cost: float) -> int:
        """Steps in a row of one choice before exploring, after an exploration that cost `cost`."""
        return min(self.max_interval, max(self.interval, math.ceil(cost / self.max_share)))

    def due(self, choice: bool, cost: float) -> bool:
        """Whether this step explores: takes the other choice than `choice` (draft or not),
        the one expected to be better; `cost`: what the latest exploration cost."""
        if choice != self.choice:
            self.choice, self.in_a_row = choice, 0
        if self.in_a_row >= self.wait(cost):
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        return False
