"""Lossless verification of draft trees against the target.

Shape key: B requests, N nodes per request (node 0 = the root, the last committed token),
V vocabulary. Node i's target distribution p_i is the target's next-token distribution
after the path root..i, i.e. the distribution node i's children are drawn from.

One walk serves greedy and sampled requests alike: at the current node, take the target's
token x (its argmax when greedy; a sample from p when sampling); if a child carries x, accept
it and continue from it; otherwise emit x as the bonus token and stop.

Why this is ECHO's lossless tree rejection sampling: for deterministic drafts (top-k
children, as here) ECHO.md's recursive rule -- try the children in order, accept child c with
probability p(c) / (mass not yet rejected), remove rejected tokens, finally sample the bonus
from what is left -- accepts child c with probability exactly p(c) and otherwise emits x with
probability p(x) for every x that is not a child. Sampling x ~ p and matching it against the
children has the same law (accept c iff x = c: probability p(c); bonus x otherwise: p(x)),
so every emitted token is distributed exactly as the target's. It is also simpler, uses one
random draw per emitted token whatever the tree (a seeded request reproduces its tokens
whatever was drafted, the same draws as decoding without speculation), and never depends on
sibling order. tests/core/test_verify.py checks the law against ECHO.md's rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Verdict:
    """One request's outcome."""

    accepted_nodes: tuple[int, ...]  # tree indices of accepted nodes, root excluded, root-down
    accepted_tokens: tuple[int, ...]
    bonus_token: int

    @property
    def output_tokens(self) -> list[int]:
        """What the request commits this step: the accepted path, then the bonus token."""
        return [*self.accepted_tokens, self.bonus_token]


def children_lists(parent_idx: list[int]) -> list[list[int]]:
    """children[i] = tree indices of node i's children, in tree order."""
    children: list[list[int]] = [[] for _ in parent_idx]
    for node in range(1, len(parent_idx)):
        children[parent_idx[node]].append(node)
    return children


def verify_tree(
    tokens: list[int], parent_idx: list[int], target_token: Callable[[int], int]
) -> Verdict:
    """Walk one tree from its root. target_token(node) is the target's token at `node`
    (argmax or sample), asked once per emitted token. Draft tokens < 0 (placeholders) are
    never accepted, because the target's token never is negative."""
    children = children_lists(parent_idx)
    node, path = 0, []
    while True:
        token = target_token(node)
        child = next((c for c in children[node] if tokens[c] == token), None)
        if child is None:
            return Verdict(tuple(path), tuple(tokens[n] for n in path), token)
        path.append(child)
        node = child


def exponential_race(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """One sample of `probs` [V]: the argmax of probs / E with E ~ Exp(1) per token (the race
    vLLM's GPU sampler runs; P(token x wins) = probs[x])."""
    noise = torch.empty_like(probs).exponential_(generator=generator)
    return int((probs / noise).argmax())
