"""Echo's state as Prometheus metrics (names prefixed `echo_`) and a line in vLLM's stats log.

Echo counts its decisions in the worker (`EchoRunnerMixin.echo_stats`, cumulative since
start-up). The API server's engine client fetches them from tensor-parallel rank 0 at each of
vLLM's stats log intervals (scheduler_patches/patch_async_llm.py) and hands them to
`EchoMetrics.observe`: counters advance by the difference, gauges describe the last interval.
Metrics are created once per process in prometheus_client's default registry, which vLLM's
/metrics endpoint serves.
"""

from __future__ import annotations

from echo_vllm.log import logger

# counters: stats key -> (metric name, help)
COUNTERS = {
    "num_drafted_steps": ("echo_drafted_steps", "Steps echo drafted (auto budget)"),
    "num_undrafted_steps": ("echo_undrafted_steps", "Steps echo did not draft: speculation would not pay"),
    "num_exploration_steps": ("echo_exploration_steps", "Steps that took the choice (draft or not) echo did not expect to be better, to keep its measurements current"),
    "num_verified_steps": ("echo_verified_steps", "Steps that verified draft trees"),
    "num_verified_trees": ("echo_verified_trees", "Request trees with drafts verified"),
    "num_verified_drafts": ("echo_verified_draft_tokens", "Draft tokens verified by the target"),
    "num_accepted_drafts": ("echo_accepted_draft_tokens", "Draft tokens the target accepted"),
    "num_branching_trees": ("echo_branching_trees", "Verified draft trees that branched (not chains)"),
    "budget_sum": ("echo_budget_draft_tokens", "Draft tokens the global budget allowed, summed over budgeted steps"),
    "num_budgeted_steps": ("echo_budgeted_steps", "Steps a global budget limited"),
    "nodes_bought": ("echo_budget_nodes_bought", "Tree nodes the global budget bought"),
    "nodes_bought_deep": ("echo_budget_nodes_bought_deep",
                          "Tree nodes the budget bought on the requests' most confident paths (go deep)"),
    "num_broken_drafts": ("echo_broken_drafts", "Request-steps whose draft scores were NaN or infinite"),
}

_metrics: dict | None = None  # created once per process: prometheus_client refuses duplicates


def _create() -> dict:
    from prometheus_client import Counter, Gauge

    labels = ["model_name"]
    metrics = {key: Counter(name, help, labels) for key, (name, help) in COUNTERS.items()}
    metrics.update(
        mat=Gauge("echo_mean_acceptance_length", "Tokens committed per verified tree, last interval "
                  "(1 + accepted drafts / trees)", labels, multiprocess_mode="mostrecent"),
        utilization=Gauge("echo_draft_utilization", "Accepted / verified draft tokens, last interval",
                          labels, multiprocess_mode="mostrecent"),
        verified_per_step=Gauge("echo_verified_tokens_per_step", "Draft tokens verified per verification "
                                "step (whole batch), last interval", labels, multiprocess_mode="mostrecent"),
        budget_per_step=Gauge("echo_budget_per_step", "Global verification budget (draft tokens) per "
                              "budgeted step, last interval", labels, multiprocess_mode="mostrecent"),
        go_deep_share=Gauge("echo_go_deep_share", "Share of bought nodes on the requests' most confident "
                            "paths, last interval (the rest went wide)", labels, multiprocess_mode="mostrecent"),
        gate_pass_rate=Gauge("echo_gate_pass_rate", "Share of requests the gate let grow, per judge depth, "
                             "last interval", [*labels, "depth"], multiprocess_mode="mostrecent"),
        gate_threshold=Gauge("echo_gate_threshold", "The gate's threshold per judge depth",
                             [*labels, "depth"], multiprocess_mode="mostrecent"),
        calibrating=Gauge("echo_calibrating", "1 while echo calibrates its gate online (gating off)",
                          labels, multiprocess_mode="mostrecent"),
    )
    return metrics


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


