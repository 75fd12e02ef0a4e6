"""A step's index arithmetic on one small batch, expected tensors written out.

The batch: 4 requests; rows 0 and 2 have no drafts (1 token each); row 1 verifies a branching
tree of 5 nodes, row 3 a chain of 3 nodes (padded to 5). Batch rows: request 0 at 0, request
1 at 1-5, request 2 at 6, request 3 at 7-9.

    tree 0 (row 1):  0 ─┬─ 1 ── 3        tree 1 (row 3):  0 ── 1 ── 2
                        └─ 2 ── 4
"""

import pytest
import torch

from echo_vllm.core.commit import (
    accepted_moves,
    branching_trees,
    chain_parents,
    chain_trees,
    flatten_trees,
    locate_roots,
    moved_positions,
    moved_rows,
    node_positions,
    node_rows,
    pad_trees,
    scheduled_parents,
)

DRAFTS = [[11, 12, 13, 14], [21, 22]]
PARENTS = [[-1, 0, 0, 1, 2], [-1, 0, 1]]
TOKENS_PADDED = torch.tensor([[0, 11, 12, 13, 14], [0, 21, 22, 0, 0]])
PARENTS_PADDED = torch.tensor([[-1, 0, 0, 1, 2], [-1, 0, 1, -1, -1]])
NUM_NODES = torch.tensor([5, 3])
ROOT_ROWS = torch.tensor([1, 7])
PREFIX_LENS = torch.tensor([40, 12])


def ints(*values):
    return torch.tensor(values, dtype=torch.int64)


def test_chain_parents():
    assert chain_parents(4) == [-1, 0, 1, 2]
    assert chain_parents(1) == [-1]


def test_scheduled_parents_cut_the_drafted_tree_or_fall_back_to_a_chain():
    drafted, parents = DRAFTS[0], PARENTS[0]
    assert scheduled_parents(drafted, parents, [11, 12, 13, 14]) == [-1, 0, 0, 1, 2]
    assert scheduled_parents(drafted, parents, [11, 12]) == [-1, 0, 0]  # cut by the scheduler
    assert scheduled_parents(drafted, parents, [11, 99]) == [-1, 0, 1]  # not echo's drafts
    assert scheduled_parents(None, None, [5, 6, 7]) == [-1, 0, 1, 2]  # nothing drafted
    assert scheduled_parents(drafted, parents, []) == [-1]


def test_pad_trees():
    tokens, parent_idx, num_nodes = pad_trees(DRAFTS, PARENTS)
    assert tokens.equal(TOKENS_PADDED)
    assert parent_idx.equal(PARENTS_PADDED)
    assert num_nodes.equal(NUM_NODES)
    assert tokens.dtype == parent_idx.dtype == num_nodes.dtype == torch.int64


def test_locate_roots():
    # requests 1 and 3 end at batch rows 6 and 10; request 1 had 40 tokens cached and 5
    # scheduled, request 3 had 10 cached and 5 scheduled (2 catch-up tokens, then its tree)
    root_rows, prefix_lens = locate_roots(ints(6, 10), ints(40, 10), ints(5, 5), NUM_NODES)
    assert root_rows.equal(ROOT_ROWS)
    assert prefix_lens.equal(PREFIX_LENS)


def test_node_rows_padding_repeats_the_root_row():
    rows, is_node = node_rows(ROOT_ROWS, NUM_NODES, 5)
    assert rows.equal(torch.tensor([[1, 2, 3, 4, 5], [7, 8, 9, 7, 7]]))
    assert is_node.equal(torch.tensor([[True] * 5, [True, True, True, False, False]]))


def test_node_positions_are_prefix_plus_depth_at_node_rows():
    rows, positions = node_positions(ROOT_ROWS, NUM_NODES, PARENTS_PADDED, PREFIX_LENS)
    assert rows.equal(ints(1, 2, 3, 4, 5, 7, 8, 9))
    assert positions.equal(ints(40, 41, 41, 42, 42, 12, 13, 14))


