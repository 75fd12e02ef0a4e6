"""Tree expansion, selection, masks and positions on trees small enough to write out."""

import math

import torch

from echo_vllm.core.tree import (
    Frontier,
    Pool,
    Tree,
    ancestor_mask,
    child_visibility,
    best_nodes,
    chain_tree,
    deepest_and_widest,
    expand_frontier,
    node_depths,
    pool_depths,
    root_frontier,
    score_ranks,
    tree_from_chosen,
    tree_positions,
)


def log(*probs):
    return torch.tensor([math.log(p) for p in probs])


def top(logprobs, k):
    """The draft's k best tokens, as the proposer hands them to the core."""
    values, tokens = logprobs.topk(k, dim=-1)
    return values, tokens


def best_tree(pool, root_tokens, num_nodes, topk=2):
    """The verified set as the proposer selects it: the root plus each request's
    num_nodes - 1 best pool nodes."""
    depths = pool_depths(4, topk)[: pool.scores.shape[1]]  # the layout of every depth so far
    return tree_from_chosen(pool, root_tokens, best_nodes(pool.scores, num_nodes - 1), depths)


def test_root_frontier_takes_the_draft_top_k():
    frontier, pool = root_frontier(*top(log(0.1, 0.6, 0.3).unsqueeze(0), 2))
    assert frontier.tokens.tolist() == [[1, 2]]
    assert frontier.pool_idx.tolist() == [[0, 1]]
    assert pool.parent_idx.tolist() == [[-1, -1]]


def test_expand_frontier_keeps_the_best_children_by_cumulative_score():
    frontier, pool = root_frontier(*top(log(0.1, 0.6, 0.3).unsqueeze(0), 2))  # tokens 1 (.6), 2 (.3)
    # after token 1: children 0 (.5) and 2 (.4); after token 2: children 1 (.9) and 0 (.05)
    child_logprobs = torch.stack([log(0.5, 0.1, 0.4), log(0.05, 0.9, 0.05)]).unsqueeze(0)
    nxt, grown = expand_frontier(frontier, *top(child_logprobs, 2), pool)
    # candidate cumulative probs: .30, .24 (under token 1), .27, .015 (under token 2)
    assert grown.tokens.tolist() == [[1, 2, 0, 2, 1, 0]]
    assert grown.parent_idx.tolist() == [[-1, -1, 0, 0, 1, 1]]
    assert nxt.tokens.tolist() == [[0, 1]]  # .30 under token 1, then .27 under token 2
    assert nxt.pool_idx.tolist() == [[2, 4]]
    assert nxt.parent_pos.tolist() == [[0, 1]]
    assert torch.allclose(nxt.scores.exp(), torch.tensor([[0.30, 0.27]]))


def test_select_tree_is_connected_and_in_pool_order():
    frontier, pool = root_frontier(*top(log(0.1, 0.6, 0.3).unsqueeze(0), 2))
    child_logprobs = torch.stack([log(0.5, 0.1, 0.4), log(0.05, 0.9, 0.05)]).unsqueeze(0)
    _, pool = expand_frontier(frontier, *top(child_logprobs, 2), pool)
    # pool probs: [.6, .3, .30, .24, .27, .015]; best 4: pool 0, 1, 2, 4
    tree = best_tree(pool, root_tokens=torch.tensor([7]), num_nodes=torch.tensor([5]))
    assert tree.tokens.tolist() == [[7, 1, 2, 0, 1]]
    assert tree.parent_idx.tolist() == [[-1, 0, 0, 1, 2]]
    assert tree.depths.tolist() == [[0, 1, 1, 2, 2]]


def test_select_tree_sizes_differ_per_request_and_pad():
    frontier, pool = root_frontier(*top(torch.stack([log(0.1, 0.6, 0.3), log(0.7, 0.2, 0.1)]), 2))
    tree = best_tree(pool, root_tokens=torch.tensor([5, 6]), num_nodes=torch.tensor([3, 2]))
    assert tree.tokens.tolist() == [[5, 1, 2], [6, 0, 0]]
    assert tree.parent_idx.tolist() == [[-1, 0, 0], [-1, 0, -1]]
    assert tree.num_nodes.tolist() == [3, 2]


