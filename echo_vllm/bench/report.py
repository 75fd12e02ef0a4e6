"""The bench's outputs from its results: report.md, results.json, and PNG plots.

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
    """Echo's decisions beside its row: budget, gate, share of steps drafted."""
    echo = r.get("echo")
    if not echo:
        return ""
    parts = []
    if echo["budget"] is not None:
        parts.append(f"budget {echo['budget']}" + ("" if echo["mean_budget"] is None
                                                   else f" (mean {echo['mean_budget']:.1f})"))
    if echo["judge_depth"]:
        thresholds = ", ".join(f"{t:.3g}" for t in echo["threshold"])
        depths = ", ".join(map(str, echo["judge_depth"]))
        parts.append(f"{echo['policy']} depth {depths} threshold {thresholds}")
    if echo["gate_pass_rate"] is not None:
        parts.append(f"gate pass {echo['gate_pass_rate']:.0%}")
    if echo["drafted_share"] is not None:
        explored = echo.get("explored_share")  # absent from results measured before exploration existed
        parts.append(f"drafted {echo['drafted_share']:.0%} of steps"
                     + (f" ({explored:.0%} exploring)" if explored else ""))
    if echo["calibrating"]:
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
    """TTFT and TPOT percentiles of served runs (online mode), no speculation first."""
    def cells(ttft, tpot):
        return " | ".join(_number(d.get(p), 1) for d in (ttft, tpot) for p in ("p50", "p90", "p99"))

    lines = ["| table | workload | method | TTFT p50 | TTFT p90 | TTFT p99 | TPOT p50 | TPOT p90 | TPOT p99 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for table in ("latency", "throughput"):
        for key, by_method in results[table].items():
            first = next(iter(by_method.values()))
            lines.append(f"| {table} | {key} | no speculation | {cells(first['plain_ttft_ms'], first['plain_tpot_ms'])} |")
            lines += [f"| {table} | {key} | {name} | {cells(r['ttft_ms'], r['tpot_ms'])} |" for name, r in by_method.items()]
    return lines


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
    served = any("ttft_ms" in r for table in ("latency", "throughput")
                 for by_method in results[table].values() for r in by_method.values())
    if served:
        out += ["## Serving latency (ms)", "", "Streamed requests through the OpenAI API; percentiles over every "
                "request of every run.", "", *serving_latency_table(results), ""]
    out += ["MAT: tokens committed per request per verification step, bonus token included. util: accepted / "
            "verified draft tokens. no speculation: the median of every plain run beside the methods; plain "
            "beside: the median of the plain runs taken in turn with that method, its x plain's denominator. "
            "vs best eagle3 / vs static: x plain over theirs at the same batch size.", ""]
    return "\n".join(out)


def plot(results: dict, out_dir: Path) -> list[Path]:
    """throughput.png and utilization.png (by batch size), speedup.png (by dataset)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    throughput = results["throughput"]
    if throughput:
        sizes = [int(b) for b in throughput]
        names = list(dict.fromkeys(n for by_method in throughput.values() for n in by_method))
        for file, key, label in (("throughput.png", "tokens_per_s", "output tokens/s"),
                                 ("utilization.png", "utilization", "accepted / verified drafts")):
            fig, ax = plt.subplots(figsize=(7, 4.5))
            if key == "tokens_per_s":
                ax.plot(sizes, [statistics.median(plain_runs(by_method)) for by_method in throughput.values()],
                        "k--o", label="no speculation")
            for name in names:
                points = [(int(b), by_method[name][key]) for b, by_method in throughput.items()
                          if name in by_method and by_method[name][key] is not None]
                if points:
                    ax.plot(*zip(*points), "-o", label=name)
            ax.set_xscale("log", base=2)
            ax.set_xticks(sizes, [str(s) for s in sizes])
            ax.set(xlabel="batch size", ylabel=label)
            ax.legend()
            ax.grid(alpha=0.3)
            fig.tight_layout()
            fig.savefig(out_dir / file, dpi=120)
            plt.close(fig)
            written.append(out_dir / file)
    latency = results["latency"]
    if latency:
        names = list(dict.fromkeys(n for by_method in latency.values() for n in by_method))
        fig, ax = plt.subplots(figsize=(7, 4.5))
        width = 0.8 / max(len(names), 1)
        for i, name in enumerate(names):
            values = [latency[d][name]["x_plain"] if name in latency[d] else 0.0 for d in latency]
            ax.bar([j + i * width for j in range(len(latency))], values, width, label=name)
        ax.axhline(1.0, color="k", linestyle="--", linewidth=1)
        ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(latency))], list(latency))
        ax.set(ylabel="speedup over no speculation (bs 1)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "speedup.png", dpi=120)
        plt.close(fig)
        written.append(out_dir / "speedup.png")
    return written


def write_outputs(results: dict, meta: dict, out_dir: str, with_plots: bool = True) -> list[Path]:
    """results.json (every raw measurement), report.md, and the plots; the paths written."""
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    (directory / "report.md").write_text(markdown(results, meta))
    written = [directory / "results.json", directory / "report.md"]
    return written + (plot(results, directory) if with_plots else [])
