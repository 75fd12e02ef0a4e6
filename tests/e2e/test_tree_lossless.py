"""Greedy output with echo's draft trees equals greedy output without speculation.

An oracle (tests/oracle.py) puts the target's true continuation on random tree paths so that
drafts are really accepted, on non-first siblings and at varying depths: verification,
KV compaction and the drafter's next inputs are all exercised. 56 prompts of 1-300 tokens,
batch sizes 1, 7 and 32.
"""

import pytest
from vllm import LLM, SamplingParams

from conftest import TINY_ENGINE, plain_tokens, random_token_prompts, shutdown, spec_counter, token_ids
from oracle import install_oracle
from tiny_models import TINY

PROMPTS = random_token_prompts(56, TINY["vocab_size"], min_len=1, max_len=300, seed=11)
GREEDY = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
TREES = {
    "chain-steps3": {"policy": "static", "steps": 3, "topk": 1},
    "chain-steps5-nodes3": {"policy": "static", "steps": 5, "topk": 1, "num_draft_tokens": 3},
    "steps1-topk3": {"policy": "static", "steps": 1, "topk": 3},
    "steps3-topk2-nodes6": {"policy": "static", "steps": 3, "topk": 2, "num_draft_tokens": 6},
    "steps4-topk4-nodes12": {"policy": "static", "steps": 4, "topk": 4, "num_draft_tokens": 12},
    "steps5-topk8-nodes32": {"policy": "static", "steps": 5, "topk": 8, "num_draft_tokens": 32},
}


def generate_in_batches(llm, prompts, batch_size):
    out = []
    for start in range(0, len(prompts), batch_size):
        out += token_ids(llm.generate(prompts[start:start + batch_size], GREEDY, use_tqdm=False))
    return out


@pytest.fixture(scope="module")
def reference(tiny_target):
    return plain_tokens(tiny_target, PROMPTS, GREEDY)


@pytest.fixture(scope="module", params=list(TREES), ids=list(TREES))
def echo_llm(request, tiny_target, tiny_head, reference):
    llm = LLM(model=tiny_target, disable_log_stats=False,
              speculative_config={"method": "echo", "model": tiny_head, **TREES[request.param]},
              **TINY_ENGINE)
    install_oracle(llm, {tuple(p["prompt_token_ids"]): r for p, r in zip(PROMPTS, reference)})
    yield llm
    shutdown(llm)


def test_echo_runs_in_echo_classes(echo_llm):
    (names,) = echo_llm.collective_rpc(
        lambda wrapper: (type(wrapper.worker).__name__, type(wrapper.model_runner).__name__,
                         type(wrapper.model_runner.drafter).__name__)
    )
    assert names == ("EchoCPUWorker", "EchoCPUModelRunner", "EchoProposer")


@pytest.mark.parametrize("batch_size", [32, 7, 1])
def test_greedy_trees_match_no_speculation(echo_llm, reference, batch_size):
    accepted_before = spec_counter(echo_llm, "num_accepted_tokens")
    assert generate_in_batches(echo_llm, PROMPTS, batch_size) == reference
    accepted = spec_counter(echo_llm, "num_accepted_tokens") - accepted_before
    assert accepted > len(PROMPTS) * 5, accepted  # the oracle's drafts were really accepted
