"""Tree verification as vLLM's sampler sees it: greedy outputs packed like the rejection
sampler's, per-node sampling constraints, logprob rows, and a lossless sampled row."""

import math

import pytest
import torch
from scipy.stats import chisquare
from vllm.v1.sample import sampler as vllm_sampler
from vllm.v1.sample.logits_processor import LogitsProcessors
from vllm.v1.sample.metadata import SamplingMetadata
from vllm.v1.sample.sampler import Sampler

from echo_vllm.tree_sampler import constrained_logits, sample_trees

V = 4  # vocabulary


def sampling_metadata(temperature, top_k=None, top_p=None, generators=None, max_num_logprobs=None):
    """A batch's SamplingMetadata as vLLM's input batch builds it, without penalties."""
    batch = len(temperature)
    temperature = torch.tensor(temperature, dtype=torch.float32)
    return SamplingMetadata(
        temperature=temperature,
        all_greedy=bool((temperature == 0).all()),
        all_random=bool((temperature != 0).all()),
        top_p=None if top_p is None else torch.tensor(top_p, dtype=torch.float32),
        top_k=None if top_k is None else torch.tensor(top_k, dtype=torch.int32),
        generators=generators or {},
        max_num_logprobs=max_num_logprobs,
        no_penalties=True,
        prompt_token_ids=None,
        frequency_penalties=torch.zeros(batch),
        presence_penalties=torch.zeros(batch),
        repetition_penalties=torch.ones(batch),
        output_token_ids=[[] for _ in range(batch)],
        allowed_token_ids_mask=None,
        bad_words_token_ids={},
        logitsprocs=LogitsProcessors(),
    )


@pytest.fixture
def eager_ranks(monkeypatch):
    """vLLM's rank count is torch.compile'd (~15 s to compile on CPU): run the same function
    eagerly."""
    compiled = vllm_sampler.batched_count_greater_than
    monkeypatch.setattr(vllm_sampler, "batched_count_greater_than", compiled._torchdynamo_orig_callable)


def logits_with_argmax(argmax_per_node):
    """[T, V] logits whose row t has its maximum at argmax_per_node[t]."""
    return torch.nn.functional.one_hot(torch.tensor(argmax_per_node), V).float() * 4.0


def flat(trees):
    """(tokens, parents) per request -> flat tokens, parent_idx [T] and num_nodes [B]."""
    tokens = torch.tensor([t for tree_tokens, _ in trees for t in tree_tokens])
    parents = torch.tensor([p for _, tree_parents in trees for p in tree_parents])
    return tokens, parents, torch.tensor([len(tree_tokens) for tree_tokens, _ in trees])


LONE_ROOT = ([3], [-1])
CHAIN = ([0, 2, 3], [-1, 0, 1])
BRANCHING = ([1, 1, 2, 3, 0], [-1, 0, 0, 2, 2])  # root -> {1, 2}, node 2 -> {3, 4}


def test_greedy_batch_packs_accepted_path_then_bonus_left_aligned():
    tokens, parents, num_nodes = flat([LONE_ROOT, CHAIN, BRANCHING])
    logits = logits_with_argmax([
        2,  # lone root: bonus 2
        2, 3, 1,  # chain: accept node 1 (2), node 2 (3), bonus 1
        2, 0, 0, 3, 1,  # branching: root -> node 2 (2nd child), node 2 -> node 4 (0), bonus 1
    ])
    out, verdicts = sample_trees(Sampler(), logits, tokens, parents, num_nodes, sampling_metadata([0.0] * 3))
    assert out.sampled_token_ids.dtype == torch.int32
    assert out.sampled_token_ids.tolist() == [[2, -1, -1], [2, 3, 1], [2, 0, 1]]
    assert [v.accepted_nodes for v in verdicts] == [(), (1, 2), (2, 4)]
    assert out.logprobs_tensors is None


def test_constrained_logits_expand_temperature_top_k_top_p_per_node():
    # requests of 1, 2 and 1 nodes: greedy; temperature 2 + top-k 2; top-p 0.6
    logits = torch.tensor([
        [1.0, 3.0, 2.0, 0.0],
        [4.0, 2.0, 0.0, -2.0],
        [0.0, 2.0, 6.0, 4.0],
        [math.log(0.1), math.log(0.2), math.log(0.3), math.log(0.4)],
    ])
    metadata = sampling_metadata([0.0, 2.0, 1.0], top_k=[V, 2, V], top_p=[1.0, 1.0, 0.6])
    inf = float("inf")
    expected = torch.tensor([
        [1.0, 3.0, 2.0, 0.0],  # temperature 0 read as 1: the greedy row keeps its argmax
        [2.0, 1.0, -inf, -inf],
        [-inf, -inf, 3.0, 2.0],
        [-inf, -inf, math.log(0.3), math.log(0.4)],  # 0.4 + 0.3 is the smallest set >= 0.6
    ])
    got = constrained_logits(logits, torch.tensor([1, 2, 1]), metadata)
    torch.testing.assert_close(got, expected)
    assert logits[1, 0] == 4.0  # a copy: the target's logits are left as they were


