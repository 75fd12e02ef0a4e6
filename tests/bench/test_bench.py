"""`echo-vllm bench`: the report's arithmetic on made-up numbers, the plan's refusals before
any model loads, and one small run end to end (tiny chat target, 2 batch sizes, 1 repetition:
structure and arithmetic checked, never timings)."""

import json
import statistics

import pytest

from echo_vllm import cli
from echo_vllm.bench.offline import paired_ratio
from echo_vllm.bench.plan import build_plan
from echo_vllm.bench.report import best_peer, echo_against_peers, gains, latency_averages, markdown, write_outputs
from echo_vllm.bench.simulate import PROFILES, project, target_seconds


def row(rate, plain, mat=None, utilization=None, **extra):
    return {"tokens_per_s": rate, "runs": [rate - 1, rate, rate + 1], "plain_tokens_per_s": plain,
            "plain_runs": [plain - 2, plain, plain + 2], "x_plain": rate / plain, "mat": mat,
            "utilization": utilization, **extra}


ECHO_DECISIONS = {
    "policy": "echo", "gate_statistic": "frontier_sum", "judge_depth": [1], "threshold": [0.9],
    "remaining_num_draft_tokens": 2, "calibrating": False, "budget": "auto", "mean_budget": 3.5,
    "drafted_share": 0.25, "explored_share": 0.02, "gate_pass_rate": 0.4, "cost_model": None,
    "branching_share": 0.3,
    "acceptance_curve": {"drafts_per_request": [0.0, 1.0, 2.0, 3.0], "accepted_per_request": [0.0, 0.7, 1.1, 1.3]},
}
MADE_UP = {
    "latency": {"mt_bench": {"eagle3 K=1": row(12.0, 10.0, 1.5, 0.5), "echo": row(15.0, 10.0, 2.0, 0.25)},
                "gsm8k": {"eagle3 K=1": row(11.0, 10.0, 1.4, 0.4), "echo": row(13.0, 10.0, 1.8, 0.2)}},
    "throughput": {"16": {"eagle3 K=1": row(80.0, 100.0, 1.3, 0.3, verified_drafts_per_step=1.0),
                          "eagle3 K=2": row(70.0, 100.0, 1.4, 0.2, verified_drafts_per_step=2.0),
                          "static": row(20.0, 100.0, 1.8, 0.03, verified_drafts_per_step=31.0),
                          "echo": row(99.0, 100.0, verified_drafts_per_step=None, echo=ECHO_DECISIONS)}},
    "input_tokens": {"latency mt_bench": 60.0, "throughput 16": 101.5},
}
META = {"date": "2026-12-01 00:00", "machine": "test", "vllm": "0.32.0", "command": "echo-vllm bench ...",
        "plan": {"target": "t", "head": "h", "max_tokens": 16, "repetitions": 3, "latency_prompts": 2,
                 "input_tokens": 100}}


def test_gains_are_ratios_over_the_best_eagle3_and_static():
    over_eagle3, over_static = gains(MADE_UP["throughput"]["16"], "echo")
    assert over_eagle3 == pytest.approx(0.99 / 0.80)  # K=1 is the better chain
    assert over_static == pytest.approx(0.99 / 0.20)


def test_the_best_peer_is_the_fastest_of_vllms_configurations():
    by_method = {**MADE_UP["throughput"]["16"], "dynamic_sd": row(95.0, 100.0)}
    assert best_peer(by_method) == ("no speculation", 1.0)  # every chain is slower than plain at bs 16
    assert best_peer({**by_method, "dynamic_sd": row(104.0, 100.0)}) == ("dynamic_sd", pytest.approx(1.04))
    assert best_peer(MADE_UP["latency"]["mt_bench"]) == ("eagle3 K=1", pytest.approx(1.2))  # echo is no peer


def test_echo_against_peers_table():
    lines = echo_against_peers(MADE_UP)
    assert lines[2] == "| latency | mt_bench | 1.50 | eagle3 K=1 (1.20) | 1.25 | eagle3 K=1 (1.20) | 1.25 |"
    assert lines[4] == "| throughput | 16 | 0.99 | eagle3 K=1 (0.80) | 1.24 | no speculation (1.00) | 0.99 |"
    assert "## Echo against vLLM's best" in markdown(MADE_UP, META)


def test_latency_average_column():
    average = latency_averages(MADE_UP["latency"], "echo")
    assert average == pytest.approx({"mat": 1.9, "utilization": 0.225, "x_plain": 1.4})


def test_no_speculation_pools_the_plain_runs_of_every_method():
    """A resumed report holds methods measured on other days: the plain row pools all their plain
    runs, and each method's row shows the plain median its own ratio is taken against."""
    throughput = {"1": {"static": row(7.0, 11.0), "echo": row(17.0, 16.0)}}
    text = markdown({"latency": {}, "throughput": throughput, "input_tokens": {"throughput 1": 100.0}}, META)
    assert "| 1 | no speculation | 13.5 (9.0-18.0) | | 1.00 |" in text  # median of 9, 11, 13, 14, 16, 18
    assert "| 1 | echo | 17.0 (16.0-18.0) | 16.0 | 1.06 |" in text


