"""Echo's counters become echo_ Prometheus metrics and a stats log line (no engine needed)."""

from prometheus_client import REGISTRY

from echo_vllm.config import parse_echo_config
from echo_vllm.metrics import COUNTERS, EchoMetrics

ZERO = {key: 0 for key in COUNTERS}


def snapshot(**values):
    return {**ZERO, "policy": "echo", "calibrating": False, "judge_depth": [1], "threshold": [0.25],
            "gate_by_depth": {}, **values}


def sample(name, **labels):
    return REGISTRY.get_sample_value(name, {"model_name": "m", **labels})


def test_counters_advance_by_differences_and_gauges_describe_the_interval():
    metrics = EchoMetrics("m")
    before_total = sample("echo_accepted_draft_tokens_total") or 0.0
    metrics.observe(snapshot(num_verified_steps=10, num_verified_trees=40, num_verified_drafts=200,
                             num_accepted_drafts=60, num_drafted_steps=10, budget_sum=200, num_budgeted_steps=10,
                             nodes_bought=200, nodes_bought_deep=150, gate_by_depth={1: [40, 10]}))
    interval = metrics.observe(snapshot(
        num_verified_steps=20, num_verified_trees=80, num_verified_drafts=300, num_accepted_drafts=100,
        num_drafted_steps=20, num_undrafted_steps=5, budget_sum=300, num_budgeted_steps=20, nodes_bought=300,
        nodes_bought_deep=200, gate_by_depth={1: [80, 30]}, calibrating=True))
    assert sample("echo_accepted_draft_tokens_total") - before_total == 100
    assert interval["mat"] == 1 + 40 / 40 and sample("echo_mean_acceptance_length") == 2.0
    assert interval["utilization"] == 0.4 and interval["verified_per_step"] == 10.0
    assert interval["budget_per_step"] == 10.0 and sample("echo_budget_per_step") == 10.0
    assert interval["go_deep_share"] == 0.5 and sample("echo_go_deep_share") == 0.5
    assert interval["gate_pass_rate"] == {1: 0.5} and sample("echo_gate_pass_rate", depth="1") == 0.5
    assert sample("echo_gate_threshold", depth="1") == 0.25 and sample("echo_calibrating") == 1.0
    assert interval["drafted_share"] == 10 / 15
    line = EchoMetrics.log_line(snapshot(calibrating=True), interval)
    assert line == ("echo: policy echo, calibrating its gate online, drafted 67% of steps, budget 10.0/step "
                    "(50% go deep), gate pass 50% at depth 1, MAT 2.00, utilization 0.40")


def test_an_idle_interval_sets_no_gauge_and_logs_only_the_policy():
    metrics = EchoMetrics("idle")
    interval = metrics.observe(snapshot(policy="static", judge_depth=[], threshold=[]))
    assert interval["mat"] is None and interval["budget_per_step"] is None
    assert EchoMetrics.log_line(snapshot(policy="static"), interval) == "echo: policy static"


def test_every_series_is_on_metrics_at_zero_from_the_start():
    from types import SimpleNamespace

    from echo_vllm.scheduler_patches.patch_async_llm import start_echo_metrics

    def engine_with(name, **options):
        echo = parse_echo_config({"method": "echo", "model": "/heads/x", **options}).to_dict()
        config = SimpleNamespace(additional_config={"echo": echo}, model_config=SimpleNamespace(served_model_name=name))
        engine = SimpleNamespace(vllm_config=config)
        start_echo_metrics(engine)
        return engine

    # a static tree has no judge depth: no gate series (not one labelled "()")
    engine_with("static", policy="static")
    assert not [s for m in REGISTRY.collect() for s in m.samples
                if s.labels.get("model_name") == "static" and "depth" in s.labels]
    engine = engine_with("fresh", steps=3, judge_depth=[1, 2], threshold=[0.5, 0.25])
    assert engine.echo_metrics.model_name == "fresh"
    labels = {"model_name": "fresh"}
    for name in ("echo_verified_steps_total", "echo_accepted_draft_tokens_total", "echo_mean_acceptance_length",
                 "echo_draft_utilization", "echo_budget_per_step", "echo_calibrating"):
        assert REGISTRY.get_sample_value(name, labels) == 0.0, name
    for depth in ("1", "2"):
        assert REGISTRY.get_sample_value("echo_gate_threshold", {**labels, "depth": depth}) == 0.0
        assert REGISTRY.get_sample_value("echo_gate_pass_rate", {**labels, "depth": depth}) == 0.0
