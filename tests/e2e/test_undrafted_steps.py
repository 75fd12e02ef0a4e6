"""Steps echo does not draft (speculation would not pay at that batch size): no drafting at
all, greedy output still token-identical to decoding without speculation, and the draft KV of
their rows written exactly as the draft's first pass writes it.

The tiny random head is so unsure of itself that speculation never pays: left alone, echo
stops drafting, but for one exploration step now and then. Which steps those are follows the
steps' measured times, so this module asserts only what holds whatever the timings: outputs
identical (the decisions themselves are tested with scripted timings in
tests/scheduler_patches/test_batch_policy.py). Patterns of drafted and undrafted steps are
forced through the batch policy's decision to check the draft KV undrafted steps write.
"""

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


def test_a_head_that_never_pays_stays_exact_whatever_echo_decides(echo, reference):
    for _ in range(4):  # echo drafts its first 32 steps whatever it expects
        assert generate(echo, PROMPTS) == reference


def force_pattern(drafted: int, undrafted: int):
    """Test instrumentation: `drafted` steps drafted, then `undrafted` not, repeatedly. Each
    undrafted step first runs the real first pass, remembers the draft KV it wrote and
    scrambles it, so that only the undrafted step's own write can restore it; what that write
    left is compared with what the first pass wrote."""

    def install(wrapper):
        drafter = wrapper.model_runner.drafter
        policy = wrapper.model_runner.echo_policy
        write_draft_kv = type(drafter)._write_draft_kv
        drafter.pattern_step = 0
        drafter.draft_kv_errors = []  # per undrafted step: max abs difference

        def speculation_pays(batch):  # (draft, exploring)
            drafter.pattern_step += 1
            return (drafter.pattern_step - 1) % (drafted + undrafted) < drafted, False

        def checked_write(self, target_token_ids, target_positions, target_hidden_states, next_token_ids,
                          token_indices_to_sample, cad):
            self._first_pass(target_token_ids, target_positions, target_hidden_states, next_token_ids,
                             token_indices_to_sample, cad)
            cache = self._draft_attn_layer().kv_cache
            slots = cad.slot_mapping[:target_token_ids.shape[0]].long()
            want_k, want_v = self.kv_layout.gather(cache, slots)
            self.kv_layout.scatter(cache, slots, torch.randn_like(want_k), torch.randn_like(want_v))
            write_draft_kv(self, target_token_ids, target_positions, target_hidden_states, next_token_ids,
                           token_indices_to_sample, cad)
            k, v = self.kv_layout.gather(cache, slots)
            self.draft_kv_errors.append(max(float((k - want_k).abs().max()), float((v - want_v).abs().max())))

        policy._speculation_pays = speculation_pays
        drafter._write_draft_kv = checked_write.__get__(drafter)

    return install


def test_undrafted_steps_write_exactly_the_draft_kv_the_first_pass_writes(echo, reference):
    echo.collective_rpc(force_pattern(drafted=2, undrafted=3))
    assert generate(echo, PROMPTS) == reference
    errors = drafter_value(echo, "draft_kv_errors")
    assert len(errors) > 5 and max(errors) < 1e-4, errors
