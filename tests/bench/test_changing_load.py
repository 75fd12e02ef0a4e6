"""The changing-load bench without engines: phases parsed, medians / overall rates / ratios /
echo's goal from made-up `vllm bench serve` rows, the /metrics timeline's windows, the rounds'
server order and time axes (vllm bench serve and /metrics faked), the report and the plot."""

import json
import math

import pytest

from echo_vllm.bench import changing_load, online
from echo_vllm.bench.changing_load import ChangingLoadPlan, Phase


def test_phases_are_concurrency_x_requests():
    assert changing_load.parse_phases("1x8,16x32, 64x128") == (Phase(1, 8), Phase(16, 32), Phase(64, 128))
    assert Phase(16, 32).label == "16x32"


@pytest.mark.parametrize("spec, bad", [("1x8,16y32", "'16y32'"), ("0x4", "'0x4'"), ("8x4", "'8x4'"),
                                       ("1x8,", "''"), ("x8", "'x8'"), ("1.5x8", "'1.5x8'"), ("2x-1", "'2x-1'")])
def test_a_bad_phase_is_named(spec, bad):
    with pytest.raises(ValueError, match=f"phase {bad} of --phases"):
        changing_load.parse_phases(spec)


def test_each_round_starts_with_the_next_server():
    names = ["plain", "echo", "eagle3 K=2"]
    assert [changing_load.server_order(names, r) for r in range(4)] == [
        ["plain", "echo", "eagle3 K=2"], ["echo", "eagle3 K=2", "plain"], ["eagle3 K=2", "plain", "echo"],
        ["plain", "echo", "eagle3 K=2"]]


def row(output_tokens: int, duration_s: float) -> dict:
    """A run's row as online.read_bench_serve_result gives it; TPOT p50 / p90 10 / 12 ms per second of run."""
    return {"tokens_per_s": output_tokens / duration_s, "requests_per_s": 1.0, "output_tokens": output_tokens,
            "duration_s": duration_s, "ttft_ms": {"p50": 1.0, "p90": 1.0, "p99": 1.0},
            "tpot_ms": {"p50": 10 * duration_s, "p90": 12 * duration_s, "p99": 13 * duration_s},
            "itl_ms": {"p50": 1.0, "p90": 1.0, "p99": 1.0}}


PHASES = (Phase(1, 2), Phase(4, 8))  # 32 and 128 output tokens per run (16 per request)
DURATIONS = {  # server: [round][phase] seconds
    "plain": [[4.0, 4.0], [2.0, 8.0], [3.2, 3.2]],  # tokens/s 8 32 | 16 16 | 10 40; overall 20, 16, 25
    "echo": [[2.0, 4.0], [1.6, 3.2], [4.0, 5.0]],  # 16 32 | 20 40 | 8 25.6; overall 26.67, 33.33, 17.78
    "eagle3 K=2": [[4.0, 3.2], [4.0, 3.2], [3.2, 2.56]],  # 8 40 | 8 40 | 10 50; overall 22.22, 22.22, 27.78
}
READINGS = [  # t_s, running, generation tokens, echo's budget sum, echo's budgeted steps
    (0.0, 1, 0, 0, 0), (0.5, 1, 0, 0, 0), (1.0, 1, 10, 0, 0), (1.5, 4, 30, 12, 3), (2.0, 4, 40, 12, 3),
    (2.6, 4, 60, 24, 6), (3.0, 4, 90, 30, 6), (4.0, 1, 100, 30, 6), (4.5, 1, 105, 30, 6)]


def readings(echo: bool) -> list[dict]:
    return [{"t_s": t, "running": float(running), "generation_tokens": float(tokens),
             "budget_sum": float(budget) if echo else None, "budgeted_steps": float(steps) if echo else None}
            for t, running, tokens, budget, steps in READINGS]


