"""Served servers under a load that changes: does a method that adapts to the load (echo) beat
every fixed configuration over the whole sequence, without losing any phase of it?

Phases. `1x8,16x32,64x128,4x16,1x8` is five phases, each CONCURRENCY x REQUESTS: 8 requests
one at a time, then 32 with 16 in flight, 128 with 64, 16 with 4, 8 one at a time again. A
phase's prompts are MT-Bench's first turns, cycled (one JSONL dataset per phase).

Turns. One round runs every phase in order; within a phase each server takes its turn, one
`vllm bench serve` (online.bench_serve_command: greedy, ignore_eos, `max_tokens` output tokens
per request, `--max-concurrency` the phase's), so drift on a shared machine reaches every
server within one phase. Rounds repeat with the server order rotated, so that no server always
goes first. Before round 1 each server runs every phase once with WARM_UP_TOKENS output tokens
(new batch shapes, echo's first measurements at each batch size).

Results (results.json, report.md):
  per phase   each server's median over rounds of tokens/s and of TPOT p50 / p90
  overall     per round, output tokens of all phases / their summed durations; median of rounds
  ratios      every server's over every other's, overall and per phase, from the medians
  echo's goal overall >= OVERALL_GOAL x every other server; no phase below PHASE_FLOOR x that
              phase's best server

Timeline (changing_load.png). While a server runs its turn, a thread reads its /metrics every
SAMPLE_INTERVAL_S: requests running, generation tokens, echo's budget counters. A server's time
axis is its own busy time: each turn from just before its first request ran to just after its
last ended (not vllm bench serve's start-up), the turns back to back, so each server's lines
run through the phases in order. Windows of at least WINDOW_S turn the cumulative counters into tokens/s and
echo's budget per step. Echo's counters advance once per vLLM stats interval
(VLLM_LOG_STATS_INTERVAL, 10 s by default): start the servers with VLLM_LOG_STATS_INTERVAL=1
for a budget in every window (benchmarks/changing_load.py --start does).
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from echo_vllm.assets.prompts import chat_messages, load_prompts
from echo_vllm.bench import online, plots
from echo_vllm.bench.plots import method_style, pyplot, save_figure
from echo_vllm.metrics import COUNTERS

ECHO = "echo"
WARM_UP_TOKENS = 16  # output tokens per request of a warm-up turn
SAMPLE_INTERVAL_S = 0.5
WINDOW_S = 1.5  # readings 0.5 s apart (plus the scrape's own time): windows of 1.5 to 2 s
OVERALL_GOAL = 1.05
PHASE_FLOOR = 0.95
BUDGET_SUM = f"{COUNTERS['budget_sum'][0]}_total"
BUDGETED_STEPS = f"{COUNTERS['num_budgeted_steps'][0]}_total"


@dataclass(frozen=True)
class Phase:
    concurrency: int  # requests in flight (vllm bench serve --max-concurrency)
    num_requests: int

    @property
    def label(self) -> str:
        return f"{self.concurrency}x{self.num_requests}"


@dataclass(frozen=True)
class ChangingLoadPlan:
    servers: dict[str, str]  # name -> URL, in the order of round 1
    phases: tuple[Phase, ...]
    rounds: int
    max_tokens: int
    tokenizer: str  # the served model's directory (vllm bench serve counts tokens with it)
    out: Path


def parse_phases(spec: str) -> tuple[Phase, ...]:
    """`1x8,16x32` -> (Phase(1, 8), Phase(16, 32)): CONCURRENCY x REQUESTS, in order."""
    phases = []
    for value in spec.split(","):
        concurrency, x, requests = value.strip().partition("x")
        if not (x and concurrency.isdigit() and requests.isdigit() and 1 <= int(concurrency) <= int(requests)):
            raise ValueError(f"echo-vllm changing load: phase {value!r} of --phases {spec!r} must be CONCURRENCY"
                             "xREQUESTS, two integers with 1 <= CONCURRENCY <= REQUESTS (e.g. 16x32)")
        phases.append(Phase(int(concurrency), int(requests)))
    return tuple(phases)


def write_phase_datasets(phases: tuple[Phase, ...], directory: Path) -> list[Path]:
    """One `custom` JSONL per phase: MT-Bench's first turns, cycled to the phase's requests."""
    prompts = load_prompts("mt_bench")
    return [online.write_dataset([chat_messages(prompts[i % len(prompts)]) for i in range(phase.num_requests)],
                                 directory / f"phase-{number}-{phase.label}.jsonl")
            for number, phase in enumerate(phases, 1)]


def server_order(names: list[str], round_index: int) -> list[str]:
    """Round i (from 0) starts with server i, modulo their number: [a, b, c] -> [b, c, a] in round 1."""
    shift = round_index % len(names)
    return names[shift:] + names[:shift]


def counter_reading(metrics: dict[str, float], t_s: float) -> dict:
    """One point of a server's timeline from its /metrics: requests running now, cumulative
    generation tokens and echo's budget counters (None on a server without echo)."""
    return {"t_s": t_s, "running": metrics.get("vllm:num_requests_running", 0.0),
            "generation_tokens": metrics.get("vllm:generation_tokens_total", 0.0),
            "budget_sum": metrics.get(BUDGET_SUM), "budgeted_steps": metrics.get(BUDGETED_STEPS)}


