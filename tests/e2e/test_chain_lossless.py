"""Greedy output with method echo equals greedy output without speculation, token for token."""

import pytest
from vllm import LLM, SamplingParams

from conftest import TINY_ENGINE, random_token_prompts, shutdown
from tiny_models import TINY

PROMPTS = random_token_prompts(24, TINY["vocab_size"], min_len=1, max_len=300, seed=7)
GREEDY = SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True)


def token_ids(outputs):
    return [list(o.outputs[0].token_ids) for o in outputs]


@pytest.fixture(scope="module")
def reference(tiny_target):
    llm = LLM(model=tiny_target, **TINY_ENGINE)
    out = token_ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False))
    shutdown(llm)
    return out


@pytest.fixture(
    scope="module",
    params=[{"steps": 3}, {"steps": 5, "num_draft_tokens": 3}, {"steps": 1}],
    ids=["steps3", "steps5-nodes3", "steps1"],
)
def echo_llm(request, tiny_target, tiny_head):
    llm = LLM(model=tiny_target, disable_log_stats=False,
              speculative_config={"method": "echo", "model": tiny_head, **request.param},
              **TINY_ENGINE)
    yield llm
    shutdown(llm)


def spec_counter(llm, name):
    return sum(m.value for m in llm.get_metrics() if m.name == f"vllm:spec_decode_{name}")


def test_echo_runs_in_echo_classes(echo_llm):
    (names,) = echo_llm.collective_rpc(
        lambda wrapper: (type(wrapper.worker).__name__, type(wrapper.model_runner).__name__,
                        type(wrapper.model_runner.drafter).__name__)
    )
    assert names == ("EchoCPUWorker", "EchoCPUModelRunner", "EchoProposer")


def test_batched_greedy_matches_no_speculation(echo_llm, reference):
    drafts_before = spec_counter(echo_llm, "num_drafts")
    assert token_ids(echo_llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == reference
    assert spec_counter(echo_llm, "num_drafts") > drafts_before  # speculation really ran


def test_one_request_at_a_time_matches_no_speculation(echo_llm, reference):
    for prompt, expected in list(zip(PROMPTS, reference))[:4]:
        assert token_ids(echo_llm.generate([prompt], GREEDY, use_tqdm=False)) == [expected]
