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

Shape key: B requests, P pool nodes per request, M = B*P, G budget (draft tokens).
"""

from __future__ import annotations

import torch


def most_confident_paths(pool_scores: torch.Tensor, parent_idx: torch.Tensor, pool_depth: torch.Tensor) -> torch.Tensor:
    """[B, P] bool: each request's best node at the deepest depth it drafted, plus its ancestors.

    pool_scores [B, P] (-inf where never drafted); parent_idx [B, P] (-1 at depth 1);
    pool_depth [P]. Worked example (K=2): scores [-.1, -.9, -.5, -.2, -2, -3] at depths
    [1, 1, 2, 2, 2, 2], parents [-1, -1, 0, 0, 1, 1] -> best depth-2 node 3, path {0, 3}.
    """
    batch = pool_scores.shape[0]
    drafted = torch.isfinite(pool_scores)
    deepest = torch.where(drafted, pool_depth, 0).max(dim=1, keepdim=True).values
    at_deepest = drafted & (pool_depth == deepest)
    node = torch.where(at_deepest, pool_scores, -torch.inf).argmax(dim=1)  # [B]
    path = torch.zeros_like(drafted)
    rows = torch.arange(batch, device=pool_scores.device)
    alive = drafted.any(dim=1)
    for _ in range(int(pool_depth.max())):
        path[rows[alive], node[alive]] = True
        node = parent_idx[rows, node.clamp(min=0)]
        alive = alive & (node >= 0)
    return path


def allocation_order(pool_scores: torch.Tensor, parent_idx: torch.Tensor, pool_depth: torch.Tensor,
                     caps: torch.Tensor) -> torch.Tensor:
    """[L] flat indices (b * P + p) of the nodes a budget may buy, in the order it buys them:
    most-confident-path nodes first, then the rest; each group by score, then depth. Each
    request appears at most caps[b] times. Any prefix of the order is closed under parents
    (a parent is on the path whenever its child is, and scores at least as high)."""
    batch, pool_size = pool_scores.shape
    drafted = torch.isfinite(pool_scores)
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


def allocate(order: torch.Tensor, batch: int, pool_size: int, budget: int | None) -> torch.Tensor:
    """[B, P] bool: the nodes the first `budget` entries of the order buy (None: all)."""
    bought = order if budget is None else order[:budget]
    chosen = torch.zeros(batch * pool_size, dtype=torch.bool, device=order.device)
    chosen[bought] = True
    return chosen.view(batch, pool_size)


class CostModel:
    """Seconds of one target pass as a function of the tokens it verifies (all requests'
    roots and drafts): piecewise linear through measured points, non-decreasing, extended
    beyond the measured range with the end segments' slopes."""

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
        medians = torch.tensor([sorted(by_tokens[t])[len(by_tokens[t]) // 2] for t in points], dtype=torch.float64)
        self.seconds = medians.cummax(dim=0).values

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """Seconds for passes of `tokens` tokens (any shape)."""
        x = tokens.to(torch.float64)
        right = torch.searchsorted(self.tokens, x).clamp(1, len(self.tokens) - 1)
        x0, x1 = self.tokens[right - 1], self.tokens[right]
        y0, y1 = self.seconds[right - 1], self.seconds[right]
        return (y0 + (y1 - y0) * (x - x0) / (x1 - x0)).clamp(min=0.0)

    def observe(self, tokens: int, seconds: float, weight: float = 0.05) -> None:
        """Online refinement: move the nearest measured point toward a pass just timed
        (scaled by the model's own shape between the two token counts)."""
        nearest = int((self.tokens - tokens).abs().argmin())
        predicted = float(self(torch.tensor(tokens)))
        target = seconds * float(self.seconds[nearest]) / max(predicted, 1e-12)
        self.seconds[nearest] = (1 - weight) * self.seconds[nearest] + weight * target
        self.seconds = self.seconds.cummax(dim=0).values

    def to_dict(self) -> dict:
        return {"tokens": [int(t) for t in self.tokens], "seconds": [float(s) for s in self.seconds]}


def measurement_sizes(max_tokens: int) -> list[int]:
    """Token counts to time target passes at: powers of two up to max_tokens, and it.

    Worked example: 40 -> [1, 2, 4, 8, 16, 32, 40].
    """
    sizes = [1 << i for i in range(max_tokens.bit_length()) if 1 << i < max_tokens]
    return sizes + [max_tokens]


def goodput_budget(node_values: torch.Tensor, num_requests: int, cost: CostModel, overhead_s: float) -> int:
    """The budget G (draft tokens) with the best expected goodput for this step.

    node_values [L]: expected accepted tokens each node of the allocation order adds (its
    path probability), in that order. Step goodput for G: (num_requests committed tokens
    for sure + the first G values) / (cost(num_requests + G) + overhead_s). Ties go to the
    smaller budget. Worked example: values [.9, .5, .1], 2 requests, cost 1 s + .3 s per token
    beyond 2, no overhead -> goodput [2, 2.23, 2.13, 1.84] -> G = 1.
    """
    gains = torch.cat([torch.zeros(1, dtype=torch.float64), node_values.to(torch.float64).cpu().cumsum(0)])
    tokens = num_requests + torch.arange(len(gains), dtype=torch.float64)
    goodput = (num_requests + gains) / (cost(tokens) + overhead_s)
    return int(goodput.argmax())
