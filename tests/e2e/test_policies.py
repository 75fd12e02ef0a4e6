"""Every tree policy (static, ddd, opt_tree, echo with a fixed budget over trees and over
chains, chains that grow past their starting depth, and with an automatic budget) keeps
greedy output token-identical to decoding without speculation, at batch sizes 32 and 1,
while really stopping requests early and spending the budget it is given.

The oracle (tests/oracle.py) puts the target's continuation into the trees, so deep and
wide acceptance happens; gates and budgets see the random head's own scores. The thresholds
below sit near the medians of those scores for this tiny model and head (frontier_sum about
.14 after depth 1 and .008 after depth 2; best_path about .0025 after depth 2; opt_tree's
gain of depth 2 about .012), so some requests stop and others grow.
"""

import pytest
from vllm import LLM, SamplingParams

from conftest import TINY_ENGINE, echo_stat, plain_tokens, random_token_prompts, shutdown, token_ids
from oracle import install_oracle
from tiny_models import TINY

PROMPTS = random_token_prompts(40, TINY["vocab_size"], min_len=1, max_len=200, seed=23)
GREEDY = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
TREE = {"steps": 4, "topk": 4, "num_draft_tokens": 12}
BUDGET = 100  # draft tokens per step for the whole batch: fewer than 32 requests x 11
CHAIN_BUDGET = 40  # fewer than 32 requests x 3
POLICIES = {
    "ddd": {"policy": "ddd", "threshold": 0.008},
    "opt_tree": {"policy": "opt_tree", "threshold": 0.012},
    "echo-budget": {"judge_depth": [1, 2], "threshold": [0.14, 0.008], "remaining_num_draft_tokens": 3,
                    "budget": BUDGET},
    # a one-node-wide pool: chains, selected as such (core.tree.chain_tree)
    "echo-budget-chain": {"topk": 1, "num_draft_tokens": 4, "judge_depth": 1, "threshold": 0.04,
                          "remaining_num_draft_tokens": 2, "budget": CHAIN_BUDGET},
    # chains that start 2 deep and, bought whole where the budget is ample, grow to 5 deep
    "echo-budget-deepening": {"steps": 2, "topk": 1, "num_draft_tokens": 6, "judge_depth": 1, "threshold": 0.04,
                              "remaining_num_draft_tokens": 2, "budget": CHAIN_BUDGET},
    "echo-auto": {"judge_depth": 2, "threshold": 0.0025, "gate_statistic": "best_path"},
    "echo-online": {"policy": "echo", "calibration_steps": 10},
}


@pytest.fixture(scope="module")
def reference(tiny_target):
    return plain_tokens(tiny_target, PROMPTS, GREEDY)


def record_draft_totals(wrapper):
    """Test instrumentation: the total drafts of every step and its deepest draft, on the drafter."""
    drafter = wrapper.model_runner.drafter
    original = type(drafter).propose
    drafter.draft_totals = []
    drafter.deepest_drafts = []

    def propose(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        self.draft_totals.append(sum(len(d) for d in result.drafts))
        self.deepest_drafts.append(0 if result.trees is None else int(result.trees.tree.depths.max()))
        return result

    drafter.propose = propose.__get__(drafter)


@pytest.fixture(scope="module", params=list(POLICIES), ids=list(POLICIES))
def policy_llm(request, tiny_target, tiny_head, reference):
    llm = LLM(model=tiny_target, disable_log_stats=False, **TINY_ENGINE, speculative_config={
        "method": "echo", "model": tiny_head, **TREE, **POLICIES[request.param]})
    install_oracle(llm, {tuple(p["prompt_token_ids"]): r for p, r in zip(PROMPTS, reference)})
    llm.collective_rpc(record_draft_totals)
    if request.param in ("echo-auto", "echo-online"):
        # The random head's confidence is so low that speculation would never pay and echo
        # would stop drafting (tests/e2e/test_undrafted_steps.py); here every step drafts,
        # so that the budget and the gate are what is tested.
        llm.collective_rpc(lambda wrapper: setattr(wrapper.model_runner.echo_policy, "forced_choice", True))
    yield request.param, llm
    shutdown(llm)


def drafter_state(llm):
    (state,) = llm.collective_rpc(lambda wrapper: (
        wrapper.model_runner.echo_counters.num_gate_checks, wrapper.model_runner.echo_counters.num_gate_stops,
        wrapper.model_runner.drafter.draft_totals, wrapper.model_runner.drafter.deepest_drafts,
        wrapper.model_runner.echo_policy.cost_model is not None,
        wrapper.model_runner.echo_policy.last_budget, wrapper.model_runner.echo_calibration.online_steps is not None,
        wrapper.model_runner.echo_policy.gate.check_depths))
    return state


@pytest.mark.parametrize("batch_size", [32, 1])
def test_policy_is_lossless_and_really_acts(policy_llm, reference, batch_size):
    name, llm = policy_llm
    prompts = PROMPTS if batch_size == 32 else PROMPTS[:8]
    out = []
    for start in range(0, len(prompts), batch_size):
        out += token_ids(llm.generate(prompts[start:start + batch_size], GREEDY, use_tqdm=False))
    assert out == reference[: len(prompts)]
    checks, stops, totals, deepest, has_cost_model, last_budget, calibrating, gate = drafter_state(llm)
    if name == "echo-online":
        assert not calibrating and len(gate) == 1, gate  # the gate was calibrated and switched on
    else:
        assert 0 < stops < checks, (name, stops, checks)  # some requests stopped, not all
    if name in ("echo-budget", "echo-budget-chain"):
        budget = BUDGET if name == "echo-budget" else CHAIN_BUDGET
        assert max(totals) == budget, max(totals)
    if name == "echo-budget-deepening":  # past the 2 it starts at; by the second run, a chain of every draft
        assert max(deepest) == 5 if batch_size == 1 else max(deepest) > 2, max(deepest)
    if name in ("echo-auto", "echo-online"):
        assert has_cost_model and isinstance(last_budget, int)
    branching = echo_stat(llm, "num_branching_trees")  # trees whose rows took the tree attention path
    if name in ("echo-budget-chain", "echo-budget-deepening"):
        assert branching == 0
    elif name == "echo-budget":
        assert 0 < branching < echo_stat(llm, "num_verified_trees")
