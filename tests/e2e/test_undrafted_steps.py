"""Steps echo does not draft (speculation would not pay at that batch size): no draft work at
all, greedy output still token-identical to decoding without speculation, and the draft KV
those steps did not write is written, exactly, before the request's next drafted step.

The tiny random head is so unsure of itself that speculation never pays: left alone, echo
stops drafting, but for one exploration step now and then. Which steps those are follows the
steps' measured times, so this module asserts only what holds whatever the timings: outputs
identical, nothing owed at the end (the decisions themselves are tested with scripted timings
in tests/scheduler_patches/test_batch_policy.py). Patterns of drafted and undrafted steps are
forced through the batch policy's decision to exercise the owed rows and their catch-up.
"""

import time

import pytest
import torch
from vllm import LLM, SamplingParams

from conftest import TINY_ENGINE, drafter_value, plain_tokens, random_token_prompts, shutdown, token_ids
from oracle import install_oracle
from tiny_models import TINY

PROMPTS = random_token_prompts(24, TINY["vocab_size"], min_len=1, max_len=120, seed=5)
GREEDY = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
ECHO = {"steps": 3, "topk": 4, "num_draft_tokens": 10, "judge_depth": 1, "threshold": 0.0}


@pytest.fixture(scope="module")
def reference(tiny_target):
    return plain_tokens(tiny_target, PROMPTS, GREEDY)


@pytest.fixture(scope="module")
def echo(tiny_target, tiny_head, reference):
    llm = LLM(model=tiny_target, **TINY_ENGINE, speculative_config={"method": "echo", "model": tiny_head, **ECHO})
    install_oracle(llm, {tuple(p["prompt_token_ids"]): r for p, r in zip(PROMPTS, reference)})
    # exploring may cost almost every step's time: the wait stays at its floor of
    # EXPLORATION_INTERVAL steps, so that this module's few hundred steps see explorations
    llm.collective_rpc(lambda wrapper: setattr(wrapper.model_runner.echo_policy, "max_exploration_share", 0.99))
    yield llm
    shutdown(llm)


def generate(llm, prompts):
    return token_ids(llm.generate(prompts, GREEDY, use_tqdm=False))


def owed_rows(llm, tries: int = 20):
    """What the drafter still keeps once the engine has told it of the finished requests. vLLM
    tells the workers in the engine's next step (one it runs with no tokens when nothing is
    left), which may come after this RPC was served: ask again until that step has run."""
    for _ in range(tries):
        (rows,) = llm.collective_rpc(lambda wrapper: wrapper.model_runner.drafter.owed_kv.rows)
        if not rows:
            break
        time.sleep(0.1)
    return rows


def test_a_head_that_never_pays_stays_exact_whatever_echo_decides(echo, reference):
    for _ in range(4):  # echo drafts its first 32 steps whatever it expects
        assert generate(echo, PROMPTS) == reference
    assert owed_rows(echo) == {}  # every request finished: nothing kept


def force_pattern(drafted: int, undrafted: int):
    """Test instrumentation: `drafted` steps drafted, then `undrafted` not, repeatedly; the
    draft KV each undrafted step owes is also written by the real first pass and remembered,
    then scrambled, so that only the catch-up can restore it; the catch-up's result is
    compared with it."""

    def install(wrapper):
        drafter = wrapper.model_runner.drafter
        policy = wrapper.model_runner.echo_policy
        owe, catch_up = type(drafter)._owe_first_pass, type(drafter)._catch_up
        drafter.pattern_step = 0
        drafter.expected_kv = {}  # request id -> {slot: (k, v) the first pass wrote}
        drafter.catch_up_errors = []  # per request caught up: max abs difference

        def speculation_pays(batch, owed_rows):  # (draft, exploring)
            drafter.pattern_step += 1
            return (drafter.pattern_step - 1) % (drafted + undrafted) < drafted, False

        def owe_first_pass(self, req_ids, target_token_ids, target_positions, target_hidden_states,
                           next_token_ids, token_indices_to_sample, cad):
            self._first_pass(target_token_ids, target_positions, target_hidden_states, next_token_ids,
                             token_indices_to_sample, cad)
            last_rows = cad.query_start_loc[1:] - 1 if token_indices_to_sample is None else token_indices_to_sample
            cache = self._draft_attn_layer().kv_cache
            for i, req_id in enumerate(req_ids):
                start, end = int(cad.query_start_loc_cpu[i]), int(last_rows[i]) + 1
                positions = target_positions[start:end].long()
                slots = (cad.block_table_tensor[i].long()[positions // self.block_size] * self.block_size
                         + positions % self.block_size)
                k, v = self.kv_layout.gather(cache, slots)
                self.expected_kv.setdefault(req_id, {}).update(
                    {slot: (ks, vs) for slot, ks, vs in zip(slots.tolist(), k, v)})
                self.kv_layout.scatter(cache, slots, torch.randn_like(k), torch.randn_like(v))
            owe(self, req_ids, target_token_ids, target_positions, target_hidden_states, next_token_ids,
                token_indices_to_sample, cad)

        def caught_up(self, req_ids, target_positions, cad):
            owing = [req_id for req_id in req_ids if req_id in self.owed_kv.rows]
            catch_up(self, req_ids, target_positions, cad)
            cache = self._draft_attn_layer().kv_cache
            for req_id in owing:
                expected = self.expected_kv.pop(req_id)
                k, v = self.kv_layout.gather(cache, torch.tensor(list(expected)))
                want_k = torch.stack([kv[0] for kv in expected.values()])
                want_v = torch.stack([kv[1] for kv in expected.values()])
                self.catch_up_errors.append(max(float((k - want_k).abs().max()), float((v - want_v).abs().max())))

        policy._speculation_pays = speculation_pays
        drafter._owe_first_pass = owe_first_pass.__get__(drafter)
        drafter._catch_up = caught_up.__get__(drafter)

    return install


def test_catch_up_writes_exactly_the_draft_kv_undrafted_steps_owed(echo, reference):
    echo.collective_rpc(force_pattern(drafted=2, undrafted=3))
    assert generate(echo, PROMPTS) == reference
    errors = drafter_value(echo, "catch_up_errors")
    assert len(errors) > 5 and max(errors) < 1e-4, errors
    assert owed_rows(echo) == {}
