"""A CI-sized soak through `vllm serve` with echo, the trained SmolLM2 head and its calibration:
concurrent mixed requests, cancellations, prompts up to the context limit and preemption; no
crash, nothing lost, greedy answers identical to no speculation (`echo-vllm soak` runs the long one)."""

from pathlib import Path

from echo_vllm.soak import soak, summary

HEAD = Path(__file__).resolve().parents[2] / "heads" / "smollm2-135m-eagle3"


def test_a_short_soak_loses_nothing(smollm2, tmp_path):
    config = {"method": "echo", "model": str(HEAD), "calibration_file": str(HEAD / "calibration.json")}
    # a 384-token context and a 32 MiB KV cache (about 700 tokens: 5 blocks of 128) for 12
    # clients busy all run long, many of them with n > 1: their sequences outgrow the cache, so
    # running ones are preempted (4 preemptions on 2026-12-07)
    report = soak(smollm2, config, str(tmp_path), num_requests=40, clients=12, cancel_share=0.2,
                  max_model_len=384, kv_cache_memory_bytes=32 << 20, seed=1)
    print(summary(report))
    assert report["server_alive_at_end"] and not report["crash_log_lines"]
    assert report["incomplete"] == [] and report["errors"] == []
    assert report["greedy_compared"] > 10 and report["greedy_mismatches"] == []
    assert report["cancelled"] > 0 and report["long_prompts"] > 0
    assert report["completed"] + report["cancelled"] == report["requests"]
    assert report["preemptions"] > 0  # memory growth: only the long soak's halves say something
    assert report["spec_decode"]["vllm:spec_decode_num_accepted_tokens_total"] > 0
    assert report["echo_metrics"]["echo_verified_steps_total"] > 0  # echo's metrics under load
    assert 0.0 < report["echo_metrics"]["echo_go_deep_share"] <= 1.0