def made_up_turns() -> list[dict]:
    """Three rounds of both phases on each server, each turn 4.5 s of its server's time with
    READINGS' counts added to the counters' totals so far."""
    turns = []
    for name, by_round in DURATIONS.items():
        for r, durations in enumerate(by_round, 1):
            for p, (phase, duration) in enumerate(zip(PHASES, durations)):
                k = 2 * (r - 1) + p  # the server's turns before this one
                turns.append({"server": name, "round": r, "phase": p, "label": phase.label,
                              "concurrency": phase.concurrency, "start_s": 4.5 * k, "end_s": 4.5 * (k + 1),
                              "result": row(16 * phase.num_requests, duration),
                              "readings": [shifted(reading, 4.5 * k, k) for reading in readings(name == "echo")]})
    return turns


def shifted(reading: dict, start_s: float, earlier_turns: int) -> dict:
    """A reading of READINGS in a later turn: its time and counters after the earlier turns'."""
    counts = {"t_s": start_s, "generation_tokens": 105.0 * earlier_turns, "budget_sum": 30.0 * earlier_turns,
              "budgeted_steps": 6.0 * earlier_turns}
    return {**reading, **{key: None if reading[key] is None else reading[key] + add for key, add in counts.items()}}


def made_up_plan(tmp_path) -> ChangingLoadPlan:
    servers = {name: f"http://127.0.0.1:{8000 + i}" for i, name in enumerate(DURATIONS)}
    return ChangingLoadPlan(servers, PHASES, rounds=3, max_tokens=16, tokenizer="/t", out=tmp_path)


def test_medians_overall_rates_and_ratios(tmp_path):
    results = changing_load.summarize(made_up_plan(tmp_path), made_up_turns())
    first, second = results["per_phase"]
    assert [first["servers"][n]["tokens_per_s"] for n in DURATIONS] == [10.0, 16.0, 8.0]
    assert [second["servers"][n]["tokens_per_s"] for n in DURATIONS] == pytest.approx([32.0, 32.0, 40.0])
    assert first["servers"]["plain"]["tpot_ms"]["p50"] == pytest.approx(32.0)  # median of 40, 20, 32
    assert first["servers"]["plain"]["tpot_ms"]["p90"] == pytest.approx(38.4)  # median of 48, 24, 38.4
    assert (first["best"], second["best"]) == ("echo", "eagle3 K=2")
    assert first["x"]["echo"] == pytest.approx({"plain": 1.6, "eagle3 K=2": 2.0})
    assert results["overall"]["plain"] == {"tokens_per_s": 20.0, "rounds": [20.0, 16.0, 25.0]}
    assert results["overall"]["echo"]["tokens_per_s"] == pytest.approx(26.6667, abs=1e-4)  # 160 / 6 s
    assert results["overall_x"]["echo"] == pytest.approx({"plain": 1.3333, "eagle3 K=2": 1.2}, abs=1e-4)
    assert results["overall_x"]["plain"]["echo"] == pytest.approx(0.75)
    assert (results["plan"]["rounds_done"], results["plan"]["phases"]) == (3, ["1x2", "4x8"])


def test_echo_is_flagged_where_it_falls_below_the_phase_floor(tmp_path):
    goal = changing_load.summarize(made_up_plan(tmp_path), made_up_turns())["echo_goal"]
    assert goal["overall_met"] and not goal["met"]
    assert goal["phases_below"] == [{"phase": 2, "label": "4x8", "best": "eagle3 K=2", "x_best": pytest.approx(0.8)}]
    without_echo = [turn for turn in made_up_turns() if turn["server"] != "echo"]
    plan = made_up_plan(tmp_path)
    plan = ChangingLoadPlan({n: u for n, u in plan.servers.items() if n != "echo"}, PHASES, 3, 16, "/t", tmp_path)
    assert changing_load.summarize(plan, without_echo)["echo_goal"] is None


