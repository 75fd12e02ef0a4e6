"""Training prompts: offline, seeded, of three kinds, never a benchmark prompt."""

import pytest

from echo_vllm.assets.prompts import EVAL_SEED
from echo_vllm.training.prompt_pool import training_prompts


def test_seeded_and_deterministic():
    assert training_prompts(60, seed=3) == training_prompts(60, seed=3)
    assert training_prompts(60, seed=3) != training_prompts(60, seed=4)


def test_three_kinds_in_the_pool():
    prompts = training_prompts(300, seed=0)
    assert len(prompts) == len(set(prompts)) == 300
    assert sum("Python" in p for p in prompts) >= 80  # standard-library code prompts
    assert sum(p.startswith(("Write a short blog", "Explain ", "Give me five")) for p in prompts) >= 20
    assert any(p[0].isdigit() or "Solve" in p or "Calculate" in p for p in prompts)  # reasoning-gym


def test_the_evaluation_seed_is_refused():
    with pytest.raises(ValueError, match="evaluation seed"):
        training_prompts(30, seed=EVAL_SEED - 1)
