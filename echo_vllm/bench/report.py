"""The bench's outputs from its results: report.md, results.json, and PNG plots (plots.py).

Pure functions of the results dict `offline.run_offline` returns (tests check the
arithmetic on made-up numbers): `latency[dataset][method]` and `throughput[bs][method]`,
each with tokens_per_s / runs / plain_tokens_per_s / plain_runs / x_plain / mat / utilization.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path


def _number(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _rate(r: dict) -> str:
    return f"{r['tokens_per_s']:.1f} ({min(r['runs']):.1f}-{max(r['runs']):.1f})"


def plain_runs(by_method: dict) -> list[float]:
    """Every plain run taken beside the methods of one dataset or batch size (a resumed
    report pools runs of several invocations, each method's ratio against its own)."""
    return [run for r in by_method.values() for run in r["plain_runs"]]


def best_eagle3(by_method: dict) -> str | None:
    """The eagle3 chain length with the best x plain among those run."""
    chains = [name for name in by_method if name.startswith("eagle3")]
    return max(chains, key=lambda name: by_method[name]["x_plain"]) if chains else None


def best_peer(by_method: dict) -> tuple[str, float]:
    """vLLM's fastest configuration among those run beside one workload (no speculation, each
    eagle3 chain, Dynamic SD): its name and x plain."""
    peers = {"no speculation": 1.0, **{name: r["x_plain"] for name, r in by_method.items()
                                       if name.startswith("eagle3") or name == "dynamic_sd"}}
    name = max(peers, key=peers.get)
    return name, peers[name]


def echo_against_peers(results: dict) -> list[str]:
    """Echo's x plain over the best eagle3 chain's and over the best peer's, per workload."""
    lines = ["| table | workload | echo x plain | best eagle3 | echo / it | best peer | echo / it |",
             "|---|---|---|---|---|---|---|"]
    for table in ("latency", "throughput"):
        for key, by_method in results[table].items():
            if "echo" not in by_method:
                continue
            echo = by_method["echo"]["x_plain"]
            eagle3 = best_eagle3(by_method)
            eagle3_cells = ("- | -" if eagle3 is None else
                            f"{eagle3} ({by_method[eagle3]['x_plain']:.2f}) | {echo / by_method[eagle3]['x_plain']:.2f}")
            peer, peer_x = best_peer(by_method)
            lines.append(f"| {table} | {key} | {echo:.2f} | {eagle3_cells} | {peer} ({peer_x:.2f}) | "
                         f"{echo / peer_x:.2f} |")
    return lines


def gains(by_method: dict, name: str) -> tuple[float | None, float | None]:
    """x plain of `name` over the best eagle3's and over static's (each ratio of ratios is
    taken against its own interleaved plain runs)."""
    eagle3 = best_eagle3(by_method)
    x_plain = by_method[name]["x_plain"]
    over_eagle3 = x_plain / by_method[eagle3]["x_plain"] if eagle3 else None
    over_static = x_plain / by_method["static"]["x_plain"] if "static" in by_method else None
    return over_eagle3, over_static


def latency_averages(latency: dict, name: str) -> dict:
    """Mean MAT, utilization and speedup of one method over the datasets (the table's Avg)."""
    rows = [by_method[name] for by_method in latency.values() if name in by_method]

    def mean(key):
        values = [r[key] for r in rows if r[key] is not None]
        return statistics.mean(values) if values else None
    return {"mat": mean("mat"), "utilization": mean("utilization"), "x_plain": mean("x_plain")}


def echo_choice(r: dict) -> str:
    """Echo's decisions beside its row: budget, gate, share of steps drafted (a served run's,
    read from /metrics, may lack some of them)."""
    echo = r.get("echo")
    if not echo:
        return ""
    parts = []
    if echo.get("budget") is not None:
        parts.append(f"budget {echo['budget']}" + ("" if echo.get("mean_budget") is None
                                                   else f" (mean {echo['mean_budget']:.1f})"))
    elif echo.get("mean_budget") is not None:
        parts.append(f"budget mean {echo['mean_budget']:.1f}")
    if echo.get("judge_depth"):
        thresholds = ", ".join(f"{t:.3g}" for t in echo["threshold"])
        depths = ", ".join(map(str, echo["judge_depth"]))
        parts.append(f"{echo.get('policy') or 'gate'} depth {depths} threshold {thresholds}")
    if echo.get("gate_pass_rate") is not None:
        parts.append(f"gate pass {echo['gate_pass_rate']:.0%}")
    if echo.get("drafted_share") is not None:
        explored = echo.get("explored_share")  # absent from results measured before exploration existed
        parts.append(f"drafted {echo['drafted_share']:.0%} of steps"
                     + (f" ({explored:.0%} exploring)" if explored else ""))
    if echo.get("branching_share") is not None:  # absent from results measured before it was counted
        parts.append(f"{echo['branching_share']:.0%} of trees branched")
    if echo.get("calibrating"):
        parts.append("still calibrating")
    return "; ".join(parts)


def latency_table(latency: dict) -> list[str]:
    datasets = list(latency)
    names = list(dict.fromkeys(name for by_method in latency.values() for name in by_method))
    head = "| method | " + " | ".join(f"{d} MAT | {d} util | {d} tok/s | {d} speedup" for d in datasets)
    lines = [head + " | Avg MAT | Avg speedup |", "|---|" + "---|---|---|---|" * len(datasets) + "---|---|"]
    plain = " | ".join(f"- | - | {statistics.median(plain_runs(latency[d])):.1f} | 1.00" for d in datasets)
    lines.append(f"| no speculation | {plain} | 1.00 | 1.00 |")
    for name in names:
        cells = []
        for d in datasets:
            r = latency[d].get(name)
            cells.append("- | - | - | -" if r is None else
                         f"{_number(r['mat'])} | {_number(r['utilization'])} | {_rate(r)} | {r['x_plain']:.2f}")
        average = latency_averages(latency, name)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_number(average['mat'])} | "
                     f"{_number(average['x_plain'])} |")
    return lines


