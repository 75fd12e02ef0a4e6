"""Shared fixtures. Engines are expensive (10-50 s to start): share them per module."""

import gc
import os
import random

import pytest

# Tests never touch a model hub, and call collective_rpc with small test functions.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")

from echo_vllm.assets.models import is_prepared, model_dir  # noqa: E402
from tiny_models import build_tiny_chat_llama, build_tiny_head, build_tiny_llama  # noqa: E402

# Small, explicit KV cache: several tiny engines may be alive in one test session.
TINY_ENGINE = dict(
    dtype="float32",
    skip_tokenizer_init=True,
    kv_cache_memory_bytes=256 << 20,
    max_model_len=1024,
    enforce_eager=True,
    seed=0,
)


@pytest.fixture(scope="session")
def tiny_target(tmp_path_factory) -> str:
    return build_tiny_llama(str(tmp_path_factory.mktemp("tiny_target")))


@pytest.fixture(scope="session")
def tiny_head(tmp_path_factory, tiny_target) -> str:
    return build_tiny_head(str(tmp_path_factory.mktemp("tiny_head")), tiny_target)


@pytest.fixture(scope="session")
def smollm2() -> str:
    """The real target, prepared by scripts/setup.sh (a missing model is a failure, not a skip)."""
    if not is_prepared("smollm2-135m"):
        pytest.fail("SmolLM2 is not prepared: run scripts/setup.sh (echo-vllm prepare-model smollm2-135m)")
    return str(model_dir("smollm2-135m"))


@pytest.fixture(scope="session")
def tiny_chat_pair(tmp_path_factory, smollm2) -> tuple[str, str]:
    """A tiny random target with SmolLM2's tokenizer and chat template, and a random head."""
    from echo_vllm.draft_head import write_random_head

    target = build_tiny_chat_llama(str(tmp_path_factory.mktemp("tiny_chat")), smollm2)
    head = write_random_head(str(tmp_path_factory.mktemp("head")), target, draft_vocab_size=512, seed=3,
                             aux_layer_ids=(0, 1, 2))
    return target, head


def random_token_prompts(n: int, vocab: int, min_len: int, max_len: int, seed: int):
    rng = random.Random(seed)
    return [
        {"prompt_token_ids": [rng.randrange(vocab) for _ in range(rng.randint(min_len, max_len))]}
        for _ in range(n)
    ]


def shutdown(llm) -> None:
    """Stop an engine now, not whenever the garbage collector gets to it."""
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


def token_ids(outputs) -> list[list[int]]:
    return [list(o.outputs[0].token_ids) for o in outputs]


def plain_tokens(target: str, prompts, sampling) -> list[list[int]]:
    """What the target writes without speculation (an engine started and stopped here)."""
    from vllm import LLM

    llm = LLM(model=target, **TINY_ENGINE)
    out = token_ids(llm.generate(prompts, sampling, use_tqdm=False))
    shutdown(llm)
    return out


@pytest.fixture(scope="module")
def plain(tiny_target):
    """The tiny target without speculation, shared by a module's tests (a module on another
    target defines its own)."""
    from vllm import LLM

    llm = LLM(model=tiny_target, **TINY_ENGINE)
    yield llm
    shutdown(llm)


def drafter_value(llm, name):
    """An attribute of echo's drafter in the engine's one worker."""
    (value,) = llm.collective_rpc(lambda wrapper: getattr(wrapper.model_runner.drafter, name))
    return value


def echo_stat(llm, name):
    """One of echo's counters or settings as its workers report them (`echo_stats`)."""
    (stats,) = llm.collective_rpc("echo_stats")
    return stats[name]


def spec_counter(llm, name: str) -> float:
    """One of vLLM's spec-decode counters (vllm:spec_decode_<name>), summed over engines."""
    return sum(m.value for m in llm.get_metrics() if m.name == f"vllm:spec_decode_{name}")
