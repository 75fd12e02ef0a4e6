"""Echo's trees under the rest of vLLM: sampling and seeds, mixed batches, per-request tree
sizes, max_tokens, stop tokens, n > 1, logprobs, prefix caching, chunked prefill with
preemption, spec-decode metrics, and refused options. Each echo engine is compared with a
plain engine running the same requests."""

import random

import pytest
from vllm import LLM, SamplingParams
from vllm.exceptions import VLLMValidationError

from conftest import TINY_ENGINE, echo_stat, random_token_prompts, shutdown, spec_counter, token_ids
from oracle import install_oracle
from tiny_models import TINY

TREE = {"policy": "static", "steps": 4, "topk": 4, "num_draft_tokens": 12}
PROMPTS = random_token_prompts(24, TINY["vocab_size"], min_len=1, max_len=200, seed=5)
GREEDY = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)


def echo_engine(target, head, **engine):
    return LLM(model=target, disable_log_stats=False,
               speculative_config={"method": "echo", "model": head, **TREE}, **{**TINY_ENGINE, **engine})


@pytest.fixture(scope="module")
def references(plain):
    return {tuple(p["prompt_token_ids"]): r for p, r in zip(PROMPTS, token_ids(plain.generate(PROMPTS, GREEDY, use_tqdm=False)))}


@pytest.fixture(scope="module")
def echo(tiny_target, tiny_head, references):
    llm = echo_engine(tiny_target, tiny_head)
    install_oracle(llm, references)
    yield llm
    shutdown(llm)


def test_seeded_sampling_draws_what_decoding_without_speculation_draws(echo, plain):
    # one draw per emitted token from the request's generator, as vLLM's own sampler does:
    # the same seeds give the same tokens, whatever was drafted and whatever the batch
    params = [SamplingParams(temperature=0.8, top_p=0.9, top_k=50, seed=100 + i, max_tokens=24,
                             ignore_eos=True) for i in range(len(PROMPTS))]
    together = token_ids(echo.generate(PROMPTS, params, use_tqdm=False))
    alone = [token_ids(echo.generate([p], [s], use_tqdm=False))[0] for p, s in list(zip(PROMPTS, params))[:6]]
    assert together == token_ids(echo.generate(PROMPTS, params, use_tqdm=False))
    assert together[:6] == alone
    assert together == token_ids(plain.generate(PROMPTS, params, use_tqdm=False))
    assert len({tuple(t) for t in together}) == len(PROMPTS)  # really sampled, not constant


def test_greedy_and_sampled_requests_share_a_batch(echo, references):
    params = [GREEDY if i % 2 == 0 else SamplingParams(temperature=1.0, seed=i, max_tokens=32, ignore_eos=True)
              for i in range(len(PROMPTS))]
    out = token_ids(echo.generate(PROMPTS, params, use_tqdm=False))
    for i in range(0, len(PROMPTS), 2):
        assert out[i] == references[tuple(PROMPTS[i]["prompt_token_ids"])]


def test_different_tree_sizes_in_one_batch(echo, references):
    def random_sizes(wrapper):
        import torch

        drafter = wrapper.model_runner.drafter
        g = torch.Generator().manual_seed(0)
        drafter.tree_sizes = lambda batch: torch.randint(1, drafter.echo_config.num_draft_tokens + 1, (batch,), generator=g)

    echo.collective_rpc(random_sizes)
    try:
        assert token_ids(echo.generate(PROMPTS, GREEDY, use_tqdm=False)) == list(references.values())
    finally:
        echo.collective_rpc(lambda wrapper: wrapper.model_runner.drafter.__dict__.pop("tree_sizes") and None)


def test_max_tokens_and_stop_tokens_inside_accepted_paths(echo, plain):
    rng = random.Random(0)
    params = []
    for p in PROMPTS:
        stop = [rng.randrange(TINY["vocab_size"]) for _ in range(40)]
        params.append(SamplingParams(temperature=0.0, max_tokens=rng.randint(1, 40), stop_token_ids=stop))
    expected = token_ids(plain.generate(PROMPTS, params, use_tqdm=False))
    assert token_ids(echo.generate(PROMPTS, params, use_tqdm=False)) == expected
    assert any(len(e) < s.max_tokens for e, s in zip(expected, params))  # some stopped early


def test_requests_up_to_the_context_limit(echo, plain, references):
    # prompts ending 1-24 tokens before max_model_len, generating up to it: the last trees of
    # each request would cross the limit (the oracle makes them deep enough to)
    limit = TINY_ENGINE["max_model_len"]
    rng = random.Random(3)
    prompts = [{"prompt_token_ids": [rng.randrange(TINY["vocab_size"]) for _ in range(limit - room)]}
               for room in range(1, 25)]
    params = [SamplingParams(temperature=0.0, max_tokens=limit - len(p["prompt_token_ids"]), ignore_eos=True)
              for p in prompts]
    expected = token_ids(plain.generate(prompts, params, use_tqdm=False))
    assert [len(e) for e in expected] == [s.max_tokens for s in params]
    install_oracle(echo, {**references, **{tuple(p["prompt_token_ids"]): e for p, e in zip(prompts, expected)}})
    assert token_ids(echo.generate(prompts, params, use_tqdm=False)) == expected
    # near the limit vLLM skips the drafter and fills drafts with zeros; echo schedules none
    # instead, so the target verifies only what echo drafted
    assert 0 < echo_stat(echo, "num_verified_drafts") <= echo_stat(echo, "num_proposed_drafts")


