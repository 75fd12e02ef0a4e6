"""`echo-vllm bench --serve NAME=URL ...`: the same tables against running `vllm serve` servers.

Each server was started with its own method (one of them, named `plain`, without
speculation). For every workload the servers take turns run by run, as the offline engines
do. A run at batch size N sends its N chat requests at once (bs 1: one after another),
streamed, through the OpenAI client, and measures:
  tokens/s   completion tokens (the server's usage counts) / wall time of the run
  TTFT       time to a request's first streamed token
  TPOT       (last token time - first token time) / (completion tokens - 1), per request
  MAT, util  from the server's vLLM spec-decode counters on /metrics, before and after
"""

from __future__ import annotations

import asyncio
import statistics
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from tqdm import tqdm

from echo_vllm.bench.offline import SPEC_COUNTERS, WARM_UP_TOKENS, Workload, acceptance, workloads
from echo_vllm.bench.plan import BenchPlan

PLAIN = "plain"


def parse_servers(values: list[str]) -> dict[str, str]:
    """`NAME=URL` pairs, in order; one must be named `plain` (every ratio is against it)."""
    servers: dict[str, str] = {}
    for value in values:
        name, _, url = value.partition("=")
        if not name or not url.startswith(("http://", "https://")) or name in servers:
            raise ValueError(f"echo-vllm bench: --serve {value!r} must be NAME=http://HOST:PORT, "
                             "each NAME once")
        servers[name] = url.rstrip("/")
    if PLAIN not in servers:
        raise ValueError(f"echo-vllm bench: --serve needs a server named {PLAIN!r} (started without "
                         f"speculation), got {list(servers)}")
    return servers


def spec_counts(url: str) -> dict[str, float]:
    """vLLM's spec-decode counters on the server's /metrics, summed over their label sets."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
        text = response.read().decode()
    counts = dict.fromkeys(SPEC_COUNTERS, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name.removesuffix("_total")
            if name in counts and sample.name.endswith("_total"):
                counts[name] += sample.value
    return counts


def served_model(url: str) -> str:
    import json

    with urllib.request.urlopen(f"{url}/v1/models", timeout=30) as response:
        return json.loads(response.read())["data"][0]["id"]


async def one_request(client, model: str, chat, max_tokens: int) -> tuple[float, float, int]:
    """Streams one chat completion: (seconds to the first token, seconds to the last, tokens)."""
    start = time.perf_counter()
    first = last = None
    tokens = 0
    stream = await client.chat.completions.create(
        model=model, messages=chat, max_tokens=max_tokens, temperature=0.0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            last = time.perf_counter() - start
            first = last if first is None else first
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return first or 0.0, last or 0.0, tokens


async def run_async(url: str, model: str, workload: Workload, max_tokens: int) -> dict:
    from openai import AsyncOpenAI

    async with AsyncOpenAI(base_url=f"{url}/v1", api_key="bench", timeout=3600) as client:
        start = time.perf_counter()
        if workload.batch_size == 1:
            requests = [await one_request(client, model, chat, max_tokens) for chat in workload.chats]
        else:
            requests = await asyncio.gather(*(one_request(client, model, chat, max_tokens) for chat in workload.chats))
        seconds = time.perf_counter() - start
    return {"tokens_per_s": sum(r[2] for r in requests) / seconds,
            "ttft_s": [r[0] for r in requests],
            "tpot_s": [(r[1] - r[0]) / (r[2] - 1) for r in requests if r[2] > 1]}


def percentiles(values: list[float]) -> dict[str, float]:
    """p50 / p90 / p99 in milliseconds (nearest rank)."""
    ordered = sorted(values)

    def rank(p):
        return 1000 * ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]
    return {"p50": rank(50), "p90": rank(90), "p99": rank(99)} if ordered else {}


def summarize(runs: list[dict]) -> dict:
    rates = [r["tokens_per_s"] for r in runs]
    return {"tokens_per_s": statistics.median(rates), "runs": rates,
            "ttft_ms": percentiles([t for r in runs for t in r["ttft_s"]]),
            "tpot_ms": percentiles([t for r in runs for t in r["tpot_s"]])}


def run_online(plan: BenchPlan, servers: dict[str, str], save) -> dict:
    """Every workload on every server, servers in turns; `save(results)` after each workload."""
    models = {name: served_model(url) for name, url in servers.items()}
    loads = workloads(plan)
    results: dict = {"latency": {}, "throughput": {}, "input_tokens": {}}
    with tqdm(total=len(loads) * plan.repetitions, desc="bench (serve)", unit="round") as bar:
        for w in loads:
            results["input_tokens"][f"{w.table} {w.key}"] = statistics.mean(w.input_tokens)
            for name, url in servers.items():
                asyncio.run(run_async(url, models[name], w, min(WARM_UP_TOKENS, plan.max_tokens)))  # warm-up
            counts_before = {name: spec_counts(url) for name, url in servers.items()}
            runs: dict[str, list[dict]] = {name: [] for name in servers}
            for _ in range(plan.repetitions):
                for name, url in servers.items():
                    runs[name].append(asyncio.run(run_async(url, models[name], w, plan.max_tokens)))
                bar.update(1)
            plain = summarize(runs[PLAIN])
            for name, url in servers.items():
                if name == PLAIN:
                    continue
                row = summarize(runs[name])
                results[w.table].setdefault(w.key, {})[name] = {
                    **row, "plain_tokens_per_s": plain["tokens_per_s"], "plain_runs": plain["runs"],
                    "plain_ttft_ms": plain["ttft_ms"], "plain_tpot_ms": plain["tpot_ms"],
                    "x_plain": row["tokens_per_s"] / plain["tokens_per_s"],
                    **acceptance(counts_before[name], spec_counts(url)),
                }
            save(results)
    return results
