"""Echo's metrics and stats log line under `vllm serve` (vllm/v1/engine/async_llm.py).

vLLM's stats reach the API server per step through fixed structures (SchedulerStats) that
carry nothing else, and the worker's own metrics would not reach /metrics (the API server
serves its own registry). Echo's counters are cumulative, so reading them once per stats log
interval loses nothing: the wrapped `do_log_stats` (the server's periodic stats call) fetches
them from the workers through vLLM's collective RPC (`EchoRPC.echo_stats`, tensor-parallel rank
0's answer), updates the `echo_` metrics (echo_vllm/metrics.py) and logs echo's line after
vLLM's own lines. The wrapped `AsyncLLM.__init__` creates the series at 0 when the server
starts. Nothing happens when echo is not the speculative method, or when stats are off.
"""

from __future__ import annotations

import asyncio
import functools

from echo_vllm.log import logger
from echo_vllm.scheduler_patches.patch_arg_utils import ADDITIONAL_CONFIG_KEY
from echo_vllm.scheduler_patches.records import VllmPatch

RPC_TIMEOUT_S = 5.0


def _echo_selected(engine) -> bool:
    additional = engine.vllm_config.additional_config
    return isinstance(additional, dict) and ADDITIONAL_CONFIG_KEY in additional


async def report_echo_stats(engine) -> None:
    """Fetch echo's counters from the workers and publish them (never raises: the stats log
    must go on whatever happens to one reading)."""
    from echo_vllm.metrics import EchoMetrics, log

    try:
        stats = (await asyncio.wait_for(engine.collective_rpc("echo_stats"), RPC_TIMEOUT_S))[0]
    except Exception as error:  # a slow or failed reading skips one interval
        logger.debug("echo-vllm: echo_stats not read this interval (%s)", error)
        return
    if not hasattr(engine, "echo_metrics"):
        engine.echo_metrics = EchoMetrics(engine.vllm_config.model_config.served_model_name)
    previous = engine.echo_metrics.previous
    interval = engine.echo_metrics.observe(stats)
    idle = previous is not None and stats["num_verified_steps"] == previous["num_verified_steps"] \
        and stats["num_undrafted_steps"] == previous["num_undrafted_steps"]
    log(0, engine.echo_metrics.log_line(stats, interval), idle)


def start_echo_metrics(engine) -> None:
    """Create echo's series at 0 when the engine client starts, so that /metrics lists them
    before the first stats interval."""
    from echo_vllm.config import parse_echo_config
    from echo_vllm.metrics import EchoMetrics

    # parsed again: a calibration file's judge depths are not in the options themselves
    echo = parse_echo_config(engine.vllm_config.additional_config[ADDITIONAL_CONFIG_KEY])
    engine.echo_metrics = EchoMetrics(engine.vllm_config.model_config.served_model_name, echo.judge_depth)


def _wrap_init(original):
    @functools.wraps(original)
    def __init__(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        if self.logger_manager is not None and _echo_selected(self):
            start_echo_metrics(self)

    return __init__


def _wrap_do_log_stats(original):
    @functools.wraps(original)
    async def do_log_stats(self) -> None:
        await original(self)
        if self.logger_manager is not None and _echo_selected(self):
            await report_echo_stats(self)

    return do_log_stats


PATCH = VllmPatch(
    target="vllm.v1.engine.async_llm.AsyncLLM.do_log_stats",
    vllm="0.32.*",
    why="publish echo's decisions (budget, gate, acceptance) as echo_ Prometheus metrics and in the "
    "periodic stats log, read from the workers once per log interval",
    upstream="none: vLLM's per-step stats have no field for a speculative method's own state",
    remove_when="vLLM stats carry per-method speculative-decoding state, or stat-logger plugins get the "
    "engine client",
    wrap=_wrap_do_log_stats,
)


START_PATCH = VllmPatch(
    target="vllm.v1.engine.async_llm.AsyncLLM.__init__",
    vllm="0.32.*",
    why="create the echo_ Prometheus series at 0 when the server's engine client starts, so a scrape "
    "before the first stats interval finds them (they are updated at each interval by do_log_stats)",
    upstream="none: stat-logger plugins are built without the engine client echo reads its workers through",
    remove_when="vLLM stats carry per-method speculative-decoding state, or stat-logger plugins get the "
    "engine client",
    wrap=_wrap_init,
)