def test_the_report_tables(tmp_path):
    report = changing_load.report_markdown(changing_load.summarize(made_up_plan(tmp_path), made_up_turns()))
    assert "| phase | plain | echo | eagle3 K=2 | best |" in report
    assert "| 1: 1x2 | 10.0 | 16.0 (1.60x plain) | 8.0 (0.80x plain) | echo |" in report
    assert "| 1: 1x2 | 32.0 / 38.4 | 20.0 / 24.0 | 40.0 / 48.0 |" in report  # TPOT p50 / p90
    assert "| plain | 20.0 | 20.0, 16.0, 25.0 | - | 0.75 | 0.90 |" in report
    assert "## Echo's goal: NOT met" in report
    assert "- echo overall >= 1.05x each fixed configuration: met (1.333x plain, 1.200x eagle3 K=2)" in report
    assert "- no phase below 0.95x that phase's best: NOT met: phase 2 (4x8): 0.800x eagle3 K=2" in report


def test_windows_turn_cumulative_counters_into_rates():
    assert changing_load.timeline_windows(readings(echo=True)) == [
        {"t_s": 0.75, "tokens_per_s": 20.0, "budget_per_step": 4.0},  # 0 -> 1.5 s: 30 tokens, 12 / 3
        {"t_s": 2.25, "tokens_per_s": 40.0, "budget_per_step": 6.0},  # 1.5 -> 3.0 s: 60 tokens, 18 / 3
        {"t_s": 3.75, "tokens_per_s": 10.0, "budget_per_step": None},  # 3.0 -> 4.5 s: no budgeted step
    ]
    assert [w["budget_per_step"] for w in changing_load.timeline_windows(readings(echo=False))] == [None] * 3
    assert changing_load.timeline_windows([]) == []


def test_a_reading_from_metrics():
    metrics = online.parse_metrics(
        'vllm:num_requests_running{engine="0",model_name="m"} 4.0\n'
        'vllm:generation_tokens_total{engine="0",model_name="m"} 120.0\n'
        'echo_budget_draft_tokens_total{model_name="m"} 48.0\n'
        'echo_budgeted_steps_total{model_name="m"} 6.0\n')
    assert changing_load.counter_reading(metrics, 2.5) == {
        "t_s": 2.5, "running": 4.0, "generation_tokens": 120.0, "budget_sum": 48.0, "budgeted_steps": 6.0}
    assert changing_load.counter_reading({}, 0.0)["budget_sum"] is None  # no echo there


def test_a_turn_is_sampled_from_start_to_end(monkeypatch):
    import time

    calls = []
    monkeypatch.setattr(changing_load, "SAMPLE_INTERVAL_S", 0.05)
    monkeypatch.setattr(online, "scrape", lambda url: calls.append(url) or {
        "vllm:generation_tokens_total": float(len(calls))})
    readings = changing_load.sampled_turn("http://h:1", lambda: time.sleep(0.3))
    assert [r["generation_tokens"] for r in readings] == [float(n) for n in range(1, len(calls) + 1)]
    assert len(readings) >= 5 and set(calls) == {"http://h:1"}
    times = [r["t_s"] for r in readings]
    assert times == sorted(times) and times[0] < 0.05 and times[-1] >= 0.3

    def down(url):
        raise OSError("connection refused")
    monkeypatch.setattr(online, "scrape", down)
    with pytest.raises(RuntimeError, match=r"http://h:1/metrics could not be read \(connection refused\)"):
        changing_load.sampled_turn("http://h:1", lambda: None)


def test_a_turn_keeps_the_readings_around_the_servers_work():
    """vllm bench serve's start-up (the server idle) is cut: from the reading before the first
    request ran to the one after the last ended, moved to the server's busy time so far."""
    running = [0, 0, 0, 2, 1, 0, 0]
    tokens = [5, 5, 5, 9, 14, 16, 16]  # the last tokens land after the last reading with a request running
    turn = [{"t_s": 0.5 * i, "running": float(r), "generation_tokens": float(n), "budget_sum": None,
             "budgeted_steps": None} for i, (r, n) in enumerate(zip(running, tokens))]
    kept = changing_load.busy_readings(turn, 10.0)
    assert [(r["t_s"], r["running"], r["generation_tokens"]) for r in kept] == [
        (10.0, 0.0, 5.0), (10.5, 2.0, 9.0), (11.0, 1.0, 14.0), (11.5, 0.0, 16.0), (12.0, 0.0, 16.0)]
    assert changing_load.busy_readings(turn[:3], 10.0) == []  # nothing ran