def test_chain_trees_and_branching_trees():
    assert chain_trees(PARENTS_PADDED).equal(torch.tensor([False, True]))
    assert branching_trees(PARENTS_PADDED).equal(ints(0))
    parents = torch.tensor([[-1, 0, 1], [-1, 0, 0], [-1, -1, -1], [-1, 0, -1]])
    assert chain_trees(parents).equal(torch.tensor([True, False, True, True]))
    assert branching_trees(parents).equal(ints(1))
    assert chain_trees(torch.tensor([[-1], [-1]])).equal(torch.tensor([True, True]))  # lone roots


def test_flatten_trees_puts_lone_roots_between_the_trees():
    tokens, parent_idx, num_nodes = flatten_trees(
        TOKENS_PADDED, PARENTS_PADDED, NUM_NODES, ints(1, 3), ints(0, 4, 0, 2)
    )
    assert tokens.equal(ints(0, 0, 11, 12, 13, 14, 0, 0, 21, 22))
    assert parent_idx.equal(ints(-1, -1, 0, 0, 1, 2, -1, -1, 0, 1))
    assert num_nodes.equal(ints(1, 5, 1, 3))


def test_flatten_trees_every_request_drafted():
    tokens, parent_idx, num_nodes = flatten_trees(TOKENS_PADDED, PARENTS_PADDED, NUM_NODES, ints(0, 1), ints(4, 2))
    assert tokens.equal(ints(0, 11, 12, 13, 14, 0, 21, 22))
    assert parent_idx.equal(ints(-1, 0, 0, 1, 2, -1, 0, 1))
    assert num_nodes.equal(ints(5, 3))


def test_flatten_trees_refuses_counts_that_disagree_with_the_trees():
    with pytest.raises(AssertionError):  # tree 0 has 5 nodes, vLLM scheduled 3 drafts
        flatten_trees(TOKENS_PADDED, PARENTS_PADDED, NUM_NODES, ints(1, 3), ints(0, 3, 0, 2))
    with pytest.raises(AssertionError):  # row 0 has drafts but no tree
        flatten_trees(TOKENS_PADDED, PARENTS_PADDED, NUM_NODES, ints(1, 3), ints(1, 4, 0, 2))


def test_accepted_moves_on_a_non_first_sibling():
    # tree 0 accepted 2 then 4 (the second branch): 2 -> 1, 4 -> 2; the chain moves nothing
    tree, src, dst = accepted_moves([(2, 4), (1, 2)])
    assert tree.equal(ints(0, 0)) and src.equal(ints(2, 4)) and dst.equal(ints(1, 2))
    tree, src, dst = accepted_moves([(), (2, 5), (1, 3)])
    assert tree.equal(ints(1, 1, 2)) and src.equal(ints(2, 5, 3)) and dst.equal(ints(1, 2, 2))


def test_accepted_moves_none():
    for paths in ([(1,), (1, 2)], [(), ()], []):
        tree, src, dst = accepted_moves(paths)
        assert tree.shape == src.shape == dst.shape == (0,)
        assert tree.dtype == src.dtype == dst.dtype == torch.int64


def test_moved_positions_and_rows():
    tree, src, dst = ints(0, 0), ints(2, 4), ints(1, 2)
    assert moved_positions(PREFIX_LENS, tree, src, dst).equal(torch.tensor([[42, 41], [44, 42]]))
    src_rows, dst_rows = moved_rows(ROOT_ROWS, tree, src, dst)
    assert src_rows.equal(ints(3, 5)) and dst_rows.equal(ints(2, 3))
    tree, src, dst = ints(0, 1), ints(3, 2), ints(2, 1)
    assert moved_positions(PREFIX_LENS, tree, src, dst).equal(torch.tensor([[43, 42], [14, 13]]))
    src_rows, dst_rows = moved_rows(ROOT_ROWS, tree, src, dst)
    assert src_rows.equal(ints(4, 9)) and dst_rows.equal(ints(3, 8))


def test_no_moves():
    tree, src, dst = accepted_moves([])
    assert moved_positions(PREFIX_LENS, tree, src, dst).shape == (0, 2)
    src_rows, dst_rows = moved_rows(ROOT_ROWS, tree, src, dst)
    assert src_rows.shape == dst_rows.shape == (0,)
