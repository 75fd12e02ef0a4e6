"""`echo-vllm soak`: many concurrent clients against `vllm serve` with echo; nothing may be lost.

The echo server runs with a KV cache small enough to force preemption. The requests mix
greedy and sampled decoding (temperature, top-p, top-k, seeds, n > 1), max_tokens, stop
strings, streamed and whole answers, prompts up to the context limit (the answer fills it
exactly), and streams the client closes after a few chunks (cancelled). Then a server
without speculation answers every greedy request that completed, as the reference.

What must hold (`problems`): the server alive and healthy at the end, every request not
cancelled complete (each choice with a finish reason), greedy answers identical to the
reference, and no memory growth: resident memory of the server's processes (API server,
engine core, workers) after the second half of the run within MEMORY_SLACK of after the first
(sampled after every tenth of the run, per process, to tell which one grows).
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from echo_vllm.serving import Server, tcmalloc_preload, vllm_server

# Share of the requests whose prompt ends 1-200 tokens before max_model_len and whose answer
# fills the rest: the last trees of such a request would cross the limit.
LONG_PROMPT_SHARE = 0.12
GREEDY_SHARE = 0.4
STREAM_SHARE = 0.5  # of the requests not cancelled (cancelled ones are all streamed)
MAX_TOKENS = 96  # answers of the other requests: 1..MAX_TOKENS tokens
# Fewest tokens a request to be cancelled may ask for: it is cancelled after 1-6 streamed chunks,
# and a chunk carries every token a step committed (up to a whole accepted path)
MIN_CANCELLED_TOKENS = 64
STOP_STRINGS = (["\n\n"], [".", "?"], ["the"])
# Memory after the run's second half may exceed that after its first by this share (allocator
# caches, lazily built kernels) and no more.
MEMORY_SLACK = 0.05


@dataclass(frozen=True)
class SoakRequest:
    index: int
    prompt: str | list[int]  # text, or token ids (long prompts, to control their length exactly)
    params: dict  # OpenAI completions parameters besides model, prompt and stream
    stream: bool
    cancel_after_chunks: int | None  # close the stream after this many chunks

    @property
    def greedy(self) -> bool:
        return self.params["temperature"] == 0.0


@dataclass
class Outcome:
    texts: dict[int, str] = field(default_factory=dict)  # by choice index
    finish_reasons: dict[int, str | None] = field(default_factory=dict)
    cancelled: bool = False
    error: str | None = None

    def completed(self, n: int) -> bool:
        return (not self.cancelled and self.error is None and len(self.finish_reasons) == n
                and all(reason in ("length", "stop") for reason in self.finish_reasons.values()))


def make_requests(count: int, texts: list[str], token_pool: list[int], max_model_len: int,
                  cancel_share: float, seed: int) -> list[SoakRequest]:
    """`count` requests drawn from a seeded generator (the same list for the same arguments)."""
    rng = random.Random(seed)
    requests = []
    for index in range(count):
        # a cancelled request is still running when its client closes the stream: it has room
        # for more tokens than its chunks can carry, and neither a stop string nor EOS ends it
        cancel = rng.random() < cancel_share
        fewest_tokens = MIN_CANCELLED_TOKENS if cancel else 1
        if rng.random() < LONG_PROMPT_SHARE:
            length = rng.randint(max_model_len - 200, max_model_len - fewest_tokens)
            start = rng.randrange(len(token_pool) - length)
            prompt: str | list[int] = token_pool[start:start + length]
            max_tokens = max_model_len - length
        else:
            prompt = rng.choice(texts)
            max_tokens = rng.randint(fewest_tokens, MAX_TOKENS)
        params: dict = {"max_tokens": max_tokens}
        if rng.random() < GREEDY_SHARE:
            params["temperature"] = 0.0
        else:
            params.update(temperature=round(rng.uniform(0.2, 1.3), 2), top_p=rng.choice([1.0, 0.9, 0.5]),
                          n=rng.choice([1, 1, 1, 2, 3]), extra_body={"top_k": rng.choice([-1, 1, 8, 64])})
            if rng.random() < 0.5:
                params["seed"] = rng.randrange(1 << 30)
        if rng.random() < 0.3 and not cancel:
            params["stop"] = rng.choice(STOP_STRINGS)
        if cancel:
            params["extra_body"] = {**params.get("extra_body", {}), "ignore_eos": True}
        requests.append(SoakRequest(index, prompt, params, stream=cancel or rng.random() < STREAM_SHARE,
                                    cancel_after_chunks=rng.randint(1, 6) if cancel else None))
    return requests


async def _one(client, model: str, request: SoakRequest) -> Outcome:
    outcome = Outcome()
    try:
        if not request.stream:
            response = await client.completions.create(model=model, prompt=request.prompt, **request.params)
            for choice in response.choices:
                outcome.texts[choice.index] = choice.text
                outcome.finish_reasons[choice.index] = choice.finish_reason
            return outcome
        stream = await client.completions.create(model=model, prompt=request.prompt, stream=True, **request.params)
        chunks = 0
        async for chunk in stream:
            for choice in chunk.choices:
                outcome.texts[choice.index] = outcome.texts.get(choice.index, "") + choice.text
                if choice.finish_reason is not None:
                    outcome.finish_reasons[choice.index] = choice.finish_reason
            chunks += 1
            if request.cancel_after_chunks is not None and chunks == request.cancel_after_chunks:
                if len(outcome.finish_reasons) < request.params.get("n", 1):
                    outcome.cancelled = True  # the server aborts the request when the stream closes
                    await stream.close()
                    break
    except Exception as error:  # every failure is reported, none stops the soak
        outcome.error = f"{type(error).__name__}: {error}"
    return outcome


async def _run(url: str, model: str, requests: list[SoakRequest], clients: int, bar,
               after_each_tenth=None) -> dict[int, Outcome]:
    """The requests through `clients` concurrent clients, every client busy until the queue is
    empty; outcomes by request index. `after_each_tenth()` runs as each tenth of the requests
    completes (the run does not pause for it, so the load stays at `clients` throughout)."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", timeout=600, max_retries=0)
    queue: asyncio.Queue[SoakRequest] = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)
    outcomes: dict[int, Outcome] = {}
    tenth_ends = {len(requests) * i // 10 for i in range(1, 11)}

    async def worker():
        while not queue.empty():
            request = queue.get_nowait()
            outcomes[request.index] = await _one(client, model, request)
            bar.update(1)
            if after_each_tenth is not None and len(outcomes) in tenth_ends:
                after_each_tenth()

    await asyncio.gather(*(worker() for _ in range(clients)))
    await client.close()
    return outcomes


class PeakMemory:
    """Samples a server's resident memory every second in a thread, keeping the peak."""

    def __init__(self, server: Server):
        self.server, self.peak, self._stop = server, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.is_set():
            if self.server.process.poll() is None:
                self.peak = max(self.peak, self.server.rss_bytes())
            self._stop.wait(1.0)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def metric_totals(url: str, prefixes: tuple[str, ...]) -> dict[str, float]:
    """Sums of the server's Prometheus samples whose names start with one of `prefixes`."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(prefixes):
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


@dataclass
class EchoRun:
    """What the echo server did in the soak: each request's outcome, its processes' resident
    memory after each tenth of the requests, and its state at the end."""

    outcomes: dict[int, Outcome]
    rss: list[dict[str, int]]
    peak_bytes: int
    alive: bool
    metrics: dict[str, float]
    crash_lines: list[str]
    duration_s: float


def soak(target: str, speculative_config: dict, out: str, num_requests: int = 500, clients: int = 32,
         cancel_share: float = 0.2, max_model_len: int = 1024, kv_cache_memory_bytes: int = 96 << 20,
         seed: int = 0) -> dict:
    """Run the soak; returns (and writes to out/soak.json) its report."""
    from transformers import AutoTokenizer

    from echo_vllm.assets.prompts import DATASETS, load_prompts

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = [p.text for dataset in DATASETS for p in load_prompts(dataset)]
    token_pool = AutoTokenizer.from_pretrained(target)("\n\n".join(texts))["input_ids"]
    requests = make_requests(num_requests, texts, token_pool, max_model_len, cancel_share, seed)
    run = _run_echo(target, speculative_config, requests, clients, out_dir, max_model_len, kv_cache_memory_bytes)
    greedy = [r for r in requests if r.greedy and run.outcomes[r.index].completed(1)]
    reference = _run_reference(target, greedy, clients, out_dir, max_model_len)
    settings = {"target": target, "speculative_config": speculative_config, "max_model_len": max_model_len,
                "kv_cache_memory_bytes": kv_cache_memory_bytes, "cancel_share": cancel_share, "seed": seed,
                "allocator": tcmalloc_preload().get("LD_PRELOAD", "glibc malloc")}
    report = _report(requests, run, greedy, reference, clients, settings)
    (out_dir / "soak.json").write_text(json.dumps(report, indent=1))
    return report


def _run_echo(target: str, speculative_config: dict, requests: list[SoakRequest], clients: int, out_dir: Path,
              max_model_len: int, kv_cache_memory_bytes: int) -> EchoRun:
    """Every request against the echo server; memory is sampled as each tenth of them completes
    (the first tenth is the warm-up, and the check compares the end with the half)."""
    started = time.monotonic()
    rss: list[dict[str, int]] = []

    def sample_memory():
        rss.append(server.rss_by_process() if server.process.poll() is None else {})

    with vllm_server(target, ["--speculative-config", json.dumps(speculative_config)], out_dir / "echo_server.log",
                     max_model_len, kv_cache_memory_bytes) as server:
        with PeakMemory(server) as peak, tqdm(total=len(requests), desc="soak (echo)", unit="req") as bar:
            outcomes = asyncio.run(_run(server.url, target, requests, clients, bar, sample_memory))
        alive = server.healthy()
        metrics = metric_totals(server.url, ("vllm:num_preemptions", "vllm:spec_decode_num", "echo_")) if alive else {}
        crash_lines = [line for line in server.log_tail(200_000).splitlines()
                       if "EngineDeadError" in line or "Traceback" in line]
    return EchoRun(outcomes, rss, peak.peak, alive, metrics, crash_lines, time.monotonic() - started)


def _run_reference(target: str, greedy: list[SoakRequest], clients: int, out_dir: Path,
                   max_model_len: int) -> dict[int, Outcome]:
    """The greedy requests echo completed, whole, against a server without speculation."""
    with vllm_server(target, [], out_dir / "plain_server.log", max_model_len) as plain, \
            tqdm(total=len(greedy), desc="reference (no speculation)", unit="req") as bar:
        whole = [SoakRequest(r.index, r.prompt, r.params, stream=False, cancel_after_chunks=None) for r in greedy]
        return asyncio.run(_run(plain.url, target, whole, clients, bar))


def _report(requests: list[SoakRequest], run: EchoRun, greedy: list[SoakRequest], reference: dict[int, Outcome],
            clients: int, settings: dict) -> dict:
    """The soak's report: what happened to every request, the reference comparison, memory,
    the server's end state, and what went wrong (`problems`)."""
    outcomes, rss, metrics = run.outcomes, run.rss, run.metrics
    report = {
        "requests": len(requests), "clients": clients,
        "cancelled": sum(outcomes[r.index].cancelled for r in requests),
        "completed": sum(outcomes[r.index].completed(r.params.get("n", 1)) for r in requests),
        "incomplete": [r.index for r in requests
                       if not outcomes[r.index].cancelled and not outcomes[r.index].completed(r.params.get("n", 1))],
        "errors": sorted({o.error for o in outcomes.values() if o.error}),
        "greedy_compared": len(greedy),
        "greedy_mismatches": [r.index for r in greedy if outcomes[r.index].texts != reference[r.index].texts],
        "long_prompts": sum(isinstance(r.prompt, list) for r in requests),
        "server_alive_at_end": run.alive, "crash_log_lines": run.crash_lines[:20],
        "preemptions": metrics.get("vllm:num_preemptions_total"),
        "spec_decode": {k: v for k, v in metrics.items() if k.startswith("vllm:spec_decode")},
        "echo_metrics": {k: v for k, v in metrics.items() if k.startswith("echo_")},
        "rss_mib": {"after_warm_up": sum(rss[0].values()) / 2**20, "after_half": sum(rss[4].values()) / 2**20,
                    "end": sum(rss[9].values()) / 2**20, "peak": run.peak_bytes / 2**20,
                    "after_each_tenth": [{name: b / 2**20 for name, b in sample.items()} for sample in rss]},
        "duration_s": run.duration_s,
        "settings": settings,
        "requests_sent": [asdict(r) | {"outcome": asdict(outcomes[r.index])} for r in requests],
    }
    report["problems"] = problems(report)
    return report


def problems(report: dict) -> list[str]:
    """What the soak found wrong (empty when everything held)."""
    found = []
    if not report["server_alive_at_end"] or report["crash_log_lines"]:
        found.append(f"server crashed or unhealthy: {report['crash_log_lines'][:3]}")
    if report["incomplete"]:
        found.append(f"{len(report['incomplete'])} requests not cancelled did not complete "
                     f"(first: {report['incomplete'][:5]}; errors {report['errors'][:3]})")
    if report["greedy_mismatches"]:
        found.append(f"{len(report['greedy_mismatches'])} greedy answers differ from no speculation "
                     f"(first: {report['greedy_mismatches'][:5]})")
    rss = report["rss_mib"]
    if rss["end"] > rss["after_half"] * (1 + MEMORY_SLACK):
        found.append(f"memory grew over the second half: {rss['after_half']:.0f} -> {rss['end']:.0f} MiB")
    return found


def summary(report: dict) -> str:
    rss = report["rss_mib"]
    lines = [
        f"requests {report['requests']} from {report['clients']} clients in {report['duration_s']:.0f} s: "
        f"{report['completed']} completed, {report['cancelled']} cancelled mid-stream, "
        f"{len(report['incomplete'])} incomplete; {report['long_prompts']} prompts up to the context limit",
        f"greedy answers compared with no speculation: {report['greedy_compared']}, "
        f"mismatches {len(report['greedy_mismatches'])}",
        f"server alive at the end: {report['server_alive_at_end']}; preemptions: {report['preemptions']}",
        f"resident memory (MiB): after warm-up {rss['after_warm_up']:.0f}, after half {rss['after_half']:.0f}, "
        f"end {rss['end']:.0f}, peak {rss['peak']:.0f} (allocator: {report['settings']['allocator']})",
    ]
    tenths = rss.get("after_each_tenth") or []
    if len(tenths) == 10:
        lines += [f"  {name}: " + ", ".join(f"{sample.get(name, 0):.0f}" for sample in (tenths[0], tenths[4], tenths[9]))
                  for name in tenths[9]]
    lines += [f"PROBLEM: {p}" for p in report["problems"]] or ["every check held"]
    return "\n".join(lines)