def test_report_tables_and_plots(tmp_path):
    text = markdown(MADE_UP, META)
    assert "| echo | 2.00 | 0.25 | 15.0 (14.0-16.0) | 1.50 | 1.80 | 0.20 | 13.0 (12.0-14.0) | 1.30 | 1.90 | 1.40 |" in text
    assert ("| 16 | echo | 99.0 (98.0-100.0) | 100.0 | 0.99 | - | - | 1.24 | 4.95 | budget auto (mean 3.5); echo depth 1 "
            "threshold 0.9; gate pass 40%; drafted 25% of steps (2% exploring); 30% of trees branched |") in text
    assert "| 16 | no speculation | 100.0 (98.0-102.0) | | 1.00 |" in text
    written = write_outputs(MADE_UP, META, str(tmp_path))
    assert sorted(p.name for p in written) == ["report.md", "results.json", "speedup.png", "throughput.png",
                                               "utilization.png"]
    assert all(p.stat().st_size > 1000 for p in written if p.suffix == ".png")
    assert json.loads((tmp_path / "results.json").read_text())["results"] == MADE_UP


def test_roofline_of_a_memory_bound_pass():
    profile = PROFILES["llama-70b-4xh100"]
    bandwidth = 4 * 3.35e12 * 0.75
    expected = 70e9 * 2 / bandwidth + 400 * profile.kv_bytes_per_token / bandwidth
    assert target_seconds(profile, 1, 1) == pytest.approx(expected)
    assert target_seconds(profile, 1, 8) == pytest.approx(expected)  # 8 tokens cost what 1 does


def test_projection_echo_drafts_where_it_pays_and_never_loses():
    projection = project(MADE_UP, PROFILES["llama-70b-4xh100"], [1, 16, 4096])
    small, large = projection["1"]["methods"], projection["4096"]["methods"]
    assert projection["1"]["acceptance_from_bs"] == 16
    assert small["echo"]["drafts_per_request"] >= 1 and small["echo"]["x_plain"] > small["eagle3 K=1"]["x_plain"] > 1
    assert large["echo"] == {"tokens_per_s": projection["4096"]["plain_tokens_per_s"], "drafts_per_request": 0.0,
                             "x_plain": 1.0}  # compute-bound: drafting would cost more than it buys
    assert large["static"]["x_plain"] < 0.2
    assert all(p["methods"]["echo"]["x_plain"] >= 1.0 for p in projection.values())


def test_simulate_from_a_results_file(tmp_path):
    write_outputs(MADE_UP, META, str(tmp_path / "run"), with_plots=False)
    argv = ["bench", "--simulate", str(tmp_path / "run" / "results.json"), "--profile", "llama-8b-1xh100",
            "--batch-sizes", "1,64", "--out", str(tmp_path / "projection")]
    assert cli.main(argv) == 0
    text = (tmp_path / "projection" / "projection.md").read_text()
    assert text.startswith("# PROJECTION (not a measurement): profile llama-8b-1xh100")
    assert "| 64 | 16 | echo |" in text
    assert cli.main([*argv[:3], "--profile", "gpt-5-on-a-toaster", *argv[5:]]) == 1


def plan_args(model_dir, changes):
    args = dict(target=model_dir, head=model_dir, calibration=None, methods="eagle3,echo", eagle3_k="1", tables="latency,throughput",
                datasets="mt_bench", latency_prompts=2, batch_sizes="1,4", input_tokens=100, max_tokens=16,
                repetitions=1, ddd_threshold=0.5, opt_tree_gain=0.1, out="bench-out/x")
    return {**args, **changes}


@pytest.mark.parametrize("changes, culprit", [
    ({"methods": "echo,medusa"}, "--methods"),
    ({"batch_sizes": "4,0"}, "--batch-sizes"),
    ({"batch_sizes": "4,4"}, "--batch-sizes"),
    ({"eagle3_k": "two"}, "--eagle3-k"),
    ({"tables": "latency,speed"}, "--tables"),
    ({"datasets": "mmlu"}, "--datasets"),
    ({"repetitions": 0}, "--repetitions"),
    ({"head": "/nonexistent/head"}, "--head"),
    ({"calibration": "/nonexistent/calibration.json"}, "calibration_file"),
    ({"dynamic_sd": "[[2, 8, 1]]"}, "--dynamic-sd-table"),  # must start at bs 1
    ({"dynamic_sd": "[[1, 4, 1], [3, 8, 0]]"}, "--dynamic-sd-table"),  # overlap
    ({"dynamic_sd": "[[1, 4]]"}, "--dynamic-sd-table"),
    ({"dynamic_sd": "[[1, 64, 0]]"}, "drafts at no batch size"),
])
def test_plan_refuses_what_it_cannot_run(tmp_path, changes, culprit):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=culprit):
        build_plan(**plan_args(str(tmp_path), changes))


