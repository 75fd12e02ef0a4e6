"""When a request stops growing its draft tree: the per-request level of the policies.

Every policy drafts depth by depth (echo_vllm.core.tree) and, after the depths it checks,
decides which requests keep growing. Only checked depths cost a device-to-host transfer (the
proposer must know which rows to draft next); unchecked depths cost nothing.

  static     never stops (EAGLE-3's fixed tree)
  ddd        dynamic depth: stops when the frontier's summed path probability falls below
             the threshold, checked after every depth in check_depths
  opt_tree   stops when one more depth adds less than the threshold to the expected
             accepted length of the best num_draft_tokens tree (checked after every depth)
  echo       sparse gate: only at the judge depths, stops a request whose confidence is below
             that depth's threshold and cuts it to remaining_num_draft_tokens; the budget it
             gives up goes back to the batch (echo_vllm.core.budget)

Shape key: B requests, A requests still growing, K frontier width, P pool nodes per request.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

STATISTICS = ("frontier_sum", "best_path")


def gate_statistic(frontier_scores: torch.Tensor, statistic: str) -> torch.Tensor:
    """[A] confidence in [0, 1] from the frontier's cumulative log-probabilities [A, K].

    frontier_sum: the draft's probability that the target's path runs through the frontier
    (the frontier paths are disjoint, so their probabilities add up to at most 1);
    best_path: the probability of the single most likely path.
    Worked example: frontier probabilities [.5, .2] -> frontier_sum .7, best_path .5.
    """
    probs = frontier_scores.float().exp()
    if statistic == "frontier_sum":
        return probs.sum(dim=-1)
    if statistic == "best_path":
        return probs.max(dim=-1).values
    raise ValueError(f"echo-vllm: unknown gate statistic {statistic!r}; expected one of {list(STATISTICS)}")


def expected_accepted(pool_scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """[B] expected accepted draft tokens of each request's best tree of counts[b] nodes,
    reading draft path probabilities as acceptance probabilities (a node is accepted iff
    its whole path is): the sum of the counts[b] largest exp(score). -inf nodes add 0."""
    top = pool_scores.float().exp().sort(dim=-1, descending=True).values
    rank = torch.arange(pool_scores.shape[1], device=pool_scores.device)
    return torch.where(rank < counts.view(-1, 1), top, 0.0).sum(dim=-1)


@dataclass(frozen=True)
class GrowthPolicy:
    """Which requests keep drafting deeper, and how many nodes a stopped request keeps.

    name: one of static / ddd / opt_tree / echo.
    check_depths: depths d (1-based) after which the policy decides; drafting depth d + 1
      happens only for the requests it keeps.
    thresholds: one per check depth (ddd and echo), or one for all (opt_tree).
    num_draft_tokens: verified nodes per request, root included.
    stopped_num_draft_tokens: verified nodes a stopped request keeps (echo's
      remaining_num_draft_tokens; num_draft_tokens for the others).
    """

    name: str
    check_depths: tuple[int, ...]
    thresholds: tuple[float, ...]
    num_draft_tokens: int
    stopped_num_draft_tokens: int
    statistic: str = "frontier_sum"

    def keep_growing(self, depth: int, frontier_scores: torch.Tensor, pool_scores: torch.Tensor,
                     pool_depth: torch.Tensor) -> torch.Tensor:
        """[A] bool after drafting `depth`: which of the growing requests draft depth + 1.

        frontier_scores [A, K]; pool_scores [A, P] the same requests' pools so far;
        pool_depth [P] the depth of each pool position.
        """
        assert depth in self.check_depths, (depth, self.check_depths)
        if self.name == "opt_tree":
            counts = torch.full((pool_scores.shape[0],), self.num_draft_tokens - 1, device=pool_scores.device)
            shallower = torch.where(pool_depth < depth, pool_scores, -torch.inf)
            gain = expected_accepted(pool_scores, counts) - expected_accepted(shallower, counts)
            return gain >= self.thresholds[0]
        threshold = self.thresholds[self.check_depths.index(depth)]
        return gate_statistic(frontier_scores, self.statistic) >= threshold


def static_policy(num_draft_tokens: int) -> GrowthPolicy:
    return GrowthPolicy("static", (), (), num_draft_tokens, num_draft_tokens)


def ddd_policy(num_draft_tokens: int, check_depths: tuple[int, ...], threshold: float) -> GrowthPolicy:
    return GrowthPolicy("ddd", check_depths, (threshold,) * len(check_depths), num_draft_tokens, num_draft_tokens)


def opt_tree_policy(num_draft_tokens: int, steps: int, min_gain: float) -> GrowthPolicy:
    return GrowthPolicy("opt_tree", tuple(range(1, steps)), (min_gain,), num_draft_tokens, num_draft_tokens)


def echo_policy(num_draft_tokens: int, judge_depths: tuple[int, ...], thresholds: tuple[float, ...],
                remaining_num_draft_tokens: int, statistic: str) -> GrowthPolicy:
    return GrowthPolicy("echo", judge_depths, thresholds, num_draft_tokens, remaining_num_draft_tokens, statistic)
