"""Training prompts: offline, seeded, of four kinds, never a benchmark prompt."""

import subprocess
import sys

import pytest

from echo_vllm.assets.prompts import EVAL_SEED
from echo_vllm.assets.sharegpt import first_exchanges
from echo_vllm.training.prompt_pool import answered_exchanges, training_prompts


def test_seeded_and_deterministic():
    assert training_prompts(60, seed=3) == training_prompts(60, seed=3)
    assert training_prompts(60, seed=3) != training_prompts(60, seed=4)


def test_the_same_in_every_process():
    """The prompts key the work directory: a resumed run must see the same ones. A default
    such as <function copy2 at 0x7f...> in a signature carried an address that varied."""
    code = "from echo_vllm.training.prompt_pool import _code; print(repr(_code()))"
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    assert runs[0] == runs[1] and " at 0x" not in runs[0]
    assert "copy_function=<function copy2>" in runs[0]


def test_four_kinds_in_the_pool():
    prompts = training_prompts(300, seed=0)
    assert len(prompts) == len(set(prompts)) == 300
    assert sum("Python" in p for p in prompts) >= 60  # standard-library code prompts
    assert sum(p.startswith(("Write a short blog", "Explain ", "Give me five")) for p in prompts) >= 15
    assert any(p[0].isdigit() or "Solve" in p or "Calculate" in p for p in prompts)  # reasoning-gym
    sharegpt = {e.prompt for e in first_exchanges()}
    assert sum(p in sharegpt for p in prompts) == 75  # a quarter: real users' first turns


def test_answered_exchanges_are_not_among_the_prompts():
    prompts = training_prompts(300, seed=0)
    answered = answered_exchanges(200, prompts, seed=0)
    assert len(answered) == 200 and not {e.prompt for e in answered} & set(prompts)
    assert all(e.answer.strip() for e in answered)


def test_the_evaluation_seed_is_refused():
    with pytest.raises(ValueError, match="evaluation seed"):
        training_prompts(30, seed=EVAL_SEED - 1)