def test_dynamic_sd_is_eagle3_with_a_chain_length_per_batch_size(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    plan = build_plan(**plan_args(str(tmp_path), {"methods": "dynamic_sd", "dynamic_sd": "[[1, 2, 2], [3, 64, 0]]"}))
    assert plan.method_configs() == {"dynamic_sd": {
        "method": "eagle3", "model": str(tmp_path), "num_speculative_tokens": 2,
        "num_speculative_tokens_per_batch_size": [[1, 2, 2], [3, 64, 0]]}}


def test_x_plain_pairs_each_run_with_the_plain_run_before_it():
    # the worked example: Table 1's GSM8K-style echo runs of 2026-12-07, whose plain runs
    # beside them spread 14.2-17.4 tokens/s
    runs, plain = [16.8, 16.5, 16.1, 19.9, 19.9], [14.2, 14.9, 17.2, 17.3, 17.4]
    assert paired_ratio(runs, plain) == pytest.approx(19.9 / 17.4)  # the median of 1.18, 1.11, 0.94, 1.15, 1.14
    assert statistics.median(runs) / statistics.median(plain) == pytest.approx(16.8 / 17.2)  # what it replaces
    with pytest.raises(ValueError):
        paired_ratio([1.0, 2.0], [1.0])


def test_a_small_run_end_to_end(tiny_chat_pair, tmp_path):
    target, head = tiny_chat_pair
    argv = ["bench", "--target", target, "--head", head, "--methods", "eagle3,dynamic_sd,echo", "--eagle3-k", "1",
            "--dynamic-sd-table", "[[1, 1, 1], [2, 64, 0]]", "--datasets", "mt_bench", "--latency-prompts", "2",
            "--batch-sizes", "1,4", "--max-tokens", "16", "--repetitions", "1", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    saved = json.loads((tmp_path / "results.json").read_text())
    results = saved["results"]
    assert list(results["latency"]) == ["mt_bench"] and list(results["throughput"]) == ["1", "4"]
    for by_method in [*results["latency"].values(), *results["throughput"].values()]:
        assert list(by_method) == ["eagle3 K=1", "dynamic_sd", "echo"]
        for r in by_method.values():
            assert len(r["runs"]) == len(r["plain_runs"]) == 1
            assert r["x_plain"] == pytest.approx(r["runs"][0] / r["plain_runs"][0])
            assert r["mat"] is None or 1.0 <= r["mat"] <= 2.0  # eagle3 K=1: at most one draft accepted per step
    assert results["throughput"]["4"]["eagle3 K=1"]["verified_drafts_per_step"] == pytest.approx(1.0)
    # Dynamic SD drafts like eagle3 K=1 at bs 1, and once 4 requests run it does not draft (its
    # table): only the steps while the batch fills or drains do
    by_bs = results["throughput"]
    assert by_bs["1"]["dynamic_sd"]["drafted_request_steps"] == by_bs["1"]["eagle3 K=1"]["drafted_request_steps"]
    assert by_bs["4"]["dynamic_sd"]["drafted_request_steps"] < by_bs["4"]["eagle3 K=1"]["drafted_request_steps"] / 4
    echo = results["throughput"]["4"]["echo"]["echo"]
    assert echo["policy"] == "echo" and echo["calibrating"]  # 256 online calibration steps not reached
    assert saved["meta"]["plan"]["batch_sizes"] == "1,4" and saved["meta"]["command"].startswith("echo-vllm bench --target")
    assert 40 < results["input_tokens"]["throughput 4"] < 200  # MT-Bench prompts near 100 tokens, chat template included
    report = (tmp_path / "report.md").read_text()
    assert "## Table 1" in report and "## Table 2" in report and "| 4 | echo |" in report
    assert "| throughput | 4 | " in report  # echo against the best peer
    assert all((tmp_path / name).stat().st_size > 1000 for name in ("throughput.png", "utilization.png", "speedup.png"))


def test_results_are_never_overwritten_and_resume_only_the_same_plan(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    write_outputs(MADE_UP, META, str(tmp_path / "run"), with_plots=False)
    argv = ["bench", "--target", str(tmp_path), "--head", str(tmp_path), "--out", str(tmp_path / "run")]
    assert cli.main(argv) == 1
    assert "already holds results.json; pass --resume" in capsys.readouterr().err
    assert cli.main([*argv, "--resume"]) == 1
    assert "was measured with other ['target', 'head', 'max_tokens', 'latency_prompts'" in capsys.readouterr().err


def test_a_resumed_run_lists_every_invocation():
    first = {**META, "date": "d1", "command": "echo-vllm bench --methods echo"}
    resumed = {**META, "invocations": [{"date": "d1", "command": "echo-vllm bench --methods echo"},
                                       {"date": "d2", "command": "echo-vllm bench --methods static --resume"}]}
    assert "Command: `echo-vllm bench --methods echo`" in markdown(MADE_UP, first)
    assert ("- d1: `echo-vllm bench --methods echo`\n- d2: `echo-vllm bench --methods static --resume`"
            in markdown(MADE_UP, resumed))
