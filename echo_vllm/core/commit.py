"""One verification step's index arithmetic: where the trees' nodes sit in vLLM's flat batch,
and where accepted nodes move so the request's cache looks like a chain again.

Shape key:
  B  requests in the step's batch
  R  requests verifying drafts (a tree each), in batch order
  N  nodes per tree, padded to the largest; node 0 = the root (the first token not yet cached)
  T  nodes of all trees (flattened; padding dropped)
  M  accepted nodes that move

vLLM lays a request's scheduled tokens out as consecutive batch rows and gives them
consecutive cache slots; with drafts, the last num_nodes of them are the root and its drafts
in tree order. So node i of a tree sits at batch row root_row + i and cache position
prefix_len + i, while its RoPE position is prefix_len + depth.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from echo_vllm.core.tree import node_depths, tree_positions


def chain_parents(num_nodes: int) -> list[int]:
    """Parents of a chain of num_nodes nodes, root included.

    Worked example: 4 -> [-1, 0, 1, 2].
    """
    return [-1, *range(num_nodes - 1)]


def scheduled_parents(
    drafted_tokens: list[int] | None, drafted_parents: list[int] | None, scheduled_drafts: list[int]
) -> list[int]:
    """Parents of the scheduled drafts, root included: the drafted tree cut where the scheduler
    cut its drafts (tree order keeps every prefix connected). Drafts that are not a prefix of
    the drafted tree's (none drafted: drafted_tokens None, or other tokens) verify as a chain,
    which is just as lossless.

    Worked example: drafted [5, 6, 7] with parents [-1, 0, 0, 1], scheduled [5, 6]
    -> [-1, 0, 0]; scheduled [5, 9] -> [-1, 0, 1].
    """
    num_drafts = len(scheduled_drafts)
    if drafted_tokens is None or drafted_tokens[:num_drafts] != list(scheduled_drafts):
        return chain_parents(num_drafts + 1)
    return drafted_parents[: num_drafts + 1]


def pad_trees(
    drafts: Sequence[Sequence[int]], parent_idx: Sequence[Sequence[int]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ragged trees as padded tensors: tokens [R, N] int64 (root and padding 0), parent_idx
    [R, N] int64 (-1 at roots and in padding), num_nodes [R] int64.

    drafts[r]: tree r's draft tokens in tree order (root excluded); parent_idx[r]: its parents,
    root included (one more entry than drafts[r]).
    Worked example: drafts [[5, 6], [9]], parents [[-1, 0, 0], [-1, 0]]
    -> tokens [[0, 5, 6], [0, 9, 0]], parent_idx [[-1, 0, 0], [-1, 0, -1]], num_nodes [3, 2].
    """
    sizes = [len(tree) + 1 for tree in drafts]
    width = max(sizes)
    tokens = torch.zeros((len(sizes), width), dtype=torch.int64)
    padded_parents = torch.full((len(sizes), width), -1, dtype=torch.int64)
    for i, (tree, parents) in enumerate(zip(drafts, parent_idx)):
        assert len(parents) == sizes[i], (i, list(tree), list(parents))
        padded_parents[i, : sizes[i]] = torch.tensor(parents)
        tokens[i, 1 : sizes[i]] = torch.tensor(tree)
    return tokens, padded_parents, torch.tensor(sizes)


