"""The owed draft-KV ledger of undrafted steps (echo_vllm/core/owed_kv.py)."""

import torch

from echo_vllm.core.owed_kv import MAX_OWED_ROWS, OwedKv, OwedRows, OwedStep, owed_batch


def step(tokens: list[int]) -> OwedStep:
    """A step's first-pass inputs; hidden state of row i = [token, token]."""
    t = torch.tensor(tokens)
    return OwedStep(t, t.float().unsqueeze(1).repeat(1, 2))


def test_rows_of_consecutive_steps_join_and_a_recomputed_tail_replaces_them():
    owed = OwedRows(start=10)
    assert owed.add(10, step([1, 2, 3]), 0, 2)  # positions 10, 11
    assert owed.add(12, step([7, 8, 9]), 1, 3)  # positions 12, 13 (rows 1, 2)
    assert (owed.start, owed.end, owed.num_rows) == (10, 14, 4)
    tokens, hidden = owed.rows_before(13)
    assert tokens.tolist() == [1, 2, 8] and hidden[:, 0].tolist() == [1.0, 2.0, 8.0]
    # preemption recomputes from position 11: rows from there on are replaced
    assert owed.add(11, step([5, 6]), 0, 2)
    assert owed.rows_before(100)[0].tolist() == [1, 5, 6] and owed.end == 13


def test_a_hole_or_too_many_rows_gives_the_request_up():
    assert not OwedRows(start=4).add(5, step([1]), 0, 1)  # position 4 missing
    long = OwedRows(start=0)
    assert not long.add(0, step(list(range(MAX_OWED_ROWS + 1))), 0, MAX_OWED_ROWS + 1)


def test_ledger_owes_takes_and_forgets():
    ledger = OwedKv()
    ledger.owe(["a", "b"], step([1, 2, 3, 4, 5]), row_starts=[0, 2], row_ends=[2, 4], first_positions=[7, 3])
    assert ledger.num_rows(["a", "b", "c"]) == 4 and ledger.owing(["c", "b"]) == [1]
    # next drafted step: a's first position is 9 (both rows owed), b's is 4 (one row only
    # below it: its other row is being recomputed this step)
    batch = ledger.take(["a", "b"], [0, 1], first_positions=[9, 4])
    assert batch.batch_rows == [0, 1]
    assert batch.tokens.tolist() == [[1, 2], [3, 0]]
    assert batch.positions.tolist() == [[7, 8], [3, 3]]
    assert batch.valid.tolist() == [[True, True], [True, False]]
    assert batch.starts.tolist() == [7, 3]
    assert ledger.rows == {}
    ledger.owe(["c"], step([1]), [0], [1], [5])
    ledger.forget("c")
    assert ledger.rows == {} and not ledger.undraftable


def test_a_request_whose_rows_have_a_hole_becomes_undraftable():
    ledger = OwedKv()
    ledger.owe(["a"], step([1, 2]), [0], [2], [3])  # positions 3, 4 owed
    assert ledger.take(["a"], [0], first_positions=[8]) is None  # 5..7 missing
    assert ledger.undraftable == {"a"}
    ledger.owe(["a"], step([1]), [0], [1], [8])  # nothing kept for it any more
    assert ledger.rows == {}


def test_owed_batch_pads_to_a_power_of_two():
    chunks = [(5, torch.tensor([1, 2]), torch.ones(2, 3)), (9, torch.tensor([3, 4, 5]), torch.ones(3, 3))]
    batch = owed_batch([0, 2], chunks)
    assert batch.tokens.tolist() == [[1, 2, 0, 0], [3, 4, 5, 0]]
    assert batch.positions.tolist() == [[5, 6, 5, 5], [9, 10, 11, 9]]
    assert batch.valid.tolist() == [[True, True, False, False], [True, True, True, False]]
    assert batch.hidden.shape == (2, 4, 3) and batch.hidden[0, 2:].abs().sum() == 0
