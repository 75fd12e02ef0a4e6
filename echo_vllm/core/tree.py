"""Draft trees: EAGLE-2-style expansion, verified-set selection, ancestor masks, positions.

Shape key:
  B  requests
  K  topk: children proposed per frontier node, and frontier width
  D  draft depth (steps)
  P  candidate-pool size per request: K at depth 1, K*K at each later depth
  A  requests still growing (a gate stopped the others)
  N  verified nodes per request, node 0 = the root (the last committed token)
  V  vocabulary

Scores are cumulative log-probabilities of the draft: a node's score is its parent's plus the
log-probability the draft gave its token, so scores never increase along a path. Pool order
is generation order (depth by depth), so every parent precedes its children.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch


@dataclass(frozen=True)
class Frontier:
    """The nodes one depth expands from."""

    tokens: torch.Tensor  # [B, K] int64
    scores: torch.Tensor  # [B, K] float32, cumulative log-probability
    pool_idx: torch.Tensor  # [B, K] int64, position of each frontier node in the pool
    parent_pos: torch.Tensor  # [B, K] int64, position of each node's parent in the previous frontier


@dataclass(frozen=True)
class Pool:
    """All proposed nodes of each request, in generation order."""

    tokens: torch.Tensor  # [B, P] int64
    scores: torch.Tensor  # [B, P] float32
    parent_idx: torch.Tensor  # [B, P] int64, pool index of the parent, -1 for depth 1


@dataclass(frozen=True)
class Tree:
    """Verified trees, padded to the largest: node 0 is the root of every request."""

    tokens: torch.Tensor  # [B, N] int64, root token included, padding 0
    parent_idx: torch.Tensor  # [B, N] int64, -1 at the root and in padding
    depths: torch.Tensor  # [B, N] int64, 0 at the root and in padding
    num_nodes: torch.Tensor  # [B] int64, root included
    pool_idx: torch.Tensor  # [B, N] int64, each node's position in the pool, -1 at the root and in padding


def root_frontier(top_logprobs: torch.Tensor, top_tokens: torch.Tensor) -> tuple[Frontier, Pool]:
    """Depth 1: the draft's top-k tokens after the root, best first. Both [B, K]."""
    batch, topk = top_logprobs.shape
    device = top_logprobs.device
    pool_idx = torch.arange(topk, device=device).expand(batch, topk)
    zeros = torch.zeros(batch, topk, dtype=torch.int64, device=device)
    parents = torch.full((batch, topk), -1, dtype=torch.int64, device=device)
    scores = top_logprobs.float()
    return Frontier(top_tokens, scores, pool_idx, zeros), Pool(top_tokens, scores, parents)


def expand_frontier(
    frontier: Frontier, top_logprobs: torch.Tensor, top_tokens: torch.Tensor, pool: Pool,
    rows: torch.Tensor | None = None,
) -> tuple[Frontier, Pool]:
    """One depth deeper: every frontier node proposes its top-k children; the k best
    children by cumulative score become the next frontier; all k*k join the pool.

    top_logprobs, top_tokens [A, K, K]: the draft's k best tokens after each frontier node.
    rows [A] int64: the pool rows (requests) still growing, which the frontier belongs to;
    None = all. The other rows get k*k placeholders with score -inf (never drafted, never
    selected), so every row's pool keeps one layout (pool_depths).
    Worked example (B=1, K=2): frontier scores [-0.1, -0.5]; children log-probs
    [[-0.2, -0.3], [-0.1, -2.0]] -> candidates [-0.3, -0.4, -0.6, -2.5]; next frontier
    = candidates 0 and 1, both children of frontier node 0 (parent_pos [0, 0]).
    """
    growing, topk = frontier.scores.shape
    cand_scores = (frontier.scores.unsqueeze(-1) + top_logprobs.float()).reshape(growing, topk * topk)
    cand_tokens = top_tokens.reshape(growing, topk * topk)
    cand_parents = frontier.pool_idx.repeat_interleave(topk, dim=1)  # [A, K*K]
    next_scores, chosen = cand_scores.topk(topk, dim=-1)
    first_new = pool.tokens.shape[1]
    next_frontier = Frontier(
        cand_tokens.gather(1, chosen), next_scores, first_new + chosen, chosen // topk
    )
    if rows is not None:
        cand_tokens, cand_scores, cand_parents = _scatter_rows(
            rows, pool.tokens.shape[0], (cand_tokens, 0), (cand_scores, -torch.inf), (cand_parents, -1)
        )
    grown = Pool(
        torch.cat([pool.tokens, cand_tokens], dim=1),
        torch.cat([pool.scores, cand_scores], dim=1),
        torch.cat([pool.parent_idx, cand_parents], dim=1),
    )
    return next_frontier, grown