def locate_roots(
    query_end: torch.Tensor, num_computed: torch.Tensor, num_scheduled: torch.Tensor,
    num_nodes: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch row and prefix length of every root: the root is the first of the request's
    num_nodes last scheduled tokens. All [R] int64.

    query_end: the batch row after the request's last scheduled token; num_computed: tokens
    already in its cache before the step; num_scheduled: tokens scheduled this step.
    Returns root_rows = query_end - num_nodes and prefix_lens = num_computed + num_scheduled
    - num_nodes (tokens in the cache before the root).
    Worked example: query_end [4, 10], computed [20, 30], scheduled [4, 6], nodes [3, 6]
    -> root_rows [1, 4], prefix_lens [21, 30].
    """
    return query_end - num_nodes, num_computed + num_scheduled - num_nodes


def node_rows(root_rows: torch.Tensor, num_nodes: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch row of every node, [R, N] int64 (padding repeats the root's row, so it is a valid
    row to read), and which entries are nodes, [R, N] bool.

    Worked example: root_rows [1, 4], num_nodes [3, 2], width 3
    -> rows [[1, 2, 3], [4, 5, 4]], is_node [[T, T, T], [T, T, F]].
    """
    offsets = torch.arange(width)
    is_node = offsets < num_nodes.unsqueeze(1)
    return root_rows.unsqueeze(1) + offsets * is_node, is_node


def node_positions(
    root_rows: torch.Tensor, num_nodes: torch.Tensor, parent_idx: torch.Tensor, prefix_lens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch row and RoPE position (prefix + depth) of every node, padding dropped: [T] each.

    Worked example: root_rows [1], num_nodes [4], parents [[-1, 0, 0, 1]], prefix [7]
    -> rows [1, 2, 3, 4], positions [7, 8, 8, 9].
    """
    rows, is_node = node_rows(root_rows, num_nodes, parent_idx.shape[1])
    positions = tree_positions(node_depths(parent_idx), prefix_lens)
    return rows[is_node], positions[is_node]


def chain_trees(parent_idx: torch.Tensor) -> torch.Tensor:
    """[R] bool: which trees are chains (every node's parent is the node before it; padding
    ignored), so that causal attention is already right for them.

    Worked example: parents [[-1, 0, 1, -1], [-1, 0, 0, 1]] -> [True, False].
    """
    parents = parent_idx[:, 1:]
    return ((parents == torch.arange(parent_idx.shape[1] - 1)) | (parents < 0)).all(1)


def branching_trees(parent_idx: torch.Tensor) -> torch.Tensor:
    """[R'] int64: the indices of the trees that are not chains, increasing.

    Worked example: parents [[-1, 0, 1], [-1, 0, 0], [-1, -1, -1]] -> [1].
    """
    return (~chain_trees(parent_idx)).nonzero().flatten()


def flatten_trees(
    tokens: torch.Tensor, parent_idx: torch.Tensor, num_nodes: torch.Tensor,
    tree_rows: torch.Tensor, num_draft_tokens: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every request of the batch as a tree, flat, in batch order: requests without drafts
    are lone roots (token 0, parent -1).

    tokens, parent_idx [R, N], num_nodes [R]: the trees; tree_rows [R] int64: each tree's
    batch row; num_draft_tokens [B] int64: drafts per request, as vLLM scheduled them (must
    agree with num_nodes). Returns tokens [T], parent_idx [T] (local to each request) and
    num_nodes [B].
    Worked example: B 3, one tree at row 1 with tokens [0, 5, 6], parents [-1, 0, 0];
    num_draft_tokens [0, 2, 0] -> tokens [0, 0, 5, 6, 0], parents [-1, -1, 0, 0, -1],
    num_nodes [1, 3, 1].
    """
    batch_num_nodes = num_draft_tokens + 1
    has_tree = torch.zeros(len(batch_num_nodes), dtype=torch.bool)
    has_tree[tree_rows] = True
    assert torch.equal(batch_num_nodes[tree_rows], num_nodes), (tree_rows, batch_num_nodes, num_nodes)
    assert bool((batch_num_nodes[~has_tree] == 1).all()), (tree_rows, batch_num_nodes)
    width = tokens.shape[1]
    batch_tokens = torch.zeros((len(batch_num_nodes), width), dtype=tokens.dtype)
    batch_parents = torch.full((len(batch_num_nodes), width), -1, dtype=parent_idx.dtype)
    batch_tokens[tree_rows] = tokens
    batch_parents[tree_rows] = parent_idx
    is_node = torch.arange(width) < batch_num_nodes.unsqueeze(1)
    return batch_tokens[is_node], batch_parents[is_node], batch_num_nodes


def accepted_moves(accepted_nodes: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Accepted nodes not yet where a chain would have them: (tree, source node, destination
    node), [M] int64 each, trees in order.

    accepted_nodes[r]: tree r's accepted path, tree indices root-down, root excluded (empty
    when nothing was accepted). Node t_j, the j-th of the path, moves to node j; t_j >= j
    always (parents precede children), so reading every source before writing is safe.
    Worked example: paths [(2, 5), (1, 2), (1, 3)] -> tree [0, 0, 2], src [2, 5, 3],
    dst [1, 2, 2].
    """
    tree, src, dst = [], [], []
    for i, path in enumerate(accepted_nodes):
        for j, node in enumerate(path, start=1):
            if node != j:
                tree.append(i)
                src.append(node)
                dst.append(j)
    as_tensor = lambda values: torch.tensor(values, dtype=torch.int64)  # noqa: E731
    return as_tensor(tree), as_tensor(src), as_tensor(dst)


def moved_positions(
    prefix_lens: torch.Tensor, tree: torch.Tensor, src: torch.Tensor, dst: torch.Tensor
) -> torch.Tensor:
    """[M, 2] int64: the cache positions (prefix + node index: one slot per node, in tree
    order) of each move's source and destination.

    Worked example: prefix_lens [7, 20], moves (tree 0: 2 -> 1), (0: 5 -> 2), (1: 3 -> 2)
    -> [[9, 8], [12, 9], [23, 22]].
    """
    return prefix_lens[tree].unsqueeze(1) + torch.stack([src, dst], dim=1)


def moved_rows(
    root_rows: torch.Tensor, tree: torch.Tensor, src: torch.Tensor, dst: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch rows (root row + node index) of each move's source and destination, [M] each.

    Worked example: root_rows [3, 10], moves (tree 0: 2 -> 1), (0: 5 -> 2), (1: 3 -> 2)
    -> sources [5, 8, 13], destinations [4, 5, 12].
    """
    rows = root_rows[tree]
    return rows + src, rows + dst
