"""A broken or mismatched draft head costs speed, never correctness: a head whose weights are
NaN verifies no drafts (decoding stays token-identical, greedy and seeded sampling), and a
head whose every draft the target rejects is warned about and makes echo's auto budget stop
drafting."""

import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from vllm import LLM, SamplingParams

from conftest import TINY_ENGINE, echo_stat, random_token_prompts, shutdown, token_ids
from echo_vllm.runner import NO_ACCEPTANCE_WARNING_DRAFTS
from tiny_models import TINY

PROMPTS = random_token_prompts(16, TINY["vocab_size"], min_len=1, max_len=100, seed=11)
GREEDY = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
SEEDED = SamplingParams(temperature=0.8, top_p=0.9, seed=5, max_tokens=32, ignore_eos=True)
TREE = {"steps": 3, "topk": 4, "num_draft_tokens": 8}
STATIC = {"policy": "static"}


@pytest.fixture(scope="module")
def nan_head(tiny_head, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("nan_head"))
    shutil.copy(os.path.join(tiny_head, "config.json"), path)
    (weights,) = [n for n in os.listdir(tiny_head) if n.endswith(".safetensors")]
    tensors = load_file(os.path.join(tiny_head, weights))
    fc = next(name for name in tensors if name.endswith("fc.weight"))  # combines the target's hidden states
    tensors[fc] = torch.full_like(tensors[fc], float("nan"))
    save_file(tensors, os.path.join(path, weights))
    return path


@pytest.mark.parametrize("policy", [STATIC, {"judge_depth": 1, "threshold": 0.1}])  # echo: auto budget
def test_a_head_with_nan_outputs_changes_no_token(tiny_target, nan_head, plain, policy):
    llm = LLM(model=tiny_target, **TINY_ENGINE,
              speculative_config={"method": "echo", "model": nan_head, **TREE, **policy})
    try:
        for params in (GREEDY, SEEDED):
            expected = token_ids(plain.generate(PROMPTS, params, use_tqdm=False))
            assert token_ids(llm.generate(PROMPTS, params, use_tqdm=False)) == expected
        assert echo_stat(llm, "num_broken_drafts") > 0
        assert echo_stat(llm, "num_verified_drafts") == 0
    finally:
        shutdown(llm)


def install_wrong_drafts(llm, references):
    """Test instrumentation: every draft node carries the token after the target's next greedy
    token (from a reference run), so the target rejects every draft."""

    def install(wrapper):
        import dataclasses

        runner = wrapper.model_runner
        drafter = runner.drafter
        original_expand = type(drafter)._expand

        def expand(self, *args, **kwargs):
            drafted = original_expand(self, *args, **kwargs)
            tree = drafted.tree
            tokens = tree.tokens.clone()
            for row, req_id in enumerate(runner.input_batch.req_ids[: tokens.shape[0]]):
                state = runner.requests[req_id]
                future = references[tuple(state.prompt_token_ids)][len(state.output_token_ids):]
                if future:
                    tokens[row, 1:] = (future[0] + 1) % TINY["vocab_size"]
            return dataclasses.replace(drafted, tree=dataclasses.replace(tree, tokens=tokens))

        drafter._expand = expand.__get__(drafter)

    llm.collective_rpc(install)


@pytest.mark.parametrize("policy", ["static", "echo"])
def test_a_head_whose_drafts_are_all_rejected(tiny_target, tiny_head, plain, policy):
    gate = {"judge_depth": 1, "threshold": 0.0} if policy == "echo" else STATIC  # echo: budget auto
    llm = LLM(model=tiny_target, **TINY_ENGINE,
              speculative_config={"method": "echo", "model": tiny_head, **TREE, **gate})
    try:
        expected = token_ids(plain.generate(PROMPTS, GREEDY, use_tqdm=False))
        install_wrong_drafts(llm, {tuple(p["prompt_token_ids"]): e for p, e in zip(PROMPTS, expected)})
        for _ in range(3):
            assert token_ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == expected
        assert echo_stat(llm, "num_accepted_drafts") == 0
        if policy == "static":  # verifies every tree: the warning's threshold is crossed
            assert echo_stat(llm, "num_verified_drafts") >= NO_ACCEPTANCE_WARNING_DRAFTS
        else:  # the auto budget stops drafting: decoding without speculation, but for exploration
            assert echo_stat(llm, "num_undrafted_steps") > echo_stat(llm, "num_drafted_steps")
    finally:
        shutdown(llm)