def sampled_turn(url: str, run: Callable[[], None]) -> list[dict]:
    """Runs `run()` while a thread reads url's /metrics every SAMPLE_INTERVAL_S (once more after
    it ends); the readings, timed from the turn's start."""
    readings: list[dict] = []
    failures: list[Exception] = []
    done = threading.Event()
    started = time.monotonic()

    def read() -> None:
        readings.append(counter_reading(online.scrape(url), time.monotonic() - started))

    def sample() -> None:
        try:
            read()
            while not done.wait(SAMPLE_INTERVAL_S):
                read()
            read()
        except Exception as error:  # raised below, in the caller's thread
            failures.append(error)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        run()
    finally:
        done.set()
        thread.join()
    if failures:
        raise RuntimeError(f"echo-vllm changing load: {url}/metrics could not be read ({failures[0]}); "
                           "is the server still up?") from failures[0]
    return readings


def busy_readings(readings: list[dict], start_s: float) -> list[dict]:
    """The readings around the server's work, re-timed to begin at `start_s`: from the last one
    before requests ran (or tokens advanced) to the first one after. A turn idles while vllm
    bench serve starts (it imports vLLM: ~10 s), which is no part of the server's busy time.
    Requests running 0, 0, 0, 2, 1, 0, 0 at 0, 0.5, ... 3 s -> the readings at 1 to 2.5 s, at start_s + 0 to 1.5 s."""
    active = [i for i, r in enumerate(readings)
              if r["running"] > 0 or (i > 0 and r["generation_tokens"] > readings[i - 1]["generation_tokens"])]
    if not active:
        return []
    kept = readings[max(active[0] - 1, 0):min(active[-1] + 1, len(readings) - 1) + 1]
    return [{**r, "t_s": start_s + r["t_s"] - kept[0]["t_s"]} for r in kept]


def budget_per_step(first: dict, last: dict) -> float | None:
    """Echo's draft-token budget per budgeted step between two readings (None: no echo, or no
    budgeted step between them)."""
    if first["budgeted_steps"] is None or last["budgeted_steps"] is None:
        return None
    steps = last["budgeted_steps"] - first["budgeted_steps"]
    return (last["budget_sum"] - first["budget_sum"]) / steps if steps else None


def timeline_windows(readings: list[dict], window_s: float = WINDOW_S) -> list[dict]:
    """Rates between successive readings at least `window_s` apart, at the window's middle.
    Readings at 0, 1, 2, 3 s with 0, 10, 40, 40 tokens, window 2 s: one window, t 1 s, 20 tokens/s
    (the reading at 3 s starts a window that never closes)."""
    windows = []
    first = readings[0] if readings else None
    for reading in readings[1:]:
        span = reading["t_s"] - first["t_s"]
        if span < window_s:
            continue
        windows.append({"t_s": first["t_s"] + span / 2,
                        "tokens_per_s": (reading["generation_tokens"] - first["generation_tokens"]) / span,
                        "budget_per_step": budget_per_step(first, reading)})
        first = reading
    return windows


