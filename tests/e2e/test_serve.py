"""`vllm serve` with method echo answers the OpenAI API, losslessly, on the real target."""

import asyncio
import json
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from echo_vllm import cli
from echo_vllm.bench.online import parse_servers
from echo_vllm.draft_head import write_random_head
from echo_vllm.serving import vllm_server
from echo_vllm.soak import metric_totals

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, a robot"]
MAX_TOKENS = 24
QUESTIONS = [f"What is {i} times {i + 1}?" for i in range(8)] + ["Name three colours.", "Who wrote Hamlet?"]


def serve(model, options, log_path):
    """A `vllm serve` process on loopback with these extra options: yields its URL, then stops it.
    Stats are logged (and echo's metrics read) every second."""
    with vllm_server(model, options, log_path, env={"VLLM_LOG_STATS_INTERVAL": "1"}) as server:
        yield server.url


def echo_server_log(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "echo_serve.log"


@pytest.fixture(scope="module")
def server(tmp_path_factory, smollm2):
    head = write_random_head(str(tmp_path_factory.mktemp("head")), smollm2, draft_vocab_size=2048)
    config = json.dumps({"method": "echo", "model": head, "policy": "static", "steps": 3})
    yield from serve(smollm2, ["--speculative-config", config], echo_server_log(tmp_path_factory))


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory, smollm2):
    yield from serve(smollm2, [], tmp_path_factory.mktemp("serve_plain") / "serve.log")


@pytest.fixture(scope="module")
def reference_texts(plain_server, smollm2):
    from openai import OpenAI

    plain = OpenAI(base_url=f"{plain_server}/v1", api_key="unused")
    return [plain.completions.create(model=smollm2, prompt=p, max_tokens=MAX_TOKENS, temperature=0).choices[0].text
            for p in PROMPTS]


@pytest.fixture(scope="module")
def client(server, smollm2):
    from openai import OpenAI

    return OpenAI(base_url=f"{server}/v1", api_key="unused"), smollm2


def test_completions_equal_plain_greedy_decoding(client, reference_texts):
    openai, model = client
    for prompt, expected in zip(PROMPTS, reference_texts):
        response = openai.completions.create(model=model, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0)
        assert response.choices[0].text == expected


def test_streamed_completion_equals_plain_greedy_decoding(client, reference_texts):
    openai, model = client
    stream = openai.completions.create(model=model, prompt=PROMPTS[0], max_tokens=MAX_TOKENS,
                                       temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in stream) == reference_texts[0]