class EchoMetrics:
    """Turns successive `stats()` snapshots into metrics and a log line."""

    def __init__(self, model_name: str, judge_depth: tuple[int, ...] = ()):
        global _metrics
        if _metrics is None:
            _metrics = _create()
        self.metrics = _metrics
        self.model_name = model_name
        self.previous: dict | None = None
        # Every series on /metrics from the start, at 0, as Prometheus clients expect (a series
        # that appears later has no zero to take a rate from); the gate's per depth where the
        # judge depths are known before the first step.
        for metric in self.metrics.values():
            if "depth" not in metric._labelnames:
                metric.labels(model_name=model_name)
        for depth in judge_depth:
            for name in ("gate_pass_rate", "gate_threshold"):
                self.metrics[name].labels(model_name=model_name, depth=str(depth))

    def observe(self, stats: dict) -> dict:
        """Update the metrics from a new snapshot; returns the interval's figures."""
        previous = self.previous or {key: 0 for key in COUNTERS} | {"gate_by_depth": {}}
        delta = {key: stats[key] - previous[key] for key in COUNTERS}
        self.previous = stats
        label = {"model_name": self.model_name}
        for key in COUNTERS:
            if delta[key] > 0:
                self.metrics[key].labels(**label).inc(delta[key])
        interval = {
            "mat": None if not delta["num_verified_trees"]
            else 1 + delta["num_accepted_drafts"] / delta["num_verified_trees"],
            "utilization": _ratio(delta["num_accepted_drafts"], delta["num_verified_drafts"]),
            "verified_per_step": _ratio(delta["num_verified_drafts"], delta["num_verified_steps"]),
            "budget_per_step": _ratio(delta["budget_sum"], delta["num_budgeted_steps"]),
            "go_deep_share": _ratio(delta["nodes_bought_deep"], delta["nodes_bought"]),
            "drafted_share": _ratio(delta["num_drafted_steps"],
                                    delta["num_drafted_steps"] + delta["num_undrafted_steps"]),
            "gate_pass_rate": {},
        }
        for name in ("mat", "utilization", "verified_per_step", "budget_per_step", "go_deep_share"):
            if interval[name] is not None:
                self.metrics[name].labels(**label).set(interval[name])
        for depth, (checks, stops) in stats["gate_by_depth"].items():
            before = previous["gate_by_depth"].get(depth, [0, 0])
            if checks > before[0]:
                rate = 1 - (stops - before[1]) / (checks - before[0])
                interval["gate_pass_rate"][int(depth)] = rate
                self.metrics["gate_pass_rate"].labels(**label, depth=str(depth)).set(rate)
        for depth, threshold in zip(stats["judge_depth"], stats["threshold"]):
            self.metrics["gate_threshold"].labels(**label, depth=str(depth)).set(threshold)
        self.metrics["calibrating"].labels(**label).set(float(stats["calibrating"]))
        return interval

    @staticmethod
    def log_line(stats: dict, interval: dict) -> str:
        """Echo's part of the periodic stats log, e.g. "echo: policy echo, drafted 100% of steps,
        budget 14.2/step (62% go deep), gate pass 40% at depth 1, MAT 1.85, utilization 0.31"."""
        parts = [f"policy {stats['policy']}"]
        if stats["calibrating"]:
            parts.append("calibrating its gate online")
        if interval["drafted_share"] is not None:
            parts.append(f"drafted {interval['drafted_share']:.0%} of steps")
        if interval["budget_per_step"] is not None:
            deep = interval["go_deep_share"]
            parts.append(f"budget {interval['budget_per_step']:.1f}/step"
                         + ("" if deep is None else f" ({deep:.0%} go deep)"))
        parts += [f"gate pass {rate:.0%} at depth {depth}" for depth, rate in interval["gate_pass_rate"].items()]
        if interval["mat"] is not None:
            parts.append(f"MAT {interval['mat']:.2f}, utilization {interval['utilization']:.2f}")
        return "echo: " + ", ".join(parts)


def log(engine_index: int, line: str, idle: bool) -> None:
    (logger.debug if idle else logger.info)("Engine %03d: %s", engine_index, line)
