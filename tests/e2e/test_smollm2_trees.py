"""Echo's trees on the real target (SmolLM2-135M-Instruct, with its tokenizer): EOS and stop
strings that fall inside accepted paths end requests exactly where decoding without
speculation ends them. The oracle drafter makes the draft trees contain the true
continuation, so long paths are accepted."""

import pytest
from vllm import LLM, SamplingParams

from conftest import shutdown
from echo_vllm.assets.prompts import load_prompts
from echo_vllm.draft_head import write_random_head
from oracle import install_oracle

ENGINE = dict(dtype="float32", enforce_eager=True, max_model_len=1024, kv_cache_memory_bytes=512 << 20, seed=0)
SHORT_ANSWERS = ["Answer with one word: what color is a clear sky?", "Say hello.",
                 "What is 2 + 2? Reply with the number only.", "Name one fruit."]
CHATS = [[{"role": "user", "content": text}]
         for text in SHORT_ANSWERS + [p.text for p in load_prompts("mt_bench", limit=4)]]
GREEDY = SamplingParams(temperature=0.0, max_tokens=48)


@pytest.fixture(scope="module")
def plain(smollm2):
    llm = LLM(model=smollm2, **ENGINE)
    yield llm
    shutdown(llm)


@pytest.fixture(scope="module")
def echo(smollm2, plain, tmp_path_factory):
    head = write_random_head(str(tmp_path_factory.mktemp("head")), smollm2, draft_vocab_size=2048)
    llm = LLM(model=smollm2, **ENGINE, disable_log_stats=False,
              speculative_config={"method": "echo", "model": head, "policy": "static", "steps": 4, "topk": 4,
                                                  "num_draft_tokens": 12})
    # the oracle's continuations: long greedy runs that ignore EOS cover every stop below
    long_runs = plain.chat(CHATS, SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True), use_tqdm=False)
    install_oracle(llm, {tuple(o.prompt_token_ids): list(o.outputs[0].token_ids) for o in long_runs})
    yield llm
    shutdown(llm)


def summary(outputs):
    return [(o.outputs[0].text, list(o.outputs[0].token_ids), o.outputs[0].finish_reason,
             o.outputs[0].stop_reason) for o in outputs]


def test_eos_and_length_match_plain_decoding(echo, plain):
    params = [SamplingParams(temperature=0.0, max_tokens=m) for m in (8, 64, 16, 64, 64, 3, 64, 40)]
    expected = summary(plain.chat(CHATS, params, use_tqdm=False))
    assert summary(echo.chat(CHATS, params, use_tqdm=False)) == expected
    assert {e[2] for e in expected} == {"stop", "length"}  # some ended on EOS, some on length
    accepted = sum(m.value for m in echo.get_metrics() if m.name == "vllm:spec_decode_num_accepted_tokens")
    assert accepted > 100  # the oracle's drafts were accepted, EOS among them


def test_stop_strings_inside_accepted_paths_match_plain_decoding(echo, plain):
    texts = [o.outputs[0].text for o in plain.chat(CHATS, GREEDY, use_tqdm=False)]
    params = [SamplingParams(temperature=0.0, max_tokens=48, stop=[t.split()[len(t.split()) // 2]])
              for t in texts]
    expected = summary(plain.chat(CHATS, params, use_tqdm=False))
    assert summary(echo.chat(CHATS, params, use_tqdm=False)) == expected
    assert sum(e[3] is not None for e in expected) >= 6  # stopped by the stop strings
