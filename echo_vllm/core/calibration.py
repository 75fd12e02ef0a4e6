"""The Sweet Spot: which tree, judge depth and threshold the echo gate should use.

Calibration runs with gating off and records, per request and step, the gate statistic at
every depth d = 1 .. D-1 and the accepted path: for each depth j, the rank (by score, 0 =
best) of the accepted node at depth j among the request's whole candidate pool, or NOT_ACCEPTED.
Gating at depth d would have been right for a record iff it accepted at most d drafts.

First the tree an ungated request verifies (`choose_tree`): the depth and node count with the
best expected goodput under the measured costs, no larger than the recorded tree (a tree of
N nodes keeps the recorded path's leading nodes ranked below N - 1). Against that tree, per
depth we report how well the statistic separates the two (ROC AUC) and pick the threshold
with the best expected goodput under the step costs measured in the same run; the judge
depth is the depth whose best threshold gives the best goodput.

A gated record keeps its remaining_num_draft_tokens - 1 best nodes of depths <= d (a count
given, or per depth the one with the best goodput). It would
have accepted the leading accepted-path nodes of depth <= d whose rank is below that count
(ranks among the whole pool are at least the ranks among depths <= d: a slight
underestimate of what the cut keeps).

Shape key: R records, D draft depths (steps).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from echo_vllm.core.budget import CostModel
from echo_vllm.core.gating import STATISTICS

NOT_ACCEPTED = 1 << 30  # path rank at a depth the target accepted nothing


@dataclass(frozen=True)
class StepCosts:
    """Seconds a request-step costs: its share of a pass that verifies n nodes per request
    (root included), and each depth drafted. By node count as the cost model has it, not a
    line: on the CPU measured a pass over 4 tokens costs less than one over 2 (budget.CostModel)."""

    verify_s: tuple[float, ...]  # entry n - 1: the share of a pass verifying n nodes per request, n = 1 .. N
    per_draft_depth_s: float

    def verifying(self, nodes: int) -> float:
        return self.verify_s[nodes - 1]


@dataclass(frozen=True)
class DepthChoice:
    depth: int
    remaining_num_draft_tokens: int  # nodes a request gated here keeps
    auc: float  # how well the statistic predicts "no acceptance beyond this depth"
    threshold: float
    gated_fraction: float
    expected_committed: float  # tokens per request-step, bonus included, gate applied
    goodput_gain: float  # expected goodput with the gate / without it


def roc_auc(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """Probability that a random positive scores above a random negative (ties count half).
    0.5 when one class is empty (no separation measurable)."""
    scores = scores.double()
    num_pos, num_neg = int(positives.sum()), int((~positives).sum())
    if num_pos == 0 or num_neg == 0:
        return 0.5
    values, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    average_rank = ends - (counts.double() - 1) / 2  # 1-based rank, ties averaged
    ranks = average_rank[inverse]
    return float((ranks[positives].sum() - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg))


def accepted_lengths(path_ranks: torch.Tensor) -> torch.Tensor:
    """[R] draft tokens accepted, from path_ranks [R, D]."""
    return (path_ranks < NOT_ACCEPTED).sum(dim=1)


@dataclass(frozen=True)
class TreeChoice:
    steps: int  # draft depths
    num_draft_tokens: int  # verified nodes per request, root included
    expected_committed: float  # tokens per request-step, bonus included
    goodput_gain: float  # expected goodput / the recorded tree's


def tree_ranks(path_ranks: torch.Tensor, steps: int, num_draft_tokens: int) -> torch.Tensor:
    """[R, steps] the path ranks a smaller tree would have verified: depths 1..steps, and of
    those the leading accepted nodes ranked below num_draft_tokens - 1 (NOT_ACCEPTED after).

    Worked example: ranks [0, 3, 1], 2 depths, 4 nodes -> [0, NOT_ACCEPTED] (rank 3 is not
    among the 3 best drafts)."""
    ranks = path_ranks[:, :steps]
    kept = (ranks < num_draft_tokens - 1).long().cumprod(dim=1).bool()
    return torch.where(kept, ranks, NOT_ACCEPTED)


def choose_tree(path_ranks: torch.Tensor, costs: StepCosts, num_draft_tokens: int) -> TreeChoice:
    """The tree (2 .. D depths, 2 .. num_draft_tokens nodes) with the best expected goodput
    for a request-step: committed tokens over its share of the pass that verifies every
    request's nodes plus its drafting per depth (ties: the smaller tree). path_ranks [R, D]
    of the recorded tree.

    On a device where a pass over a few more tokens costs next to nothing (a lone request
    on a CPU or a GPU), it is as deep and as wide as what the draft gets accepted pays for;
    where verifying costs (a full batch), it is small."""
    recorded = None
    best = None
    for steps in range(2, path_ranks.shape[1] + 1):
        for nodes in range(2, num_draft_tokens + 1):
            committed = 1.0 + float(accepted_lengths(tree_ranks(path_ranks, steps, nodes)).double().mean())
            seconds = costs.verifying(nodes) + costs.per_draft_depth_s * steps
            if best is None or committed / seconds > best[0]:
                best = (committed / seconds, steps, nodes, committed)
            if (steps, nodes) == (path_ranks.shape[1], num_draft_tokens):
                recorded = committed / seconds
    goodput, steps, nodes, committed = best
    return TreeChoice(steps, nodes, committed, goodput / recorded)


def record_outcomes(path_ranks: torch.Tensor, depth: int, num_draft_tokens: int,
                    remaining_num_draft_tokens: int, costs: StepCosts):
    """Per record, (committed tokens, seconds) if gated at `depth` and if not: 4 tensors [R]."""
    steps = path_ranks.shape[1]
    kept = path_ranks[:, :depth] < remaining_num_draft_tokens - 1
    cut_accepted = kept.long().cumprod(dim=1).sum(dim=1)  # leading accepted nodes the cut keeps
    gated_committed = 1 + cut_accepted.double()
    full_committed = 1 + accepted_lengths(path_ranks).double()
    gated_seconds = torch.full_like(gated_committed, costs.verifying(remaining_num_draft_tokens)
                                    + costs.per_draft_depth_s * depth)
    full_seconds = torch.full_like(full_committed, costs.verifying(num_draft_tokens) + costs.per_draft_depth_s * steps)
    return gated_committed, gated_seconds, full_committed, full_seconds


def gate_outcome(statistic: torch.Tensor, path_ranks: torch.Tensor, depth: int, threshold,
                 num_draft_tokens: int, remaining_num_draft_tokens: int, costs: StepCosts):
    """Expected (committed tokens, seconds, gated fraction) per request-step with the gate
    at `depth` and `threshold` (a number, or one per record). statistic [R] at that depth;
    path_ranks [R, D]."""
    gated = statistic < threshold
    gated_committed, gated_seconds, full_committed, full_seconds = record_outcomes(
        path_ranks, depth, num_draft_tokens, remaining_num_draft_tokens, costs)
    committed = torch.where(gated, gated_committed, full_committed)
    seconds = torch.where(gated, gated_seconds, full_seconds)
    return float(committed.mean()), float(seconds.mean()), float(gated.double().mean())


def choose_threshold(statistic: torch.Tensor, path_ranks: torch.Tensor, depth: int,
                     num_draft_tokens: int, remaining_num_draft_tokens: int, costs: StepCosts) -> DepthChoice:
    """The threshold at `depth` with the best expected goodput; candidates are 0 (never
    gate) and every recorded statistic value (ties: the lowest).

    All candidates at once, in O(R log R) (online calibration runs inside serving): with
    the records sorted by statistic, threshold v gates the records below it, a prefix.
    """
    gated_committed, gated_seconds, full_committed, full_seconds = record_outcomes(
        path_ranks, depth, num_draft_tokens, remaining_num_draft_tokens, costs)
    order = statistic.argsort()
    candidates = torch.cat([torch.zeros(1, dtype=statistic.dtype), torch.unique(statistic)])
    num_gated = torch.searchsorted(statistic[order].contiguous(), candidates)  # records below each candidate

    def with_prefix_gated(gated, full):
        gated_sum = torch.cat([torch.zeros(1, dtype=torch.float64), gated[order].cumsum(0)])
        full_sum = torch.cat([torch.zeros(1, dtype=torch.float64), full[order].cumsum(0)])
        return (gated_sum[num_gated] + full_sum[-1] - full_sum[num_gated]) / len(statistic)

    committed = with_prefix_gated(gated_committed, full_committed)
    goodput = committed / with_prefix_gated(gated_seconds, full_seconds)
    best = int(goodput.argmax())
    # low confidence should mean "nothing accepted beyond this depth"
    auc = roc_auc(-statistic, accepted_lengths(path_ranks) <= depth)
    return DepthChoice(depth, remaining_num_draft_tokens, auc, float(candidates[best]),
                       int(num_gated[best]) / len(statistic), float(committed[best]),
                       float(goodput[best] / goodput[0]))


def choose_sweet_spot(statistics: torch.Tensor, path_ranks: torch.Tensor, num_draft_tokens: int,
                      remaining_num_draft_tokens: int | None, costs: StepCosts) -> tuple[DepthChoice, list[DepthChoice]]:
    """The best judge depth (ties: the shallower) and every depth's table row.

    statistics [R, D-1]: the gate statistic after depths 1 .. D-1; path_ranks [R, D].
    remaining_num_draft_tokens None: per depth, the count (2 .. num_draft_tokens) with the
    best expected goodput (ties: the smaller), since verifying fewer nodes need not cost
    less (StepCosts).
    """
    counts = ([min(remaining_num_draft_tokens, num_draft_tokens)] if remaining_num_draft_tokens
              else range(2, num_draft_tokens + 1))
    table = [
        max((choose_threshold(statistics[:, d - 1], path_ranks, d, num_draft_tokens, count, costs) for count in counts),
            key=lambda row: (row.goodput_gain, -row.remaining_num_draft_tokens))
        for d in range(1, statistics.shape[1] + 1)
    ]
    return max(table, key=lambda row: (row.goodput_gain, -row.depth)), table


def choose_gate(statistics: torch.Tensor, path_ranks: torch.Tensor, num_draft_tokens: int,
                remaining_num_draft_tokens: int | None, costs: StepCosts):
    """The gate statistic, judge depth and threshold with the best expected goodput.

    statistics [R, D-1, S]: every statistic of STATISTICS after depths 1 .. D-1.
    Returns (statistic name, its best DepthChoice, {statistic: table}).
    """
    choices = {
        name: choose_sweet_spot(statistics[:, :, s], path_ranks, num_draft_tokens, remaining_num_draft_tokens, costs)
        for s, name in enumerate(STATISTICS)
    }
    best = max(STATISTICS, key=lambda name: choices[name][0].goodput_gain)
    return best, choices[best][0], {name: table for name, (_, table) in choices.items()}


def step_costs(cost: CostModel, draft_depth_s: float, batch_size: int, num_draft_tokens: int) -> StepCosts:
    """Per request-step costs at this batch size: its share of a pass that verifies n nodes
    of every request, cost(batch_size * n) / batch_size for n = 1 .. num_draft_tokens, and
    the drafter's time per depth (draft_depth_s: a step's drafting per depth, all requests)."""
    nodes = torch.arange(1, num_draft_tokens + 1)
    return StepCosts(verify_s=tuple((cost(batch_size * nodes) / batch_size).tolist()),
                     per_draft_depth_s=draft_depth_s / batch_size)