def file_stem(name: str) -> str:
    """A server's name as part of a file name: `eagle3 K=2` -> `eagle3-K=2`."""
    return name.replace(" ", "-")


def warm_up(plan: ChangingLoadPlan, models: dict[str, str], datasets: list[Path], bar) -> None:
    """Each server runs every phase once, WARM_UP_TOKENS output tokens per request; only its
    output is kept (OUT/vllm-bench/warm-up-*.log)."""
    for name, url in plan.servers.items():
        for number, (phase, dataset) in enumerate(zip(plan.phases, datasets), 1):
            command = online.bench_serve_command(url, models[name], plan.tokenizer, dataset, phase.num_requests,
                                                 phase.concurrency, WARM_UP_TOKENS, None)
            online.run_bench_serve(command, plan.out / "vllm-bench" / f"warm-up-{file_stem(name)}-phase-{number}.log")
            bar.update(1)


def measured_turn(plan: ChangingLoadPlan, name: str, model: str, phase_index: int, dataset: Path,
                  round_number: int, start_s: float) -> dict:
    """One server's turn at one phase, its /metrics sampled meanwhile: vllm bench serve's row
    (online.read_bench_serve_result), the readings while it was busy, and their span on its time axis."""
    phase = plan.phases[phase_index]
    url = plan.servers[name]
    result = plan.out / "vllm-bench" / f"round-{round_number}-phase-{phase_index + 1}-{file_stem(name)}.json"
    command = online.bench_serve_command(url, model, plan.tokenizer, dataset, phase.num_requests, phase.concurrency,
                                         plan.max_tokens, result)
    readings = busy_readings(sampled_turn(url, lambda: online.run_bench_serve(command, result.with_suffix(".log"))),
                             start_s)
    return {"server": name, "round": round_number, "phase": phase_index, "label": phase.label,
            "concurrency": phase.concurrency, "start_s": start_s, "end_s": readings[-1]["t_s"] if readings else start_s,
            "result": online.read_bench_serve_result(result), "readings": readings}


def busy_s(turns: list[dict], name: str) -> float:
    """A server's busy time so far: where its last turn ended on its own time axis."""
    return max((turn["end_s"] for turn in turns if turn["server"] == name), default=0.0)


def run_round(plan: ChangingLoadPlan, models: dict[str, str], datasets: list[Path], round_number: int,
              turns: list[dict], bar) -> list[dict]:
    """Every phase in order, within each phase every server's turn in this round's order;
    `turns` (the earlier rounds') place each server's turns on its own time axis."""
    order = server_order(list(plan.servers), round_number - 1)
    for phase_index, dataset in enumerate(datasets):
        for name in order:
            turns = turns + [measured_turn(plan, name, models[name], phase_index, dataset, round_number,
                                           busy_s(turns, name))]
            bar.update(1)
    return turns


def run_changing_load(plan: ChangingLoadPlan, save: Callable[[dict], None]) -> dict:
    """The warm-up, then `plan.rounds` rounds; `save(results)` after each round, so that an
    interrupted run keeps its complete rounds (datasets, logs and saved JSON in OUT/vllm-bench/)."""
    models = {name: online.served_model(url) for name, url in plan.servers.items()}
    (plan.out / "vllm-bench").mkdir(parents=True, exist_ok=True)
    datasets = write_phase_datasets(plan.phases, plan.out / "vllm-bench")
    turns: list[dict] = []
    with tqdm(total=len(plan.servers) * len(plan.phases) * (plan.rounds + 1), desc="changing load",
              unit="turn") as bar:
        warm_up(plan, models, datasets, bar)
        for round_number in range(1, plan.rounds + 1):
            turns = run_round(plan, models, datasets, round_number, turns, bar)
            results = summarize(plan, turns)
            save(results)
    return results