def test_ties_never_disconnect_the_tree():
    # a child with draft probability 1 ties its parent's score; the parent must come first
    frontier, pool = root_frontier(*top(log(0.5, 0.5, 1e-9).unsqueeze(0), 2))
    child_logprobs = torch.stack([log(1.0 - 2e-9, 1e-9, 1e-9)] * 2).unsqueeze(0)
    _, pool = expand_frontier(frontier, *top(child_logprobs, 2), pool)
    tree = best_tree(pool, torch.tensor([0]), torch.tensor([4]))
    parents = tree.parent_idx[0].tolist()
    assert all(0 <= parents[i] < i for i in range(1, 4)), parents


def test_tree_depths_are_the_depths_of_its_parent_links():
    g = torch.Generator().manual_seed(0)
    frontier, pool = root_frontier(*top(torch.randn(5, 50, generator=g).log_softmax(-1), 3))
    for _ in range(3):
        children = torch.randn(5, 3, 50, generator=g).log_softmax(-1)
        frontier, pool = expand_frontier(frontier, *top(children, 3), pool)
    tree = best_tree(pool, torch.zeros(5, dtype=torch.long), torch.tensor([1, 2, 5, 9, 14]), topk=3)
    assert tree.num_nodes.tolist() == [1, 2, 5, 9, 14]
    assert tree.depths.equal(node_depths(tree.parent_idx))
    assert int(tree.depths.max()) >= 2


def test_depths_mask_and_positions_worked_example():
    parents = torch.tensor([[-1, 0, 0, 1]])
    assert node_depths(parents).tolist() == [[0, 1, 1, 2]]
    mask = ancestor_mask(parents)[0].int().tolist()
    assert mask == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 1]]
    assert tree_positions(node_depths(parents), torch.tensor([7])).tolist() == [[7, 8, 8, 9]]


def test_chain_is_a_tree():
    parents = torch.tensor([[-1, 0, 1, 2]])
    assert ancestor_mask(parents)[0].equal(torch.ones(4, 4, dtype=torch.bool).tril())


def test_chain_tree_worked_example():
    pool = Pool(torch.tensor([[5, 6, 7]]), log(0.9, 0.5, 0.4).cumsum(0).unsqueeze(0), torch.tensor([[-1, 0, 1]]))
    tree = chain_tree(pool, torch.tensor([4]), torch.tensor([2]))
    assert tree.tokens.tolist() == [[4, 5, 6]]
    assert tree.parent_idx.tolist() == [[-1, 0, 1]]
    assert tree.depths.tolist() == [[0, 1, 2]]
    assert tree.pool_idx.tolist() == [[-1, 0, 1]]
    assert tree.num_nodes.tolist() == [3]


def test_chain_tree_is_the_tree_of_a_chains_chosen_prefix():
    g = torch.Generator().manual_seed(2)
    batch, steps = 5, 4
    frontier, pool = root_frontier(*top(torch.randn(batch, 10, generator=g).log_softmax(-1), 1))
    for _ in range(steps - 1):
        frontier, pool = expand_frontier(frontier, *top(torch.randn(batch, 1, 10, generator=g).log_softmax(-1), 1),
                                         pool)
    counts = torch.tensor([0, 4, 2, 1, 3])
    chosen = torch.arange(steps).expand(batch, steps) < counts.view(batch, 1)
    root_tokens = torch.arange(batch) + 100
    chain = chain_tree(pool, root_tokens, counts)
    tree = tree_from_chosen(pool, root_tokens, chosen, pool_depths(steps, 1))
    for field in ("tokens", "parent_idx", "depths", "num_nodes", "pool_idx"):
        assert torch.equal(getattr(chain, field), getattr(tree, field)), field


