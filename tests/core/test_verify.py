"""Tree verification: greedy walks, and sampled verification reproduces the target exactly."""

import pytest
import torch

from echo_vllm.core.verify import verify_greedy, verify_sampled, verify_trees

# Trees of several shapes over a 6-token vocabulary: (tokens, parents); node 0 is the root.
STAR = ([9, 2, 0, 4], [-1, 0, 0, 0])
CHAIN = ([9, 2, 3, 1], [-1, 0, 1, 2])
BUSHY = ([9, 2, 0, 3, 1, 5, 2], [-1, 0, 0, 1, 1, 2, 3])
SHAPES = {"star": STAR, "chain": CHAIN, "bushy": BUSHY}


def test_greedy_follows_argmax_through_a_non_first_sibling():
    tokens, parents = BUSHY
    # root argmax 0 -> node 2 (second child), node 2's argmax 5 -> node 5, node 5 -> bonus 3
    argmax = [0, 3, 5, 4, 4, 3, 1]
    verdict = verify_greedy(tokens, parents, argmax)
    assert verdict.accepted_nodes == (2, 5)
    assert verdict.output_tokens == [0, 5, 3]


def test_greedy_rejects_everything_when_no_child_matches():
    verdict = verify_greedy(*STAR, target_argmax=[5, 0, 0, 0])
    assert verdict.accepted_nodes == () and verdict.output_tokens == [5]


def random_target(num_nodes, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_nodes, vocab, generator=g) * 1.5
    return logits.softmax(-1)


def chi2_pvalue(counts, probs):
    from scipy.stats import chisquare

    expected = probs * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "sampled a token of probability 0"
    return chisquare(counts[keep], expected[keep]).pvalue


@pytest.mark.parametrize("shape", SHAPES)
def test_sampled_first_token_has_the_target_distribution(shape):
    tokens, parents = SHAPES[shape]
    probs = random_target(len(tokens), vocab=6, seed=3)
    g = torch.Generator().manual_seed(11)
    counts = torch.zeros(6)
    for _ in range(12000):
        counts[verify_sampled(tokens, parents, probs, g).output_tokens[0]] += 1
    assert chi2_pvalue(counts, probs[0]) > 1e-3


@pytest.mark.parametrize("shape", ["chain", "bushy"])
def test_sampled_second_token_given_the_first_has_the_target_distribution(shape):
    # after the first token was accepted as child c, the next token must follow row c
    tokens, parents = SHAPES[shape]
    probs = random_target(len(tokens), vocab=6, seed=5)
    probs[0] = torch.tensor([0.1, 0.1, 0.5, 0.1, 0.1, 0.1])  # the root often takes token 2
    first_child = 1  # node 1 (token 2) is a child of the root in every shape
    g = torch.Generator().manual_seed(13)
    counts = torch.zeros(6)
    for _ in range(20000):
        out = verify_sampled(tokens, parents, probs, g)
        if out.accepted_nodes[:1] == (first_child,):
            counts[out.output_tokens[1]] += 1
    assert counts.sum() > 2000
    assert chi2_pvalue(counts, probs[first_child]) > 1e-3


def test_truncated_target_never_emits_removed_tokens():
    # top-k/top-p leave zeros: drafts of probability 0 are never accepted, bonus never sampled there
    tokens, parents = STAR
    probs = torch.tensor([[0.0, 0.0, 0.7, 0.0, 0.3, 0.0]] * 4)
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(6)
    for _ in range(3000):
        counts[verify_sampled(tokens, parents, probs, g).output_tokens[0]] += 1
    assert counts[[0, 1, 3, 5]].sum() == 0
    assert chi2_pvalue(counts, probs[0]) > 1e-3


def test_seeded_verification_repeats():
    tokens, parents = BUSHY
    probs = random_target(len(tokens), 6, seed=1)
    runs = [[verify_sampled(tokens, parents, probs, torch.Generator().manual_seed(42)).output_tokens
             for _ in range(1)] for _ in range(2)]
    assert runs[0] == runs[1]


def test_batch_mixes_greedy_and_sampled_requests_of_different_sizes():
    # flat layout: a star (4 nodes, greedy), a chain (4 nodes, sampled), a pair (2 nodes, greedy)
    tokens = torch.tensor(STAR[0] + CHAIN[0] + [9, 1])
    parents = torch.tensor(STAR[1] + CHAIN[1] + [-1, 0])
    logits = torch.full((10, 6), -10.0)
    logits[0, 4] = 10.0  # star root argmax 4 = node 3
    logits[3, 1] = 10.0  # node 3's argmax: the bonus token 1
    logits[4:8] = torch.log(torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 0.0]) + 1e-30)  # p(2) = 1
    logits[8, 1] = 10.0  # pair: accept node 1, then the bonus argmax of its row
    logits[9, 5] = 10.0
    verdicts = verify_trees(tokens, parents, torch.tensor([4, 8, 10]), logits,
                            is_greedy=[True, False, True], generators={})
    assert verdicts[0].output_tokens == [4, 1]
    assert verdicts[1].output_tokens == [2, 2]  # node 1 (token 2) accepted, node 2 (token 3) not
    assert verdicts[2].output_tokens == [1, 5]


def test_placeholder_drafts_are_never_accepted():
    probs = torch.full((3, 6), 1 / 6)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        assert verify_sampled([9, -1, -1], [-1, 0, 1], probs, g).accepted_nodes == ()
    assert verify_greedy([9, -1, -1], [-1, 0, 1], [5, 5, 5]).output_tokens == [5]