def runs_by_server(turns: list[dict], names: list[str], num_phases: int) -> dict[str, list[list[dict]]]:
    """Each server's vllm bench serve rows as [round][phase], rounds in order."""
    rounds = sorted({turn["round"] for turn in turns})
    rows = {(turn["server"], turn["round"], turn["phase"]): turn["result"] for turn in turns}
    return {name: [[rows[name, r, p] for p in range(num_phases)] for r in rounds] for name in names}


def ratios(rates: dict[str, float]) -> dict[str, dict[str, float]]:
    """Each server's rate over every other's: {"echo": {"plain": 1.25}, "plain": {"echo": 0.8}}."""
    return {name: {other: rate / rates[other] for other in rates if other != name} for name, rate in rates.items()}


def phase_rows(phases: tuple[Phase, ...], runs: dict[str, list[list[dict]]]) -> list[dict]:
    """Per phase: each server's medians over rounds (online.summarize: tokens/s, TPOT p50 / p90,
    ...), the ratios between servers, and the fastest server."""
    rows = []
    for p, phase in enumerate(phases):
        by_server = {name: online.summarize([round_rows[p] for round_rows in server_runs])
                     for name, server_runs in runs.items()}
        rates = {name: summary["tokens_per_s"] for name, summary in by_server.items()}
        rows.append({"phase": p + 1, "label": phase.label, "concurrency": phase.concurrency,
                     "requests": phase.num_requests, "servers": by_server, "x": ratios(rates),
                     "best": max(rates, key=rates.get)})
    return rows


def overall_rows(runs: dict[str, list[list[dict]]]) -> dict[str, dict]:
    """Each server's output tokens / duration over all phases of a round; median over rounds."""
    overall = {}
    for name, server_runs in runs.items():
        per_round = [sum(row["output_tokens"] for row in rows) / sum(row["duration_s"] for row in rows)
                     for rows in server_runs]
        overall[name] = {"tokens_per_s": statistics.median(per_round), "rounds": per_round}
    return overall


def echo_goal(per_phase: list[dict], overall: dict[str, dict]) -> dict | None:
    """Echo against its goal: overall >= OVERALL_GOAL x every other server, and no phase below
    PHASE_FLOOR x that phase's best server (None: no server named echo)."""
    if ECHO not in overall:
        return None
    overall_x = {other: overall[ECHO]["tokens_per_s"] / row["tokens_per_s"]
                 for other, row in overall.items() if other != ECHO}
    below = []
    for row in per_phase:
        x_best = row["servers"][ECHO]["tokens_per_s"] / row["servers"][row["best"]]["tokens_per_s"]
        if x_best < PHASE_FLOOR:
            below.append({"phase": row["phase"], "label": row["label"], "best": row["best"], "x_best": x_best})
    overall_met = all(x >= OVERALL_GOAL for x in overall_x.values())
    return {"overall_x": overall_x, "overall_met": overall_met, "phases_below": below,
            "met": overall_met and not below}


def summarize(plan: ChangingLoadPlan, turns: list[dict]) -> dict:
    """results.json: the plan, per-phase and overall medians with their ratios, echo's goal,
    and every turn (its row and /metrics readings)."""
    runs = runs_by_server(turns, list(plan.servers), len(plan.phases))
    per_phase = phase_rows(plan.phases, runs)
    overall = overall_rows(runs)
    return {"plan": {"servers": plan.servers, "phases": [phase.label for phase in plan.phases],
                     "rounds": plan.rounds, "rounds_done": len(next(iter(runs.values()))),
                     "max_tokens": plan.max_tokens},
            "per_phase": per_phase, "overall": overall,
            "overall_x": ratios({name: row["tokens_per_s"] for name, row in overall.items()}),
            "echo_goal": echo_goal(per_phase, overall), "turns": turns}


def _x_plain(row: dict, name: str) -> str:
    """` (1.25x plain)` after a rate, where there is a plain server and `name` is not it."""
    x = row["x"].get(name, {}).get(online.PLAIN)
    return "" if x is None else f" ({x:.2f}x plain)"


