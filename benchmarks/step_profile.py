"""Where a decoding step's time goes: no speculation, vLLM's eagle3 chain and echo, side by side.

Three engines (the committed head; echo with its calibration and budget `auto`, or the budget
--echo-budget gives; the chain's K from --eagle3-k) take turns
(A B C A B C ...) on `echo-vllm bench`'s throughput workload. Inside each worker, timers wrap
the model runner's methods and the drafter's, so every figure is wall time on the worker's
own clock, per engine step (one `execute_model` call), median over the runs:
  target pass      the target model's forward (verification included)
  around the pass  the rest of execute_model (inputs, attention metadata, echo's tree inputs)
  drafting         propose_draft_token_ids; for echo also its parts: an undrafted step's
                   draft-KV write, the draft's first pass, growing the tree past depth 1, and
                   selecting the verified tree (budget, allocation)
  sampling, rest   the rest of sample_tokens (sampling, rejection or tree verification)
  wall             the run's wall time per step (the scheduler, output processing, IPC too)

With --undrafted, two engines instead: no speculation with synchronous scheduling (as echo's
engine schedules) and echo's engine with its step decision replaced by "never draft": what
echo's engine costs on a step it does not draft, part by part.

    .venv/bin/python benchmarks/step_profile.py [--batch-sizes 1 8] [--repetitions 3] [--undrafted]
        [--eagle3-k 1] [--echo-budget 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # the timers travel by collective_rpc

from echo_vllm.assets.models import model_dir  # noqa: E402
from echo_vllm.bench.offline import engine_options, run, warm_up_sampling, workloads  # noqa: E402
from echo_vllm.bench.plan import build_plan  # noqa: E402

HEAD = "heads/smollm2-135m-eagle3"
TIMED_RUNNER_METHODS = ("execute_model", "_model_forward", "sample_tokens", "propose_draft_token_ids")
TIMED_DRAFTER_METHODS = ("_write_draft_kv", "_first_pass", "_grow", "_select")  # echo's drafter only
PARTS = {  # printed name: how it is computed from the timers' totals
    "target pass": lambda t: t["_model_forward"],
    "around the pass": lambda t: t["execute_model"] - t["_model_forward"],
    "drafting": lambda t: t["propose_draft_token_ids"],
    "  undrafted steps' draft KV": lambda t: t.get("_write_draft_kv"),
    "  draft first pass": lambda t: t.get("_first_pass"),
    "  tree growth": lambda t: t.get("_grow"),
    "  tree selection": lambda t: t.get("_select"),
    "sampling, rest": lambda t: t["sample_tokens"] - t["propose_draft_token_ids"],
}


def install_timers(worker) -> None:
    """Wrap the runner's and echo's drafter's methods with timers (runs inside each worker)."""
    runner = worker.model_runner
    runner.step_timers = {}

    def timed(name, method):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                runner.step_timers[name] = runner.step_timers.get(name, 0.0) + time.perf_counter() - start
                runner.step_timers[f"{name} calls"] = runner.step_timers.get(f"{name} calls", 0) + 1
        return call

    for name in TIMED_RUNNER_METHODS:
        setattr(runner, name, timed(name, getattr(runner, name)))
    drafter = getattr(runner, "drafter", None)
    for name in TIMED_DRAFTER_METHODS:
        if hasattr(drafter, name):
            setattr(drafter, name, timed(name, getattr(drafter, name)))


def take_timers(worker) -> dict:
    """The timers' totals since the last call, then zeroed (runs inside each worker)."""
    timers, worker.model_runner.step_timers = worker.model_runner.step_timers, {}
    return timers


def per_step_ms(timers: dict, wall_seconds: float) -> dict:
    steps = timers["execute_model calls"]
    totals = {name: 0.0 for name in TIMED_RUNNER_METHODS} | timers  # plain: nothing drafted
    parts = {name: part(totals) for name, part in PARTS.items()}
    out = {name: 1e3 * seconds / steps for name, seconds in parts.items() if seconds is not None}
    out["wall"] = 1e3 * wall_seconds / steps
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1])
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--undrafted", action="store_true",
                        help="no speculation (synchronous scheduling) against echo never drafting")
    parser.add_argument("--eagle3-k", default="2", help="the eagle3 chain's K (default 2)")
    parser.add_argument("--echo-budget", type=int, default=None,
                        help="a fixed budget of drafts per step for echo (default: auto)")
    parser.add_argument("--out", default="bench-out/step_profile.json")
    args = parser.parse_args()

    from vllm import LLM, SamplingParams

    plan = build_plan(str(model_dir("smollm2-135m")), HEAD, f"{HEAD}/calibration.json", "eagle3,echo", args.eagle3_k,
                      "throughput", "mt_bench", 4, ",".join(map(str, args.batch_sizes)),
                      100, 128, args.repetitions, 0.5, 0.1, os.path.dirname(args.out) or ".")
    loads = workloads(plan)
    method_configs = plan.method_configs()
    echo_config = method_configs["echo"]
    if args.echo_budget is not None:
        echo_config = {**echo_config, "budget": args.echo_budget}
    if args.undrafted:
        engines = {"no speculation, synchronous": LLM(model=plan.target, **engine_options(plan, loads),
                                                      async_scheduling=False),
                   "echo, never drafting": LLM(model=plan.target, **engine_options(plan, loads),
                                               speculative_config=echo_config)}
        engines["echo, never drafting"].collective_rpc(
            lambda worker: setattr(worker.model_runner.echo_policy, "forced_choice", False))
    else:
        configs = {"no speculation": None, **method_configs, "echo": echo_config}
        engines = {name: LLM(model=plan.target, **engine_options(plan, loads), speculative_config=config)
                   for name, config in configs.items()}
    for llm in engines.values():
        llm.collective_rpc(install_timers)
    sampling = SamplingParams(temperature=0.0, max_tokens=plan.max_tokens, ignore_eos=True)
    results = {}
    for w in loads:
        runs = {name: [] for name in engines}
        for llm in engines.values():
            run(llm, w, warm_up_sampling(sampling))
            llm.collective_rpc(take_timers)
        for _ in range(args.repetitions):
            for name, llm in engines.items():
                start = time.perf_counter()
                tokens_per_s = run(llm, w, sampling)
                wall = time.perf_counter() - start
                (timers,) = llm.collective_rpc(take_timers)[:1]
                runs[name].append({"tokens_per_s": tokens_per_s, "steps": timers["execute_model calls"],
                                   "ms_per_step": per_step_ms(timers, wall)})
        results[w.key] = runs
        print(f"\nbatch size {w.key}: ms per engine step, median of {args.repetitions} runs")
        print("| part | " + " | ".join(engines) + " |\n|---|" + "---|" * len(engines))
        for part in [*PARTS, "wall"]:
            cells = []
            for name in engines:
                values = [r["ms_per_step"][part] for r in runs[name] if part in r["ms_per_step"]]
                cells.append(f"{statistics.median(values):.2f}" if values else "")
            print(f"| {part} | " + " | ".join(cells) + " |")
        for label, key in (("steps", "steps"), ("tokens/s", "tokens_per_s")):
            print(f"| {label} | " + " | ".join(
                f"{statistics.median(r[key] for r in runs[name]):.1f}" for name in engines) + " |")
    for llm in engines.values():
        llm.llm_engine.engine_core.shutdown()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
