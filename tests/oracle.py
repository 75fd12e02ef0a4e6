"""An oracle for echo's drafter, installed inside a running engine's worker.

A random-weight draft head is almost never right, so tree acceptance, non-first siblings and
KV compaction would go untested. The oracle keeps the tree the drafter built but rewrites its
tokens along one random root-to-node path with the target's known greedy continuation (from a
reference run without speculation). The path's nodes are picked among siblings at random
(often not the first), and it stops at a random depth, so acceptance lengths vary. Only draft
tokens change: a correct echo must still reproduce the reference exactly.
"""

from __future__ import annotations

import dataclasses
import random


def _rewrite(tokens: list[int], parents: list[int], future: list[int], rng: random.Random) -> list[int]:
    """Put future[d-1] on one node at each depth d of a random path; siblings stay distinct."""
    children: dict[int, list[int]] = {}
    for node in range(1, len(tokens)):
        children.setdefault(parents[node], []).append(node)
    node, depth = 0, 0
    stop = rng.randint(0, len(tokens))
    while node in children and depth < min(stop, len(future)):
        siblings = children[node]
        chosen = rng.choice(siblings)
        wanted = future[depth]
        for other in siblings:
            if other != chosen and tokens[other] == wanted:
                tokens[other] = tokens[chosen]  # keep siblings distinct: swap
        tokens[chosen] = wanted
        node, depth = chosen, depth + 1
    return tokens


def install_oracle(llm, references: dict[tuple[int, ...], list[int]], seed: int = 0) -> None:
    """Make the engine's drafter put the reference continuation into its trees."""

    def install(wrapper):
        runner = wrapper.model_runner
        drafter = runner.drafter
        original_expand = type(drafter)._expand
        rng = random.Random(seed)

        def expand(self, *args, **kwargs):
            drafted = original_expand(self, *args, **kwargs)
            tree = drafted.tree
            tokens = tree.tokens.clone()
            for row, req_id in enumerate(runner.input_batch.req_ids):
                state = runner.requests[req_id]
                reference = references.get(tuple(state.prompt_token_ids))
                if reference is None:
                    continue
                future = reference[len(state.output_token_ids):]
                n = int(tree.num_nodes[row])
                rewritten = _rewrite(tokens[row, :n].tolist(), tree.parent_idx[row, :n].tolist(), future, rng)
                tokens[row, :n] = tokens.new_tensor(rewritten)
            return dataclasses.replace(drafted, tree=dataclasses.replace(tree, tokens=tokens))

        drafter._expand = expand.__get__(drafter)

    llm.collective_rpc(install)
