"""The bench's pictures, each method drawn the same way in every one of them.

  throughput.png   output tokens/s by batch size (served runs: by concurrency)
  utilization.png  accepted / verified draft tokens by batch size; where a method (echo) did
                   not draft, or too little to measure, a marker in a band below 0 says so
                   (no utilization was measured there, not 0)
  speedup.png      x no speculation at batch size 1, per prompt set
  projection.png   `--simulate`'s projected x no speculation by batch size, titled a PROJECTION

`method_style(name)` is the one mapping from a method's name to its colour, marker and line
style. Each `*_figure` function returns its matplotlib Figure (tests read its artists);
`write_plots` / `write_projection_plot` save them. Legends sit outside the axes, on the right.
Methods whose points coincide (static, ddd and opt_tree verify the same tree) are told apart
by marker and line style and by a small sideways nudge (a few % of a batch size on the log axis).
"""

from __future__ import annotations

import statistics
import zlib
from pathlib import Path

PLAIN = "no speculation"
# echo counts as not drafting at a batch size where it drafted fewer steps than this: the few
# drafted steps there were exploration, and their utilization describes a handful of drafts
UNDRAFTED_SHARE = 0.01
# nor is a utilization of fewer verified draft tokens than this (0 of 2 says nothing)
MIN_VERIFIED_DRAFT_TOKENS = 20
UNDRAFTED = "(almost) no drafting"
STYLES = {  # name: (colour, marker, line style, nudge in octaves of batch size)
    PLAIN: ("black", "o", "--", 0.0),
    "echo": ("tab:red", "o", "-", 0.0),
    "static": ("tab:blue", "s", "-", -0.07),
    "ddd": ("tab:green", "^", "--", 0.0),
    "opt_tree": ("tab:purple", "v", ":", 0.07),
    "eagle3": ("tab:orange", "D", "-", 0.0),  # a served run's name for vLLM's chain
    "eagle3 K=1": ("#fdae6b", "D", "-", 0.0),
    "eagle3 K=2": ("tab:orange", "D", "-", 0.0),
    "eagle3 K=3": ("#a63603", "D", "-", 0.0),
}
OTHER_COLOURS = ("tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan")


def method_style(name: str) -> dict:
    """Colour, marker, line style and nudge of a method, the same in every figure. A name
    not in STYLES (a served run's own) gets a colour from its name alone, not its order."""
    colour, marker, linestyle, nudge = STYLES.get(
        name, (OTHER_COLOURS[zlib.crc32(name.encode()) % len(OTHER_COLOURS)], "P", "-.", 0.0))
    return {"color": colour, "marker": marker, "linestyle": linestyle, "nudge": nudge,
            "linewidth": 2.4 if name == "echo" else 1.5}


def undrafted(r: dict) -> bool:
    """Whether a method measured nothing worth a utilization at this workload: it verified no
    draft (utilization None), fewer than MIN_VERIFIED_DRAFT_TOKENS (where the row counts them:
    served runs), or it is echo and drafted under UNDRAFTED_SHARE of its steps."""
    share = (r.get("echo") or {}).get("drafted_share")
    verified = r.get("verified_draft_tokens")
    return (r.get("utilization") is None or (share is not None and share < UNDRAFTED_SHARE)
            or (verified is not None and verified < MIN_VERIFIED_DRAFT_TOKENS))