def test_n_greater_than_one(echo, plain):
    params = SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=24, ignore_eos=True)
    ours = echo.generate(PROMPTS[:4], params, use_tqdm=False)
    theirs = plain.generate(PROMPTS[:4], params, use_tqdm=False)
    for a, b in zip(ours, theirs):
        assert len(a.outputs) == 3
        assert [list(c.token_ids) for c in a.outputs] == [list(c.token_ids) for c in b.outputs]


def test_logprobs_match_plain_decoding(echo, plain):
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True, logprobs=3)
    ours = echo.generate(PROMPTS[:6], params, use_tqdm=False)
    theirs = plain.generate(PROMPTS[:6], params, use_tqdm=False)
    for a, b in zip(ours, theirs):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        for pos_a, pos_b in zip(a.outputs[0].logprobs, b.outputs[0].logprobs):
            assert pos_a.keys() == pos_b.keys()
            for token in pos_a:
                assert pos_a[token].logprob == pytest.approx(pos_b[token].logprob, abs=1e-3)


def test_prefix_cache_hits_stay_lossless(echo, plain):
    shared = PROMPTS[0]["prompt_token_ids"] * 3  # a long common prefix, several blocks
    prompts = [{"prompt_token_ids": shared + p["prompt_token_ids"][:5]} for p in PROMPTS[:8]]
    expected = token_ids(plain.generate(prompts, GREEDY, use_tqdm=False))
    assert token_ids(echo.generate(prompts, GREEDY, use_tqdm=False)) == expected
    hits = prefix_cache_hits(echo)
    assert token_ids(echo.generate(prompts, GREEDY, use_tqdm=False)) == expected  # served from the cache
    # every whole block before a prompt's last token is a hit: echo keeps the last block that
    # vLLM's EAGLE methods drop (config.to_vllm_speculative_config)
    block = echo.llm_engine.vllm_config.cache_config.block_size
    assert prefix_cache_hits(echo) - hits == sum((len(p["prompt_token_ids"]) - 1) // block * block for p in prompts)


def prefix_cache_hits(llm) -> float:
    return sum(m.value for m in llm.get_metrics() if m.name == "vllm:prefix_cache_hits")


def test_spec_decode_metrics_count_tree_drafts_and_accepted_path(echo, references):
    before = {n: spec_counter(echo, n) for n in ("num_drafts", "num_draft_tokens", "num_accepted_tokens")}
    outputs = token_ids(echo.generate(PROMPTS, GREEDY, use_tqdm=False))
    drafts, draft_tokens, accepted = (spec_counter(echo, n) - before[n] for n in before)
    assert draft_tokens == drafts * (TREE["num_draft_tokens"] - 1)
    # each decode step commits accepted + 1 tokens; the prefill step commits 1; the last
    # step may accept more than max_tokens leaves room for
    committed = sum(map(len, outputs)) - len(outputs)
    assert committed <= accepted + drafts <= committed + len(outputs) * TREE["num_draft_tokens"]


@pytest.mark.parametrize("param", [dict(presence_penalty=0.5), dict(repetition_penalty=1.2),
                                   dict(min_tokens=4), dict(bad_words=["x"]), dict(allowed_token_ids=[1, 2])])
def test_unsupported_options_are_refused_per_request(echo, param):
    with pytest.raises(VLLMValidationError, match=f"'{next(iter(param))}' is not supported with speculative method 'echo'"):
        echo.generate(PROMPTS[:1], SamplingParams(max_tokens=4, **param), use_tqdm=False)
    assert len(token_ids(echo.generate(PROMPTS[:1], GREEDY, use_tqdm=False))[0]) == 32  # still serving


def test_chunked_prefill_preemption_and_draft_truncation(tiny_target, tiny_head, plain, references):
    # 64 tokens per step: long prompts are chunked, and 12-node trees of many requests do not
    # fit, so the scheduler truncates draft lists; a KV cache of ~380 tokens (barely one
    # max_model_len sequence) for 16 concurrent requests forces preemption.
    llm = echo_engine(tiny_target, tiny_head, max_num_batched_tokens=64, max_num_seqs=16,
                      max_model_len=256, kv_cache_memory_bytes=3 << 19)
    try:
        install_oracle(llm, references)
        assert token_ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == list(references.values())
        preemptions = sum(m.value for m in llm.get_metrics() if m.name == "vllm:num_preemptions")
        assert preemptions > 0
    finally:
        shutdown(llm)