async def streamed_chat_answers(url: str, model: str, questions: list[str]) -> list[str]:
    """Every question at once, each answer streamed: the server batches them."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused")

    async def answer(question: str) -> str:
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": question}], max_tokens=MAX_TOKENS,
            temperature=0, stream=True)
        return "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])

    try:
        return await asyncio.gather(*(answer(q) for q in questions))
    finally:
        await client.close()


def test_concurrent_streamed_chat_equals_plain_and_shows_in_metrics(server, plain_server, client):
    openai, model = client
    from openai import OpenAI

    plain = OpenAI(base_url=f"{plain_server}/v1", api_key="unused")
    expected = [plain.chat.completions.create(model=model, messages=[{"role": "user", "content": q}],
                                              max_tokens=MAX_TOKENS, temperature=0).choices[0].message.content
                for q in QUESTIONS]
    before = metric_totals(server, ("echo_",))
    answers = asyncio.run(streamed_chat_answers(server, model, QUESTIONS))
    assert answers == expected
    time.sleep(3)  # a stats interval (1 s here) reads echo's counters from the worker
    after = metric_totals(server, ("echo_",))
    assert after["echo_verified_trees_total"] > before["echo_verified_trees_total"]
    assert after["echo_accepted_draft_tokens_total"] >= before["echo_accepted_draft_tokens_total"]
    # several requests shared steps: more trees verified than steps that verified any
    trees = after["echo_verified_trees_total"] - before["echo_verified_trees_total"]
    steps = after["echo_verified_steps_total"] - before["echo_verified_steps_total"]
    assert trees > steps > 0


def test_metrics_show_speculation(server, client):
    openai, model = client
    openai.completions.create(model=model, prompt=PROMPTS[1], max_tokens=8, temperature=0)
    with urllib.request.urlopen(f"{server}/metrics") as response:
        text = response.read().decode()
    drafts = {s.name: s.value for family in text_string_to_metric_families(text)
              for s in family.samples if s.name.startswith("vllm:spec_decode_num_draft")}
    assert drafts["vllm:spec_decode_num_drafts_total"] > 0
    assert drafts["vllm:spec_decode_num_draft_tokens_total"] == 3 * drafts["vllm:spec_decode_num_drafts_total"]


def test_echo_metrics_and_log_line(server, client, tmp_path_factory):
    openai, model = client
    openai.completions.create(model=model, prompt=PROMPTS[2], max_tokens=16, temperature=0)
    time.sleep(3)  # a stats interval (1 s here) reads echo's counters from the worker
    samples = metric_totals(server, ("echo_", "vllm:spec_decode_num"))  # one scrape: both sides agree
    echo = {name: value for name, value in samples.items() if name.startswith("echo_")}
    vllm = {name: value for name, value in samples.items() if name.startswith("vllm:")}
    # echo's own counts agree with vLLM's spec-decode counters (3 drafts per tree, static policy)
    assert echo["echo_verified_draft_tokens_total"] == vllm["vllm:spec_decode_num_draft_tokens_total"] > 0
    assert echo["echo_accepted_draft_tokens_total"] == vllm["vllm:spec_decode_num_accepted_tokens_total"]
    assert echo["echo_verified_trees_total"] == vllm["vllm:spec_decode_num_drafts_total"]
    assert 1.0 <= echo["echo_mean_acceptance_length"] <= 4.0
    assert echo["echo_calibrating"] == 0.0
    log = echo_server_log(tmp_path_factory).read_text()
    assert "echo: policy static" in log


def test_bench_against_the_servers(server, plain_server, smollm2, tmp_path, monkeypatch):
    """`echo-vllm bench --serve` through `vllm bench serve`: both tables' structure and
    arithmetic, its percentiles and saved JSON, the servers' counters and echo's series."""
    monkeypatch.setenv("VLLM_LOG_STATS_INTERVAL", "1")  # the servers' interval: echo's series read after 2 s
    argv = ["bench", "--serve", f"plain={plain_server}", "--serve", f"echo={server}", "--target", smollm2,
            "--datasets", "gsm8k", "--latency-prompts", "2", "--batch-sizes", "1,3", "--max-tokens", "8",
            "--repetitions", "1", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert list(results["latency"]) == ["gsm8k"] and list(results["throughput"]) == ["1", "3"]
    row = results["throughput"]["3"]["echo"]
    assert row["x_plain"] == pytest.approx(row["tokens_per_s"] / row["plain_tokens_per_s"])
    assert 1.0 <= row["mat"] <= 4.0 and row["verified_drafts_per_step"] == pytest.approx(3.0)  # steps 3, topk 1
    assert 0 < row["ttft_ms"]["p50"] <= row["ttft_ms"]["p99"] and row["tpot_ms"]["p50"] > 0
    assert row["itl_ms"]["p50"] > 0 and row["requests_per_s"] > 0 and "echo" in row  # echo's series were read
    saved = json.loads((tmp_path / "vllm-bench" / "throughput-3-echo-1.json").read_text())
    assert (saved["completed"], saved["max_concurrency"], saved["total_output_tokens"]) == (3, 3, 24)
    assert row["tokens_per_s"] == saved["output_throughput"]
    assert "## Serving latency (ms)" in (tmp_path / "report.md").read_text()


def test_bench_refuses_servers_without_plain():
    with pytest.raises(ValueError, match="named 'plain'"):
        parse_servers(["echo=http://127.0.0.1:8001"])