def test_rounds_rotate_and_each_server_keeps_its_own_time(tmp_path, monkeypatch):
    """vllm bench serve and /metrics faked: which server ran which phase when, and where each
    turn sits on its server's own time axis."""
    ran = []

    def fake_bench_serve(command, log):
        url, concurrency = command[command.index("--base-url") + 1], command[command.index("--max-concurrency") + 1]
        tokens = command[command.index("--custom-output-len") + 1]
        ran.append((url[-4:], concurrency, tokens))
        if "--save-result" in command:
            saved = {"completed": 1, "failed": 0, "output_throughput": 1.0, "request_throughput": 1.0,
                     "total_output_tokens": 16, "duration": 16.0,
                     **{f"p{p}_{m}_ms": 1.0 for p in online.PERCENTILES for m in ("ttft", "tpot", "itl")}}
            result = tmp_path / "vllm-bench" / command[command.index("--result-filename") + 1]
            result.write_text(json.dumps(saved))
    monkeypatch.setattr(online, "run_bench_serve", fake_bench_serve)
    monkeypatch.setattr(online, "served_model", lambda url: "m")
    monkeypatch.setattr(online, "scrape", lambda url: {"vllm:num_requests_running": 1.0})  # always busy
    monkeypatch.setattr(changing_load, "SAMPLE_INTERVAL_S", 0.01)
    plan = ChangingLoadPlan({"plain": "http://h:8000", "echo": "http://h:8001"}, PHASES, 2, 16, "/t", tmp_path)
    saved = []
    results = changing_load.run_changing_load(plan, saved.append)
    assert ran == [("8000", "1", "16"), ("8000", "4", "16"), ("8001", "1", "16"), ("8001", "4", "16"),  # warm-up
                   ("8000", "1", "16"), ("8001", "1", "16"), ("8000", "4", "16"), ("8001", "4", "16"),  # round 1
                   ("8001", "1", "16"), ("8000", "1", "16"), ("8001", "4", "16"), ("8000", "4", "16")]  # round 2
    assert [s["plan"]["rounds_done"] for s in saved] == [1, 2] and results is saved[-1]
    assert (tmp_path / "vllm-bench" / "phase-2-4x8.jsonl").read_text().count("\n") == 8
    for name in plan.servers:
        own = [turn for turn in results["turns"] if turn["server"] == name]
        assert own[0]["start_s"] == 0.0 and all(turn["end_s"] > turn["start_s"] for turn in own)
        assert all(after["start_s"] == before["end_s"] for before, after in zip(own, own[1:]))


def test_the_plot_draws_each_servers_timeline(tmp_path):
    results = changing_load.summarize(made_up_plan(tmp_path), made_up_turns())
    fig = changing_load.timeline_figure(results)
    running_ax, budget_ax, rate_ax = fig.axes
    assert rate_ax.get_legend_handles_labels()[1] == list(DURATIONS)
    budget = list(budget_ax.lines[0].get_ydata())  # echo's windows, 6 turns of READINGS back to back
    assert budget[0::3] == [4.0] * 6 and budget[1::3] == [6.0] * 6 and all(math.isnan(b) for b in budget[2::3])
    assert [t.get_text() for t in running_ax.texts] == ["c=1", "c=4"] * 3
    written = changing_load.write_outputs(results, tmp_path / "out")
    assert [p.name for p in written] == ["results.json", "report.md", "changing_load.png"]
    assert written[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and written[2].stat().st_size > 10_000