def phase_tables(results: dict) -> list[str]:
    """Markdown: tokens/s per phase and server, then TPOT p50 / p90."""
    names = list(results["plan"]["servers"])
    head = "| phase | " + " | ".join(names) + " |"
    rule = "|---|" + "---|" * len(names)
    rates = ["## Output tokens/s per phase (median of rounds)", "", head[:-1] + "| best |", rule + "---|"]
    tpots = ["## TPOT p50 / p90 per phase (ms, median of rounds)", "", head, rule]
    for row in results["per_phase"]:
        phase = f"{row['phase']}: {row['label']}"
        servers = row["servers"]
        rates.append(f"| {phase} | " + " | ".join(f"{servers[n]['tokens_per_s']:.1f}{_x_plain(row, n)}" for n in names)
                     + f" | {row['best']} |")
        tpot = {n: servers[n]["tpot_ms"] for n in names}
        tpots.append(f"| {phase} | " + " | ".join(f"{tpot[n]['p50']:.1f} / {tpot[n]['p90']:.1f}" for n in names) + " |")
    return [*rates, "", *tpots]


def overall_table(results: dict) -> list[str]:
    """Markdown: each server's overall tokens/s and its ratio to every other server."""
    names = list(results["plan"]["servers"])
    lines = ["## Overall (output tokens of all phases / their summed duration, median of rounds)", "",
             "| server | tokens/s | per round | " + " | ".join(f"x {n}" for n in names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    for name in names:
        row = results["overall"][name]
        x = results["overall_x"][name]
        lines.append(f"| {name} | {row['tokens_per_s']:.1f} | " + ", ".join(f"{r:.1f}" for r in row["rounds"]) + " | "
                     + " | ".join("-" if other == name else f"{x[other]:.2f}" for other in names) + " |")
    return lines


def goal_lines(goal: dict | None) -> list[str]:
    """Markdown: whether echo met its goal, with the numbers that decide it."""
    if goal is None:
        return ["## Echo's goal", "", "No server named echo: nothing to check."]
    # three decimals: 1.048x must not read as the 1.05x it misses
    overall = ", ".join(f"{x:.3f}x {other}" for other, x in goal["overall_x"].items())
    below = "; ".join(f"phase {b['phase']} ({b['label']}): {b['x_best']:.3f}x {b['best']}"
                      for b in goal["phases_below"])
    return ["## Echo's goal: " + ("met" if goal["met"] else "NOT met"), "",
            f"- echo overall >= {OVERALL_GOAL:.2f}x each fixed configuration: "
            f"{'met' if goal['overall_met'] else 'NOT met'} ({overall})",
            f"- no phase below {PHASE_FLOOR:.2f}x that phase's best: "
            + (f"NOT met: {below}" if below else "met")]


def report_markdown(results: dict) -> str:
    plan = results["plan"]
    title = (f"# Changing load: phases {' -> '.join(plan['phases'])} (CONCURRENCYxREQUESTS), "
             f"{plan['rounds_done']} of {plan['rounds']} rounds, {plan['max_tokens']} output tokens per request")
    return "\n".join([title, "", *phase_tables(results), "", *overall_table(results), "",
                      *goal_lines(results["echo_goal"]), ""])


def server_readings(turns: list[dict], name: str) -> list[dict]:
    """A server's timeline: the readings of its turns, in the order of its own time axis."""
    own = sorted((turn for turn in turns if turn["server"] == name), key=lambda turn: turn["start_s"])
    return [reading for turn in own for reading in turn["readings"]]


def _mark_phases(axes, turns: list[dict]) -> None:
    """Faint lines where the reference server's phases begin (dashed: a new round), each phase's
    concurrency written at the top of the first panel."""
    for turn in turns:
        for ax in axes:
            if turn["start_s"] > 0:
                ax.axvline(turn["start_s"], color="0.55" if turn["phase"] == 0 else "0.75", linewidth=0.8,
                           linestyle="--" if turn["phase"] == 0 else "-", zorder=0)
        axes[0].text((turn["start_s"] + turn["end_s"]) / 2, 0.97, f"c={turn['concurrency']}", ha="center",
                     va="top", fontsize=8, color="0.3", transform=axes[0].get_xaxis_transform())
        if turn["phase"] == 0:
            axes[-1].text(turn["start_s"], 0.02, f" round {turn['round']}", fontsize=7, color="0.4",
                          transform=axes[-1].get_xaxis_transform())


def _style(name: str) -> dict:
    """plots.method_style, the plain server drawn as the other figures draw no speculation."""
    return method_style(plots.PLAIN if name == online.PLAIN else name)


def _plot_server(running_ax, rate_ax, name: str, readings: list[dict]) -> None:
    """A server's requests running (as read) and tokens/s (per window)."""
    style = _style(name)
    line = {"color": style["color"], "linestyle": style["linestyle"], "linewidth": style["linewidth"], "label": name}
    running_ax.plot([r["t_s"] for r in readings], [r["running"] for r in readings], drawstyle="steps-post", **line)
    windows = timeline_windows(readings)
    rate_ax.plot([w["t_s"] for w in windows], [w["tokens_per_s"] for w in windows], **line)


def _plot_budget(budget_ax, readings: list[dict] | None) -> None:
    """Echo's draft-token budget per budgeted step, per window; gaps where no step was budgeted."""
    if readings is None:
        budget_ax.text(0.5, 0.5, "no server named echo", ha="center", va="center", color="0.4",
                       transform=budget_ax.transAxes)
        return
    windows = timeline_windows(readings)
    budget_ax.plot([w["t_s"] for w in windows],
                   [float("nan") if w["budget_per_step"] is None else w["budget_per_step"] for w in windows],
                   color=_style(ECHO)["color"], marker=".", markersize=4, linewidth=1.2)
    budget_ax.margins(y=0.15)
    budget_ax.set_ylim(bottom=0)


def timeline_figure(results: dict):
    """Three panels over each server's own busy time: requests running, echo's budget per step,
    output tokens/s; phase boundaries from echo's timeline (else the first server's)."""
    names = list(results["plan"]["servers"])
    turns = results["turns"]
    fig, axes = pyplot().subplots(3, 1, sharex=True, figsize=(11, 8.5), layout="constrained",
                                  height_ratios=(1.0, 0.9, 1.4))
    running_ax, budget_ax, rate_ax = axes
    for name in names:
        _plot_server(running_ax, rate_ax, name, server_readings(turns, name))
    _plot_budget(budget_ax, server_readings(turns, ECHO) if ECHO in names else None)
    reference = ECHO if ECHO in names else names[0]
    _mark_phases(axes, [turn for turn in turns if turn["server"] == reference])
    fig.suptitle("Changing load: requests in flight, echo's budget and throughput over time", fontweight="bold")
    plan = results["plan"]
    running_ax.set_title(f"phases {' -> '.join(plan['phases'])} (concurrency x requests), {plan['rounds_done']} "
                         f"round(s), {plan['max_tokens']} output tokens per request; phase lines at {reference}'s "
                         "boundaries (dashed: a new round)", fontsize=8.5, color="0.3", loc="left")
    running_ax.set_ylim(0, 1.3 * max([1.0] + [r["running"] for turn in turns for r in turn["readings"]]))
    running_ax.set_ylabel("requests running")
    budget_ax.set_ylabel("echo's budget\n(draft tokens / step)")
    rate_ax.set_ylabel(f"output tokens/s\n(per {WINDOW_S:g}-2 s window)")
    rate_ax.set_ylim(bottom=0)
    rate_ax.set_xlabel("seconds of each server's own busy time (the spans its turns kept it busy, back to back)")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.legend(*rate_ax.get_legend_handles_labels(), loc="outside lower center", ncols=len(names), frameon=False,
               fontsize=9)
    return fig


def write_outputs(results: dict, out: Path) -> list[Path]:
    """results.json, report.md and changing_load.png in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "report.md").write_text(report_markdown(results))
    plot = save_figure(timeline_figure(results), out / "changing_load.png")
    return [out / "results.json", out / "report.md", plot]
