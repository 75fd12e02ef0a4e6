"""Tree verification: greedy walks, and sampled verification reproduces the target exactly,
with the same law as ECHO.md's recursive rejection rule."""

from collections import Counter

import pytest
import torch
from scipy.stats import chisquare

from echo_vllm.core.verify import exponential_race, verify_tree

# Trees of several shapes over a 6-token vocabulary: (tokens, parents); node 0 is the root.
STAR = ([9, 2, 0, 4], [-1, 0, 0, 0])
CHAIN = ([9, 2, 3, 1], [-1, 0, 1, 2])
BUSHY = ([9, 2, 0, 3, 1, 5, 2], [-1, 0, 0, 1, 1, 2, 3])
SHAPES = {"star": STAR, "chain": CHAIN, "bushy": BUSHY}


def argmax_of(table):
    return lambda node: table[node]


def sampler(probs, generator):
    return lambda node: int(torch.multinomial(probs[node], 1, generator=generator))


def test_greedy_follows_argmax_through_a_non_first_sibling():
    tokens, parents = BUSHY
    # root argmax 0 -> node 2 (second child); node 2's argmax 5 -> node 5; node 5 -> bonus 3
    verdict = verify_tree(tokens, parents, argmax_of([0, 3, 5, 4, 4, 3, 1]))
    assert verdict.accepted_nodes == (2, 5)
    assert verdict.output_tokens == [0, 5, 3]


def test_greedy_rejects_everything_when_no_child_matches():
    verdict = verify_tree(*STAR, argmax_of([5, 0, 0, 0]))
    assert verdict.accepted_nodes == () and verdict.output_tokens == [5]


def test_placeholder_drafts_are_never_accepted():
    assert verify_tree([9, -1, -1], [-1, 0, 1], argmax_of([5, 5, 5])).output_tokens == [5]


def test_one_target_token_is_asked_per_emitted_token():
    asked = []
    verdict = verify_tree(*CHAIN, lambda node: asked.append(node) or [2, 3, 0, 0][node])
    assert asked == [0, 1, 2] and verdict.output_tokens == [2, 3, 0]


def random_target(num_nodes, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(num_nodes, vocab, generator=g) * 1.5).softmax(-1)


def echo_md_rule(tokens, parents, probs, generator):
    """ECHO.md's recursive rejection rule, written out literally: the law to match."""
    children = [[c for c in range(1, len(tokens)) if parents[c] == n] for n in range(len(tokens))]
    node, out = 0, []
    while True:
        p = probs[node].clone()
        for child in children[node]:
            if torch.rand((), generator=generator) < p[tokens[child]]:
                out.append(tokens[child])
                node = child
                break
            p[tokens[child]] = 0.0
            p = p / p.sum()
        else:
            out.append(int(torch.multinomial(p, 1, generator=generator)))
            return tuple(out)


@pytest.mark.parametrize("shape", SHAPES)
def test_sampled_outcomes_have_the_law_of_echo_md_rule(shape):
    # the joint law of (accepted path, bonus token): two independent samples, one law
    tokens, parents = SHAPES[shape]
    probs = random_target(len(tokens), vocab=6, seed=3)
    probs[0] = torch.tensor([0.25, 0.05, 0.3, 0.1, 0.2, 0.1])  # children of the root are likely
    g_ours, g_rule = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    ours = Counter(tuple(verify_tree(tokens, parents, sampler(probs, g_ours)).output_tokens) for _ in range(6000))
    rule = Counter(echo_md_rule(tokens, parents, probs, g_rule) for _ in range(6000))
    outcomes = sorted(set(ours) | set(rule))
    table = torch.tensor([[ours[o] for o in outcomes], [rule[o] for o in outcomes]], dtype=torch.float64)
    frequent = table.sum(0) >= 20
    from scipy.stats import chi2_contingency

    assert chi2_contingency(table[:, frequent].numpy()).pvalue > 1e-3


def chi2_pvalue(counts, probs):
    expected = probs * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "emitted a token of probability 0"
    return chisquare(counts[keep], expected[keep]).pvalue


@pytest.mark.parametrize("shape", SHAPES)
def test_sampled_first_token_has_the_target_distribution(shape):
    tokens, parents = SHAPES[shape]
    probs = random_target(len(tokens), vocab=6, seed=3)
    g = torch.Generator().manual_seed(11)
    counts = torch.zeros(6)
    for _ in range(8000):
        counts[verify_tree(tokens, parents, sampler(probs, g)).output_tokens[0]] += 1
    assert chi2_pvalue(counts, probs[0]) > 1e-3


@pytest.mark.parametrize("shape", ["chain", "bushy"])
def test_sampled_second_token_given_the_first_has_the_target_distribution(shape):
    tokens, parents = SHAPES[shape]
    probs = random_target(len(tokens), vocab=6, seed=5)
    probs[0] = torch.tensor([0.1, 0.1, 0.5, 0.1, 0.1, 0.1])  # the root often takes token 2
    g = torch.Generator().manual_seed(13)
    counts = torch.zeros(6)
    for _ in range(8000):
        out = verify_tree(tokens, parents, sampler(probs, g))
        if out.accepted_nodes[:1] == (1,):  # node 1 (token 2) is a child of the root
            counts[out.output_tokens[1]] += 1
    assert counts.sum() > 2000
    assert chi2_pvalue(counts, probs[1]) > 1e-3


def test_truncated_target_never_emits_removed_tokens():
    probs = torch.tensor([[0.0, 0.0, 0.7, 0.0, 0.3, 0.0]] * 4)
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(6)
    for _ in range(3000):
        counts[verify_tree(*STAR, sampler(probs, g)).output_tokens[0]] += 1
    assert chi2_pvalue(counts, probs[0]) > 1e-3


def test_exponential_race_samples_the_distribution():
    probs = torch.tensor([0.05, 0.5, 0.0, 0.25, 0.2])
    g = torch.Generator().manual_seed(3)
    counts = torch.zeros(5)
    for _ in range(6000):
        counts[exponential_race(probs, g)] += 1
    assert chi2_pvalue(counts, probs) > 1e-3