def test_tree_keeps_pool_positions_and_ranks_follow_scores():
    frontier, pool = root_frontier(*top(log(0.1, 0.6, 0.3).unsqueeze(0), 2))
    child_logprobs = torch.stack([log(0.5, 0.1, 0.4), log(0.05, 0.9, 0.05)]).unsqueeze(0)
    _, pool = expand_frontier(frontier, *top(child_logprobs, 2), pool)
    tree = best_tree(pool, root_tokens=torch.tensor([7]), num_nodes=torch.tensor([5]))
    assert tree.pool_idx.tolist() == [[-1, 0, 1, 2, 4]]
    # pool probs [.6, .3, .30, .24, .27, .015]: .3 (pool 1) and .30 (pool 2) tie in exact
    # arithmetic; log-space rounding decides, so only the clear ranks are checked
    ranks = score_ranks(pool.scores)[0].tolist()
    assert ranks[0] == 0 and ranks[4] == 3 and ranks[3] == 4 and ranks[5] == 5


def test_stopped_rows_get_placeholders_that_are_never_selected():
    frontier, pool = root_frontier(*top(torch.stack([log(0.1, 0.6, 0.3), log(0.7, 0.2, 0.1)]), 2))
    rows = torch.tensor([1])  # request 0 stopped growing
    child_logprobs = torch.stack([log(0.5, 0.1, 0.4), log(0.05, 0.9, 0.05)]).unsqueeze(0)
    only_row_1 = Frontier(*(getattr(frontier, f)[1:] for f in ("tokens", "scores", "pool_idx", "parent_pos")))
    _, pool = expand_frontier(only_row_1, *top(child_logprobs, 2), pool, rows=rows)
    assert pool.scores.shape == (2, 6)
    assert torch.isinf(pool.scores[0, 2:]).all() and torch.isfinite(pool.scores[1]).all()
    assert pool_depths(2, 2).tolist() == [1, 1, 2, 2, 2, 2]
    tree = best_tree(pool, torch.tensor([5, 6]), torch.tensor([6, 6]))
    assert tree.num_nodes.tolist() == [3, 6]  # request 0 has only its 2 depth-1 nodes
    assert tree.depths[0].tolist()[:3] == [0, 1, 1]


def test_ancestor_mask_of_a_deep_branching_tree_and_padding():
    # 0 - 1 - 3 - 5 - 6, and 0 - 2 - 4; node 7 is padding
    parents = torch.tensor([[-1, 0, 0, 1, 2, 3, 5, -1]])
    mask = ancestor_mask(parents)[0]
    sees = [set(torch.nonzero(row).flatten().tolist()) for row in mask]
    assert sees == [{0}, {0, 1}, {0, 2}, {0, 1, 3}, {0, 2, 4}, {0, 1, 3, 5}, {0, 1, 3, 5, 6}, {7}]


def test_child_visibility_takes_the_parents_row():
    visible = torch.tensor([[[True, False], [True, True]]])
    parents = torch.tensor([[1, 1, 0]])
    assert child_visibility(visible, parents).tolist() == [[[True, True], [True, True], [True, False]]]


def test_deepest_and_widest_worked_example():
    # request 0: root -> a -> (b, c); request 1: root -> d -> e -> f
    tree = Tree(tokens=torch.tensor([[0, 1, 2, 3], [0, 4, 5, 6]]),
                parent_idx=torch.tensor([[-1, 0, 1, 1], [-1, 0, 1, 2]]),
                depths=torch.tensor([[0, 1, 2, 2], [0, 1, 2, 3]]),
                num_nodes=torch.tensor([4, 4]), pool_idx=torch.tensor([[-1, 0, 2, 3], [-1, 0, 2, 6]]))
    assert deepest_and_widest(tree) == (3, 2)
    padded = Tree(*(t[:, :2] for t in (tree.tokens, tree.parent_idx, tree.depths)), torch.tensor([2, 2]),
                  tree.pool_idx[:, :2])
    assert deepest_and_widest(padded) == (1, 1)
    no_drafts = Tree(*(t[:, :1] for t in (tree.tokens, tree.parent_idx, tree.depths)), torch.tensor([1, 1]),
                     tree.pool_idx[:, :1])
    assert deepest_and_widest(no_drafts) == (0, 0)