def throughput_table(throughput: dict) -> list[str]:
    lines = ["| bs | method | tok/s (min-max) | plain beside | x plain | MAT | util | vs best eagle3 | vs static "
             "| echo's choice |", "|---|---|---|---|---|---|---|---|---|---|"]
    for batch_size, by_method in throughput.items():
        plain = plain_runs(by_method)
        lines.append(f"| {batch_size} | no speculation | {statistics.median(plain):.1f} "
                     f"({min(plain):.1f}-{max(plain):.1f}) | | 1.00 | - | - | | | |")
        for name, r in by_method.items():
            over_eagle3, over_static = gains(by_method, name)
            lines.append(f"| {batch_size} | {name} | {_rate(r)} | {r['plain_tokens_per_s']:.1f} | {r['x_plain']:.2f} | "
                         f"{_number(r['mat'])} | "
                         f"{_number(r['utilization'])} | {_number(over_eagle3)} | {_number(over_static)} | "
                         f"{echo_choice(r)} |")
    return lines


def serving_latency_table(results: dict) -> list[str]:
    """Requests/s and TTFT / TPOT / ITL percentiles of served runs (online mode), no speculation
    first ("-" where the client did not measure it)."""
    metrics = ("ttft", "tpot", "itl")

    def cells(r: dict, prefix: str = "") -> str:
        rate = _number(r.get(f"{prefix}requests_per_s"), 2)
        return rate + " | " + " | ".join(_number((r.get(f"{prefix}{m}_ms") or {}).get(p), 1)
                                         for m in metrics for p in ("p50", "p90", "p99"))

    head = " | ".join(f"{m.upper()} {p}" for m in metrics for p in ("p50", "p90", "p99"))
    lines = [f"| table | workload | method | req/s | {head} |", "|---|---|---|---|" + "---|" * 9]
    for table in ("latency", "throughput"):
        for key, by_method in results[table].items():
            first = next(iter(by_method.values()))
            lines.append(f"| {table} | {key} | no speculation | {cells(first, 'plain_')} |")
            lines += [f"| {table} | {key} | {name} | {cells(r)} |" for name, r in by_method.items()]
    return lines


def serving_note(results: dict) -> str:
    if results.get("client") == "vllm bench serve":
        return ("Each run is one `vllm bench serve` (its saved JSON in vllm-bench/): completions streamed with "
                "the chat template applied by the client, at most bs requests in flight; requests/s and "
                "percentiles as it reports them per run, median over the runs.")
    return "Streamed requests through the OpenAI API; percentiles over every request of every run."


