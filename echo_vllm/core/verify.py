"""Lossless verification of draft trees against the target's distributions.

Shape key: B requests, N nodes per request (node 0 = the root, the last committed token),
V vocabulary. Row i of a request's target distributions is the target's next-token
distribution after the path root..i, i.e. the distribution node i's children are drawn from.

Sampled requests use recursive rejection for deterministic drafts: at a node with target
distribution p, try its children in tree order; accept child c with probability
p(c) / (mass of p not yet rejected); on rejection remove c from p. When no child is accepted,
sample the bonus token from what is left of p. Because which children exist and their order
depend only on the draft (never on p), every emitted token is distributed exactly as p: the
output distribution equals the target's. Greedy requests accept the child equal to argmax p.
"""

from __future__ import annotations

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


def children_lists(parent_idx: list[int], num_nodes: int) -> list[list[int]]:
    """children[i] = tree indices of node i's children, in tree (draft) order."""
    children: list[list[int]] = [[] for _ in range(num_nodes)]
    for node in range(1, num_nodes):
        children[parent_idx[node]].append(node)
    return children


def verify_greedy(tokens: list[int], parent_idx: list[int], target_argmax: list[int]) -> Verdict:
    """Walk from the root taking the child whose token is the target's argmax."""
    children = children_lists(parent_idx, len(tokens))
    node, path = 0, []
    while True:
        best = target_argmax[node]
        nxt = next((c for c in children[node] if tokens[c] == best), None)
        if nxt is None:
            return Verdict(tuple(path), tuple(tokens[n] for n in path), best)
        path.append(nxt)
        node = nxt


def verify_sampled(
    tokens: list[int],
    parent_idx: list[int],
    target_probs: torch.Tensor,
    generator: torch.Generator | None,
) -> Verdict:
    """Recursive rejection sampling down one tree. target_probs [N, V], rows sum to 1.

    Draws one uniform per child tried and one categorical sample for the bonus token, all
    from `generator` (the request's own when it has a seed, else the global one).
    """
    children = children_lists(parent_idx, len(tokens))
    node, path = 0, []
    while True:
        probs = target_probs[node]
        # a negative draft token is a placeholder, never a real child
        kids = [c for c in children[node] if tokens[c] >= 0]
        kid_probs = probs[[tokens[c] for c in kids]].tolist() if kids else []
        remaining = 1.0  # mass of p not yet removed by rejected children
        accepted = None
        for child, p_child in zip(kids, kid_probs):
            u = torch.rand((), generator=generator).item()
            # p_child >= remaining: the child holds all that is left (up to rounding)
            if u * remaining < p_child or p_child >= remaining:
                accepted = child
                break
            remaining -= p_child
        if accepted is None:
            return Verdict(tuple(path), tuple(tokens[n] for n in path),
                           _sample_residual(probs, [tokens[c] for c in kids], generator))
        path.append(accepted)
        node = accepted


def _sample_residual(
    probs: torch.Tensor, rejected_tokens: list[int], generator: torch.Generator | None
) -> int:
    residual = probs.clone()
    residual[rejected_tokens] = 0.0
    if float(residual.sum()) <= 0.0:  # only through rounding: all mass sat on rejected drafts
        return int(probs.argmax())
    return int(torch.multinomial(residual, 1, generator=generator))


def verify_trees(
    tokens: torch.Tensor,
    parent_idx: torch.Tensor,
    cu_num_nodes: torch.Tensor,
    target_logits: torch.Tensor,
    is_greedy: list[bool],
    generators: dict[int, torch.Generator],
) -> list[Verdict]:
    """Verify a batch of trees, each request by its own rule.

    Flat layout, T = total nodes: tokens, parent_idx [T] (parents local to their request,
    -1 at its root); cu_num_nodes [B] inclusive cumulative node counts, e.g. trees of 4, 1
    and 3 nodes -> [4, 5, 8]; target_logits [T, V]: the target's logits with each request's
    sampling constraints applied (temperature, top-k, top-p; unchanged for greedy requests,
    whose argmax is taken on them directly). generators: request -> its seeded generator.
    """
    ends = cu_num_nodes.tolist()
    starts = [0, *ends[:-1]]
    tokens_l, parents_l = tokens.tolist(), parent_idx.tolist()
    argmax_l = target_logits.argmax(dim=-1).tolist() if any(is_greedy) else None
    verdicts = []
    for row, (start, end) in enumerate(zip(starts, ends)):
        tree_tokens, tree_parents = tokens_l[start:end], parents_l[start:end]
        if is_greedy[row]:
            verdicts.append(verify_greedy(tree_tokens, tree_parents, argmax_l[start:end]))
        else:
            probs = target_logits[start:end].float().softmax(dim=-1)
            verdicts.append(verify_sampled(tree_tokens, tree_parents, probs, generators.get(row)))
    return verdicts