def _scatter_rows(rows: torch.Tensor, batch: int, *values_and_fills):
    """Each [A, ...] value placed at `rows` of a [B, ...] tensor filled with its fill value."""
    out = []
    for value, fill in values_and_fills:
        full = torch.full((batch, *value.shape[1:]), fill, dtype=value.dtype, device=value.device)
        full[rows] = value
        out.append(full)
    return out


@lru_cache(maxsize=None)  # every drafted step asks; callers only read it
def pool_depths(steps: int, topk: int, device=None) -> torch.Tensor:
    """[P] int64: the draft depth of each pool position (the layout every row shares).

    Worked example: steps 3, topk 2 -> [1, 1, 2, 2, 2, 2, 3, 3, 3, 3].
    """
    counts = torch.tensor([topk] + [topk * topk] * (steps - 1), device=device)
    return torch.arange(1, steps + 1, device=device).repeat_interleave(counts)


def best_nodes(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """[B, P] bool: each request's counts[b] best pool nodes by score (ties: pool order).

    A pool node with score -inf (never drafted: its request stopped growing) is never
    chosen. Connected by construction: a parent scores at least as high as its child and
    precedes it in the pool, so a chosen node's parent is chosen too.
    """
    batch, pool_size = scores.shape
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    rank = torch.arange(pool_size, device=scores.device).expand(batch, pool_size)
    keep = rank < counts.to(scores.device).view(batch, 1)  # over the sorted order
    chosen = torch.zeros(batch, pool_size, dtype=torch.bool, device=scores.device).scatter(1, order, keep)
    return chosen & torch.isfinite(scores)


def tree_from_chosen(pool: Pool, root_tokens: torch.Tensor, chosen_mask: torch.Tensor,
                     pool_depth: torch.Tensor) -> Tree:
    """The verified trees: the root plus each request's chosen pool nodes, kept in pool
    order (parents before children). chosen_mask [B, P] bool must be closed under taking
    parents (checked); pool_depth [P] (pool_depths) gives the nodes' depths."""
    batch, pool_size = pool.scores.shape
    device = pool.scores.device
    num_nodes = chosen_mask.sum(dim=1) + 1
    max_nodes = int(num_nodes.max())
    # chosen pool indices in pool order, padded with pool_size (sorts last)
    padded = torch.where(chosen_mask, torch.arange(pool_size, device=device), pool_size)
    chosen = padded.sort(dim=-1).values[:, : max_nodes - 1]  # [B, N-1]
    valid = chosen < pool_size
    chosen_safe = chosen.clamp(max=pool_size - 1)
    # a chosen pool node's tree index (root 0): how many chosen nodes precede it, itself included
    tree_index_of = chosen_mask.long().cumsum(dim=1)
    pool_parent = pool.parent_idx.gather(1, chosen_safe)
    parent_safe = pool_parent.clamp(min=0)
    parent = torch.where(pool_parent < 0, 0, tree_index_of.gather(1, parent_safe))
    connected = (pool_parent < 0) | chosen_mask.gather(1, parent_safe)
    assert bool((connected | ~valid).all()), "selected tree is not connected"
    root_col = torch.full((batch, 1), -1, dtype=torch.int64, device=device)
    parent_idx = torch.cat([root_col, torch.where(valid, parent, -1)], dim=1)
    tokens = torch.cat(
        [root_tokens.view(batch, 1).long(), torch.where(valid, pool.tokens.gather(1, chosen_safe), 0)],
        dim=1,
    )
    depths = torch.cat([torch.zeros_like(root_col), torch.where(valid, pool_depth[chosen_safe], 0)], dim=1)
    pool_idx = torch.cat([root_col, torch.where(valid, chosen, -1)], dim=1)
    return Tree(tokens, parent_idx, depths, num_nodes.long(), pool_idx)


def chain_tree(pool: Pool, root_tokens: torch.Tensor, counts: torch.Tensor) -> Tree:
    """The verified trees of chain pools (topk 1: pool position p holds the node at depth
    p + 1, child of position p - 1): the root plus each request's first counts[b] [B] nodes.
    The tree tree_from_chosen makes of those nodes, in a few tensor operations: a chain step
    costs what a chain costs.

    Worked example: pool tokens [[5, 6, 7]], root [4], counts [2] -> tokens [[4, 5, 6]],
    parents [[-1, 0, 1]], depths [[0, 1, 2]], pool positions [[-1, 0, 1]].
    """
    batch = pool.tokens.shape[0]
    max_drafts = int(counts.max())
    position = torch.arange(max_drafts, device=pool.tokens.device).expand(batch, max_drafts)
    valid = position < counts.view(batch, 1)
    root_col = torch.full((batch, 1), -1, dtype=torch.int64, device=pool.tokens.device)
    # tree node i + 1 is pool position i, and its parent is tree node i
    pool_idx = torch.cat([root_col, torch.where(valid, position, -1)], dim=1)
    tokens = torch.cat([root_tokens.view(batch, 1).long(),
                        torch.where(valid, pool.tokens[:, :max_drafts], 0)], dim=1)
    return Tree(tokens, pool_idx, pool_idx + 1, counts.long() + 1, pool_idx)


def score_ranks(scores: torch.Tensor) -> torch.Tensor:
    """[B, P] int64: each pool node's rank by score within its request (0 = best; ties by
    pool order), the order best_nodes takes nodes in.

    Worked example: scores [-.5, -.1, -.9] -> ranks [1, 0, 2].
    """
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    return order.argsort(dim=-1)


def node_depths(parent_idx: torch.Tensor) -> torch.Tensor:
    """Depth of every node (root and padding 0). parent_idx [B, N], parents before children.

    Worked example: parents [-1, 0, 0, 1] -> depths [0, 1, 1, 2].
    """
    depths = torch.zeros_like(parent_idx)
    for i in range(1, parent_idx.shape[1]):
        parent = parent_idx[:, i]
        has_parent = parent >= 0
        depths[:, i] = torch.where(
            has_parent, depths.gather(1, parent.clamp(min=0).unsqueeze(1)).squeeze(1) + 1, 0
        )
    return depths


def ancestor_mask(parent_idx: torch.Tensor) -> torch.Tensor:
    """[B, N, N] bool: entry (i, j) is True iff node j is node i itself or an ancestor of i.

    Worked example: parents [-1, 0, 0, 1] -> rows {0}, {0,1}, {0,2}, {0,1,3}; a chain's
    mask is causal (lower triangular). Padding rows see only themselves.
    Pointer doubling: after round r each node sees its ancestors up to 2**r steps up, so
    ceil(log2(N)) rounds of child_visibility reach the root from any depth.
    """
    batch, nodes = parent_idx.shape
    has_parent = parent_idx >= 0
    up = parent_idx.clamp(min=0)  # [B, N] the ancestor 2**r steps up, where `alive`
    mask = torch.eye(nodes, dtype=torch.bool, device=parent_idx.device).expand(batch, nodes, nodes)
    mask = mask | (torch.nn.functional.one_hot(up, nodes).bool() & has_parent.unsqueeze(-1))
    alive = has_parent
    for _ in range(max(nodes - 1, 1).bit_length()):
        mask = mask | (child_visibility(mask, up) & alive.unsqueeze(-1))
        alive = alive & alive.gather(1, up)
        up = up.gather(1, up)
    return mask


def child_visibility(visible: torch.Tensor, parent_pos: torch.Tensor) -> torch.Tensor:
    """What each child sees before itself: its parent's row of `visible`.

    visible [B, K, M] bool (node k sees key m); parent_pos [B, C] int64, each child's parent
    among the K nodes. Returns [B, C, M]. Worked example: visible [[1, 0], [1, 1]], parents
    [1, 1, 0] -> [[1, 1], [1, 1], [1, 0]].
    """
    return visible.gather(1, parent_pos.unsqueeze(-1).expand(-1, -1, visible.shape[2]))


def tree_positions(depths: torch.Tensor, prefix_lens: torch.Tensor) -> torch.Tensor:
    """RoPE positions of tree nodes: prefix length + depth.

    prefix_lens [B] = tokens already in the KV cache (the root's own position).
    Worked example: depths [0, 1, 1, 2], prefix 7 -> positions [7, 8, 8, 9].
    """
    return prefix_lens.view(-1, 1) + depths



def deepest_and_widest(tree: Tree) -> tuple[int, int]:
    """The deepest verified draft node of the batch, and the most verified draft nodes at one
    depth of one request (0, 0 without drafts). One host transfer.

    Worked example: a request verifying root -> a -> (b, c) and one verifying root -> d -> e -> f
    gives (3, 2)."""
    depths = tree.depths
    counts = torch.zeros(depths.shape[0], int(depths.shape[1]) + 1, dtype=torch.int64, device=depths.device)
    counts.scatter_add_(1, depths, torch.ones_like(depths))
    deepest, widest = torch.stack([depths.max(), counts[:, 1:].max()]).tolist()
    return deepest, widest