def markdown(results: dict, meta: dict) -> str:
    plan = meta["plan"]
    out = [f"# echo-vllm bench — {meta['date']}", "",
           f"Target `{plan['target']}`, " + (f"servers {', '.join(plan['serve'])}" if plan.get("serve")
                                              else f"head `{plan['head']}`") + f"; {meta['machine']}; vLLM {meta['vllm']}.",
           f"Greedy, {plan['max_tokens']} output tokens per request (ignore_eos); median of "
           f"{plan['repetitions']} runs interleaved with no speculation (min-max in brackets); every ratio "
           "compares a method's runs with the plain runs taken in turn with them.", "",
           *([f"Command: `{meta['command']}`"] if "invocations" not in meta else
             ["Commands (one run, resumed):", "", *(f"- {i['date']}: `{i['command']}`" for i in meta["invocations"])]),
           ""]
    if results["latency"]:
        out += ["## Table 1: latency, batch size 1", "",
                f"The first {plan['latency_prompts']} prompts of each set, one after another.", "",
                *latency_table(results["latency"]), ""]
    if results["throughput"]:
        inputs = {k.split(" ", 1)[1]: v for k, v in results["input_tokens"].items() if k.startswith("throughput")}
        described = ", ".join(f"bs {b}: {n:.0f}" for b, n in inputs.items())
        out += ["## Table 2: throughput by batch size", "",
                f"MT-Bench prompts nearest {plan['input_tokens']} input tokens (mean input tokens {described}); "
                "bs B submits B prompts at once (bs 1: the prompts one after another).", "",
                *throughput_table(results["throughput"]), ""]
    if any("echo" in by_method for table in ("latency", "throughput") for by_method in results[table].values()):
        out += ["## Echo against vLLM's best", "",
                "Echo's x plain over the best eagle3 chain's (K as run) and over the best peer's: the fastest "
                "of no speculation, the eagle3 chains and Dynamic SD at that workload (each x plain against "
                "its own interleaved plain runs).", "", *echo_against_peers(results), ""]
    served = any("ttft_ms" in r for table in ("latency", "throughput")
                 for by_method in results[table].values() for r in by_method.values())
    if served:
        out += ["## Serving latency (ms)", "", serving_note(results), "", *serving_latency_table(results), ""]
    out += ["MAT: tokens committed per request per verification step, bonus token included. util: accepted / "
            "verified draft tokens. no speculation: the median of every plain run beside the methods; plain "
            "beside: the median of the plain runs taken in turn with that method. x plain: the median over "
            "runs of each run's tokens/s over the plain run taken just before it (results measured before "
            "2026-12-07 evening: the method's median over plain beside). "
            "vs best eagle3 / vs static: x plain over theirs at the same batch size.", ""]
    return "\n".join(out)


def write_outputs(results: dict, meta: dict, out_dir: str, with_plots: bool = True) -> list[Path]:
    """results.json (every raw measurement), report.md, and the plots; the paths written."""
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    (directory / "report.md").write_text(markdown(results, meta))
    written = [directory / "results.json", directory / "report.md"]
    if not with_plots:
        return written
    from echo_vllm.bench.plots import write_plots

    return written + write_plots(results, meta, directory)


def render(results_json: str) -> list[Path]:
    """Re-draws a saved run's report.md and plots beside its results.json, or a projection's
    projection.md and projection.png beside its projection.json, measuring nothing and leaving
    the JSON as it is; the paths written."""
    path = Path(results_json)
    if not path.is_file():
        raise ValueError(f"echo-vllm bench: --render {results_json!r}: no such file (a results.json or "
                         "projection.json an earlier run wrote)")
    saved = json.loads(path.read_text())
    if "projection" in saved:
        from echo_vllm.bench.simulate import write_projection

        return write_projection(saved["projection"], saved["profile"], saved["source"], path.parent)
    if not {"meta", "results"} <= set(saved):
        raise ValueError(f"echo-vllm bench: --render {results_json!r} holds neither a bench run (meta, results) "
                         "nor a projection")
    from echo_vllm.bench.plots import write_plots

    (path.parent / "report.md").write_text(markdown(saved["results"], saved["meta"]))
    return [path.parent / "report.md", *write_plots(saved["results"], saved["meta"], path.parent)]
