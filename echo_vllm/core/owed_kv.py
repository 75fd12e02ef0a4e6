"""The draft KV that undrafted steps owe, and the batched pass that writes it later.

A step echo does not draft skips even the draft's first pass, which writes the draft KV of
the tokens the step committed. Its first-pass inputs (shifted token ids, combined target
hidden states) are kept instead, one copy per step shared by its requests (`OwedStep`), and
each request keeps the row ranges it owes (`OwedRows`). Before a request's next drafted step,
its owed rows go through one batched draft-layer pass (`owed_batch` lays them out) that
writes their draft KV. A request that finishes in between never pays for it. A request whose
owed rows would leave a hole (a missing step) or exceed MAX_OWED_ROWS is given up: it drafts
nothing until it finishes.

Shape key: T tokens of one step, Hd draft hidden size, C requests caught up, W padded rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# Draft-KV rows one request may owe from steps that were not drafted. Beyond it the rows are
# dropped and the request drafts nothing until it finishes (its draft KV has a hole); this
# bounds the memory kept whatever the load does: the inputs of the latest MAX_OWED_ROWS
# undrafted steps at most, each kept once for all its requests.
MAX_OWED_ROWS = 256


@dataclass(frozen=True)
class OwedStep:
    """The first-pass inputs of one undrafted step, all its rows: shifted input ids [T] and
    combined target hidden states [T, Hd]."""

    tokens: torch.Tensor
    hidden: torch.Tensor


@dataclass
class OwedRows:
    """First-pass inputs of one request's rows whose draft KV was not written (steps not
    drafted): consecutive positions start..end-1, as row ranges of the steps' inputs."""

    start: int
    end: int = field(init=False)
    chunks: list[tuple[OwedStep, int, int]] = field(default_factory=list)  # (step, first row, end row)

    def __post_init__(self):
        self.end = self.start

    def add(self, first: int, step: OwedStep, row_start: int, row_end: int) -> bool:
        """The step's rows row_start..row_end-1, at positions first, first+1, ... Rows already
        owed from `first` on are replaced (a request recomputed after preemption). False when
        the owed rows would leave a hole or exceed MAX_OWED_ROWS: the caller gives the request up."""
        if first > self.end:
            return False
        if first < self.end:
            tokens, hidden = self.rows_before(first)
            self.chunks, self.start = [(OwedStep(tokens, hidden), 0, len(tokens))], min(self.start, first)
        self.chunks.append((step, row_start, row_end))
        self.end = first + row_end - row_start
        return self.num_rows <= MAX_OWED_ROWS

    @property
    def num_rows(self) -> int:
        return self.end - self.start

    def rows_before(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The owed rows at positions below `position`: tokens [n], hidden [n, Hd]."""
        count = max(0, min(position, self.end) - self.start)
        tokens = torch.cat([step.tokens[a:b] for step, a, b in self.chunks])
        hidden = torch.cat([step.hidden[a:b] for step, a, b in self.chunks])
        return tokens[:count], hidden[:count]


@dataclass(frozen=True)
class OwedBatch:
    """Owed rows of C requests laid out for one draft-layer pass, padded to W rows each."""

    batch_rows: list[int]  # [C] batch row of each request
    tokens: torch.Tensor  # [C, W] int64, padding 0
    hidden: torch.Tensor  # [C, W, Hd], padding 0
    positions: torch.Tensor  # [C, W] int64, start + row; padding repeats the start
    valid: torch.Tensor  # [C, W] bool, False in padding
    starts: torch.Tensor  # [C] int64, first owed position (= the draft-KV prefix before it)


class OwedKv:
    """By request id: the rows owed, and the requests given up (a hole in their draft KV)."""

    def __init__(self):
        self.rows: dict[str, OwedRows] = {}
        self.undraftable: set[str] = set()

    def num_rows(self, req_ids: list[str]) -> int:
        return sum(self.rows[req_id].num_rows for req_id in req_ids if req_id in self.rows)

    def owing(self, req_ids: list[str]) -> list[int]:
        """Batch rows of the requests that owe rows."""
        return [row for row, req_id in enumerate(req_ids) if req_id in self.rows]

    def owe(self, req_ids: list[str], step: OwedStep, row_starts: list[int], row_ends: list[int],
            first_positions: list[int]) -> None:
        """An undrafted step: request i owes the step's rows row_starts[i]..row_ends[i]-1, at
        positions first_positions[i], first_positions[i]+1, ..."""
        for req_id, start, end, first in zip(req_ids, row_starts, row_ends, first_positions):
            if req_id in self.undraftable:
                continue
            owed = self.rows.get(req_id)
            if owed is None:
                owed = self.rows[req_id] = OwedRows(first)
            if not owed.add(first, step, start, end):
                del self.rows[req_id]
                self.undraftable.add(req_id)

    def take(self, req_ids: list[str], rows: list[int], first_positions: list[int]) -> OwedBatch | None:
        """The owed rows below each request's first position this step (batch rows `rows`),
        removed from the ledger and laid out for one pass; None when nothing is left to write.

        Rows are padded to a power of two: each new pass shape costs the CPU's GEMM library a
        new kernel (tens of ms the first time), and the owed counts vary from step to step.
        Worked example: owed (start 5: 2 rows), (start 9: 3 rows) -> W 4, positions
        [[5, 6, 5, 5], [9, 10, 11, 9]], valid [[T, T, F, F], [T, T, T, F]].
        """
        batch_rows, chunks = [], []
        for row, first in zip(rows, first_positions):
            owed = self.rows.pop(req_ids[row])
            if owed.end < first:  # rows missing in between: the draft KV has a hole
                self.undraftable.add(req_ids[row])
                continue
            tokens, hidden = owed.rows_before(first)
            if len(tokens):
                batch_rows.append(row)
                chunks.append((owed.start, tokens, hidden))
        if not chunks:
            return None
        return owed_batch(batch_rows, chunks)

    def forget(self, req_id: str) -> None:
        """A finished request: nothing is owed for it any more."""
        self.rows.pop(req_id, None)
        self.undraftable.discard(req_id)


def owed_batch(batch_rows: list[int], chunks: list[tuple[int, torch.Tensor, torch.Tensor]]) -> OwedBatch:
    """chunks: (first position, tokens [n], hidden [n, Hd]) per request, laid out [C, W]."""
    width = 1 << (max(len(tokens) for _, tokens, _ in chunks) - 1).bit_length()
    count, first_hidden = len(chunks), chunks[0][2]
    device = first_hidden.device
    tokens = torch.zeros(count, width, dtype=torch.long, device=device)
    hidden = torch.zeros(count, width, first_hidden.shape[-1], dtype=first_hidden.dtype, device=device)
    for i, (_, t, h) in enumerate(chunks):
        tokens[i, : len(t)], hidden[i, : len(t)] = t, h
    lengths = torch.tensor([len(t) for _, t, _ in chunks], device=device)
    starts = torch.tensor([start for start, _, _ in chunks], device=device)
    offsets = torch.arange(width, device=device)
    valid = offsets < lengths.view(-1, 1)
    positions = starts.view(-1, 1) + offsets * valid
    return OwedBatch(batch_rows, tokens, hidden, positions, valid, starts)
