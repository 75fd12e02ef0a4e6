"""The prompt sets load from installed packages, offline, in a stable order."""

import pytest

from echo_vllm.assets.prompts import DATASETS, load_prompts


@pytest.mark.parametrize("dataset, count", [("mt_bench", 80), ("humaneval", 164), ("gsm8k", 100)])
def test_full_sets(dataset, count):
    prompts = load_prompts(dataset)
    assert len(prompts) == count
    assert len({p.id for p in prompts}) == count
    assert all(p.dataset == dataset and p.text.strip() and p.category for p in prompts)


def test_mt_bench_first_turns_in_eight_categories():
    prompts = load_prompts("mt_bench")
    assert len({p.category for p in prompts}) == 8
    assert prompts[0].id == "81" and prompts[0].text.startswith("Compose an engaging travel blog post")


def test_humaneval_prompts_are_signatures_with_docstrings():
    first = load_prompts("humaneval", limit=1)[0]
    assert first.id == "HumanEval/0"
    assert "def has_close_elements" in first.text and '"""' in first.text


def test_gsm8k_is_seeded():
    assert load_prompts("gsm8k", limit=5) == load_prompts("gsm8k", limit=5)
    assert load_prompts("gsm8k", limit=5, seed=1) != load_prompts("gsm8k", limit=5)
    assert load_prompts("gsm8k", limit=3) == load_prompts("gsm8k", limit=8)[:3]


@pytest.mark.parametrize("dataset", DATASETS)
def test_limit(dataset):
    assert len(load_prompts(dataset, limit=2)) == 2


def test_unknown_set_and_bad_limit_are_refused():
    with pytest.raises(ValueError, match="unknown prompt set 'alpaca'; known sets"):
        load_prompts("alpaca")
    with pytest.raises(ValueError, match="limit must be >= 1"):
        load_prompts("mt_bench", limit=0)
