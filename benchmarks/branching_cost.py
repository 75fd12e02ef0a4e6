"""What does charging branching trees for their tree attention give echo's auto budget?

A branching tree's rows take echo's tree attention in every target layer, a chain's vLLM's
causal kernel; echo's budget charges each branching tree what it measured it to add to a pass
(scheduler_patches/batch_policy.py, `branching_costs`). Here one no-speculation engine and one
echo engine (the committed head and calibration, budget auto) take turns on `echo-vllm bench`'s
throughput workload; the echo engine runs each repetition twice, once charging branching trees
and once with the charge set to nothing (the order alternates between repetitions). Reported
per batch size: tokens/s medians, each echo run over the plain run beside it (median), the
share of each run's verified trees that branched, and the seconds per branching tree echo
learned.

    .venv/bin/python benchmarks/branching_cost.py [--batch-sizes 2 4 8] [--repetitions 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # the switch travels by collective_rpc

from echo_vllm.assets.models import model_dir  # noqa: E402
from echo_vllm.bench.offline import (  # noqa: E402
    branching_share,
    echo_counts,
    engine_options,
    run,
    warm_up_sampling,
    workloads,
)
from echo_vllm.bench.plan import build_plan  # noqa: E402

HEAD = "heads/smollm2-135m-eagle3"
ARMS = ("charged", "free")  # branching trees charged what they add to a pass, or nothing


def charge_branching(worker, charged: bool) -> None:
    """Let the policy charge branching trees, or make them free (runs inside each worker).
    Either way the policy goes on measuring what they cost."""
    policy = worker.model_runner.echo_policy
    if charged:
        policy.__dict__.pop("branching_seconds", None)  # the method again
    else:
        policy.branching_seconds = lambda batch: 0.0


def learned_branching_seconds(worker) -> dict[int, float]:
    """The seconds per branching tree the policy learned, by batch size, whether it charges
    them now or not (runs inside each worker)."""
    policy = worker.model_runner.echo_policy
    return {batch: type(policy).branching_seconds(policy, batch) for batch in (1, 2, 4, 8, 16, 32, 64)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--out", default="bench-out/branching_cost.json")
    args = parser.parse_args()

    from vllm import LLM, SamplingParams

    plan = build_plan(str(model_dir("smollm2-135m")), HEAD, f"{HEAD}/calibration.json", "echo", "1",
                      "throughput", "mt_bench", 4, ",".join(map(str, args.batch_sizes)),
                      100, 64, args.repetitions, 0.5, 0.1, os.path.dirname(args.out) or ".")
    loads = workloads(plan)
    plain = LLM(model=plan.target, **engine_options(plan, loads))
    echo = LLM(model=plan.target, **engine_options(plan, loads), speculative_config=plan.method_configs()["echo"])
    sampling = SamplingParams(temperature=0.0, max_tokens=plan.max_tokens, ignore_eos=True)
    results = {}
    print("| bs | plain tok/s | " + " | ".join(f"echo {arm} tok/s (x plain)" for arm in ARMS)
          + " | " + " | ".join(f"trees branched, {arm}" for arm in ARMS) + " | learned per branching tree |")
    print("|---|---|---|---|---|---|---|")
    for w in loads:
        run(plain, w, warm_up_sampling(sampling))
        run(echo, w, warm_up_sampling(sampling))
        tokens_per_s = {"plain": [], **{arm: [] for arm in ARMS}}
        branching = {arm: [] for arm in ARMS}  # per run: the share of verified trees that branched
        for repetition in range(args.repetitions):
            tokens_per_s["plain"].append(run(plain, w, sampling))
            for arm in ARMS if repetition % 2 == 0 else reversed(ARMS):
                echo.collective_rpc(charge_branching, args=(arm == "charged",))
                before = echo_counts(echo)
                tokens_per_s[arm].append(run(echo, w, sampling))
                after = echo_counts(echo)
                branching[arm].append(branching_share({key: after[key] - before[key] for key in
                                                       ("num_verified_trees", "num_branching_trees")}))
        (learned,) = echo.collective_rpc(learned_branching_seconds)[:1]
        echo.collective_rpc(charge_branching, args=(True,))
        ratios = {arm: statistics.median(a / b for a, b in zip(tokens_per_s[arm], tokens_per_s["plain"]))
                  for arm in ARMS}
        results[w.key] = {"tokens_per_s": tokens_per_s, "x_plain": ratios, "branching_share": branching,
                          "seconds_per_branching_tree": learned}
        print(f"| {w.key} | {statistics.median(tokens_per_s['plain']):.1f} | "
              + " | ".join(f"{statistics.median(tokens_per_s[arm]):.1f} ({ratios[arm]:.3f})" for arm in ARMS) + " | "
              + " | ".join(", ".join("-" if b is None else f"{b:.0%}" for b in branching[arm]) for arm in ARMS)
              + " | "
              + ", ".join(f"bs {b}: {1e3 * s:.1f} ms" for b, s in learned.items() if s) + " |", flush=True)
    for llm in (plain, echo):
        llm.llm_engine.engine_core.shutdown()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