def test_logprob_rows_are_the_root_then_each_accepted_node(eager_ranks):
    tree = ([0, 1, 2, 3], [-1, 0, 0, 2])  # root -> {1, 2}, node 2 -> {3}
    tokens, parents, num_nodes = flat([LONE_ROOT, tree])
    logits = torch.tensor([
        [0.0, 2.0, 1.0, 0.5],  # lone root: bonus 1
        [1.0, 0.0, 3.0, 0.0],  # tree root: accept node 2 (token 2)
        [0.0, 0.0, 0.0, 5.0],  # node 1: not on the path
        [4.0, 1.0, 0.0, 6.0],  # node 2: accept node 3 (token 3)
        [2.0, 1.5, 1.0, 0.0],  # node 3: bonus 0
    ])
    metadata = sampling_metadata([0.0, 0.0], max_num_logprobs=1)
    out, _ = sample_trees(Sampler(), logits, tokens, parents, num_nodes, metadata)
    assert out.sampled_token_ids.tolist() == [[1, -1, -1], [2, 3, 0]]
    # [B * W] positions: source rows [0, 0, 0 | 1, 3, 4]; padding scores token 0
    source_rows, scored_tokens = [0, 0, 0, 1, 3, 4], [1, 0, 0, 2, 3, 0]
    lp = out.logprobs_tensors
    assert lp.logprob_token_ids.tolist() == [[1, 1], [0, 1], [0, 1], [2, 2], [3, 3], [0, 0]]
    expected = logits.log_softmax(-1)[source_rows]
    torch.testing.assert_close(lp.logprobs[:, 0], expected[range(6), scored_tokens])
    torch.testing.assert_close(lp.logprobs[:, 1], expected.max(-1).values)
    assert lp.selected_token_ranks[[0, 3, 4, 5]].tolist() == [1, 1, 1, 1]


def test_processed_logprobs_score_the_tempered_logits(eager_ranks):
    logits = torch.tensor([[1.0, 2.0, 0.0, 0.5]])
    metadata = sampling_metadata([2.0], generators={0: torch.Generator().manual_seed(0)}, max_num_logprobs=0)
    out, _ = sample_trees(Sampler(logprobs_mode="processed_logprobs"), logits, *flat([LONE_ROOT]), metadata)
    token = int(out.sampled_token_ids[0, 0])
    torch.testing.assert_close(out.logprobs_tensors.logprobs[0, 0], (logits[0] / 2.0).log_softmax(-1)[token])


def test_mixed_batch_leaves_the_greedy_row_alone_and_seeded_rows_reproduce():
    tokens, parents, num_nodes = flat([CHAIN, BRANCHING])
    logits = torch.cat([logits_with_argmax([2, 3, 1]), torch.randn(5, V, generator=torch.Generator().manual_seed(1))])

    def run(seed):
        metadata = sampling_metadata([0.0, 1.0], generators={1: torch.Generator().manual_seed(seed)})
        return sample_trees(Sampler(), logits, tokens, parents, num_nodes, metadata)

    (first, first_verdicts), (again, _) = run(7), run(7)
    assert first.sampled_token_ids[0].tolist() == [2, 3, 1]
    assert first_verdicts[0].accepted_nodes == (1, 2)
    assert torch.equal(first.sampled_token_ids, again.sampled_token_ids)


def test_sampled_first_token_is_distributed_as_the_target():
    """Lossless: whatever the tree drafted, the first output token ~ softmax(root logits)."""
    target_probs = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    tree = ([0, 3, 1], [-1, 0, 0])  # root -> {3, 1}
    num_sampled = 3000
    tokens, parents, num_nodes = flat([CHAIN] + [tree] * num_sampled)
    node_logits = torch.stack([target_probs.log().float(), torch.zeros(V), torch.zeros(V)])
    logits = torch.cat([logits_with_argmax([2, 3, 1]), node_logits.repeat(num_sampled, 1)])
    generators = {row: torch.Generator().manual_seed(row) for row in range(1, num_sampled + 1)}
    metadata = sampling_metadata([0.0] + [1.0] * num_sampled, generators=generators)
    out, _ = sample_trees(Sampler(), logits, tokens, parents, num_nodes, metadata)
    assert out.sampled_token_ids[0].tolist() == [2, 3, 1]
    counts = torch.bincount(out.sampled_token_ids[1:, 0].long(), minlength=V)
    assert chisquare(counts.numpy(), (target_probs * num_sampled).numpy()).pvalue > 1e-3, counts