def pyplot():
    """matplotlib.pyplot on the Agg backend: figures go to files, no display needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure(title: str, subtitle: str):
    import textwrap

    fig, ax = pyplot().subplots(figsize=(9.5, 5.0), layout="constrained")
    fig.suptitle(title, fontweight="bold")
    ax.set_title("\n".join(textwrap.wrap(subtitle, 100)), fontsize=8.5, color="0.3", loc="left")
    ax.grid(alpha=0.3)
    return fig, ax


def _legend(ax) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False, fontsize=9)


def _line(ax, name: str, xs: list[float], ys: list[float], **extra):
    style = method_style(name)
    nudged = [x * 2 ** style["nudge"] for x in xs]
    return ax.plot(nudged, ys, color=style["color"], marker=style["marker"], linestyle=style["linestyle"],
                   linewidth=style["linewidth"], label=name, **extra)


def _batch_axis(ax, sizes: list[int], label: str) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.minorticks_off()
    ax.set_xlabel(label)


def _batch_label(meta: dict) -> str:
    if meta.get("plan", {}).get("serve"):
        return "concurrency (requests in flight)"
    return "batch size (requests submitted at once)"


def context(meta: dict) -> str:
    """One line on what was measured where: target, machine (its first two parts), vLLM."""
    plan = meta.get("plan", {})
    machine = ", ".join(str(meta.get("machine", "?")).split(", ")[:2])
    how = "served (vllm serve)" if plan.get("serve") else "offline (LLM())"
    runs = plan.get("repetitions", "?")
    return (f"{plan.get('target', '?')} on {machine}, vLLM {meta.get('vllm', '?')}, {how}; "
            f"median of {runs} run{'' if runs == 1 else 's'}, {plan.get('max_tokens', '?')} output tokens per request")


def _names(by_key: dict) -> list[str]:
    return list(dict.fromkeys(n for by_method in by_key.values() for n in by_method))


def _mark_idle(ax, name: str, xs: list[float], ys: list[float], label: str) -> None:
    """Hollow markers: where `name` did not draft (it ran as no speculation would)."""
    style = method_style(name)
    ax.plot([x * 2 ** style["nudge"] for x in xs], ys, linestyle="none", marker=style["marker"], markersize=10,
            markerfacecolor="white", markeredgecolor=style["color"], markeredgewidth=2, label=label, zorder=3)


def throughput_figure(throughput: dict, meta: dict):
    """Output tokens/s by batch size, no speculation dashed black; hollow where a method did not draft."""
    from echo_vllm.bench.report import plain_runs

    served = bool(meta.get("plan", {}).get("serve"))
    sizes = [int(b) for b in throughput]
    fig, ax = _figure(f"Output throughput by {'concurrency' if served else 'batch size'} (measured)", context(meta))
    _line(ax, PLAIN, sizes, [statistics.median(plain_runs(by_method)) for by_method in throughput.values()])
    for name in _names(throughput):
        points = [(int(b), by_method[name]) for b, by_method in throughput.items() if name in by_method]
        _line(ax, name, [b for b, _ in points], [r["tokens_per_s"] for _, r in points])
        idle = [(b, r["tokens_per_s"]) for b, r in points if undrafted(r)]
        if idle:
            _mark_idle(ax, name, [b for b, _ in idle], [t for _, t in idle], f"{name}: {UNDRAFTED}")
    _batch_axis(ax, sizes, _batch_label(meta))
    ax.set_ylabel("output tokens/s (median of runs)")
    ax.set_ylim(bottom=0)
    _legend(ax)
    return fig


def utilization_figure(throughput: dict, meta: dict):
    """Accepted / verified draft tokens by batch size. Where a method did not draft there is no
    utilization: its marker sits in a grey band below 0 labelled so, and its line breaks."""
    served = bool(meta.get("plan", {}).get("serve"))
    sizes = [int(b) for b in throughput]
    fig, ax = _figure(f"Draft utilization by {'concurrency' if served else 'batch size'} (measured)", context(meta))
    measured = [r["utilization"] for by_method in throughput.values() for r in by_method.values() if not undrafted(r)]
    top = 1.15 * max(measured, default=0.0) or 1.0  # all 0 (a random head): still an axis
    band = -0.14 * top
    idle_any = False
    for name in _names(throughput):
        points = [(int(b), by_method[name]) for b, by_method in throughput.items() if name in by_method]
        _line(ax, name, [b for b, _ in points], [float("nan") if undrafted(r) else r["utilization"] for _, r in points])
        idle = [b for b, r in points if undrafted(r)]
        if idle:
            idle_any = True
            _mark_idle(ax, name, idle, [band / 2] * len(idle), f"{name}: {UNDRAFTED}")
    if idle_any:
        ax.axhspan(band, 0.0, color="0.92", zorder=0)
        ax.text(0.01, band / 2, f"{UNDRAFTED}: no utilization", transform=ax.get_yaxis_transform(), va="center", fontsize=8,
                color="0.35")
    ax.set_ylim(band if idle_any else 0.0, top)
    ax.set_yticks([t for t in ax.get_yticks() if 0 <= t <= top])
    _batch_axis(ax, sizes, _batch_label(meta))
    ax.set_ylabel("utilization (accepted / verified draft tokens)")
    _legend(ax)
    return fig


def speedup_figure(latency: dict, meta: dict):
    """x no speculation at batch size 1, a group of bars per prompt set; a method not run on a
    set has no bar there (not a bar at 0)."""
    names = _names(latency)
    fig, ax = _figure("Speedup at batch size 1 by prompt set (measured)", context(meta))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        sets = [j for j, d in enumerate(latency) if name in latency[d]]
        values = [latency[d][name]["x_plain"] for d in latency if name in latency[d]]
        style = method_style(name)
        bars = ax.bar([j + (i - (len(names) - 1) / 2) * width for j in sets], values, width, label=name,
                      color=style["color"], edgecolor="white")
        ax.bar_label(bars, fmt="%.2f", fontsize=7, label_type="center", color="white", fontweight="bold")
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label=f"{PLAIN} (1.0)")
    ax.set_xticks(range(len(latency)), list(latency))
    ax.set_xlabel("prompt set")
    ax.set_ylabel("speedup (tokens/s ÷ no speculation's)")
    ax.set_ylim(0, 1.12 * max([1.0] + [r["x_plain"] for by_method in latency.values() for r in by_method.values()]))
    ax.grid(axis="x", visible=False)
    _legend(ax)
    return fig


def projection_figure(projection: dict, profile_name: str, source: str):
    """`--simulate`'s projected x no speculation by batch size: a PROJECTION, so titled."""
    sizes = [int(b) for b in projection]
    fig, ax = _figure(f"PROJECTION, not a measurement: {profile_name}",
                      f"step times from a GPU roofline (echo_vllm/bench/simulate.py); acceptance measured in {source}")
    fig.texts[0].set_color("darkred")
    _line(ax, PLAIN, sizes, [1.0] * len(sizes))
    for name in _names({b: p["methods"] for b, p in projection.items()}):
        points = [(int(b), p["methods"][name]) for b, p in projection.items() if name in p["methods"]]
        _line(ax, name, [b for b, _ in points], [r["x_plain"] for _, r in points])
        idle = [(b, r["x_plain"]) for b, r in points if r.get("drafts_per_request") == 0.0]
        if idle:
            _mark_idle(ax, name, [b for b, _ in idle], [x for _, x in idle], f"{name}: chooses not to draft")
    for b, p in projection.items():
        if p["acceptance_from_bs"] != int(b):
            ax.annotate(f"acceptance\nfrom bs {p['acceptance_from_bs']}", (int(b), 1.0), textcoords="offset points",
                        xytext=(0, -28), ha="center", fontsize=7, color="0.35")
    _batch_axis(ax, sizes, "batch size (requests per step)")
    ax.set_ylabel("projected speedup (× no speculation)")
    ax.set_ylim(bottom=0)
    _legend(ax)
    return fig


def save_figure(fig, path: Path) -> Path:
    """The figure as a PNG at `path` (120 dpi), then closed: pyplot keeps every open figure."""
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path


def write_plots(results: dict, meta: dict, out_dir: Path) -> list[Path]:
    """throughput.png and utilization.png (with a throughput table), speedup.png (with a latency table)."""
    written = []
    if results["throughput"]:
        written.append(save_figure(throughput_figure(results["throughput"], meta), out_dir / "throughput.png"))
        written.append(save_figure(utilization_figure(results["throughput"], meta), out_dir / "utilization.png"))
    if results["latency"]:
        written.append(save_figure(speedup_figure(results["latency"], meta), out_dir / "speedup.png"))
    return written


def write_projection_plot(projection: dict, profile_name: str, source: str, out_dir: Path) -> Path:
    return save_figure(projection_figure(projection, profile_name, source), out_dir / "projection.png")
