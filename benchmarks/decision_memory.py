"""Would a longer memory steady echo's step decision at small batch sizes?

Echo with the auto budget drafts a step when drafted steps' measured goodput beats undrafted
steps' (core.budget.MeasuredGoodput, which decays each choice's older steps by `decay` per
step and the accepted share by `request_decay` per request). At batch size 1 drafting barely
pays in echo's engine on this CPU, and one bench run saw echo draft only 42-66 % of the steps
on the latency sets: short memories make a close ratio waver. Two echo engines (the committed
head and calibration) take turns (A B A B ...) on `echo-vllm bench`'s latency sets and
throughput workload: A with the defaults, B with its MeasuredGoodput replaced by one with
`--decay` and `--request-decay`. Reported per workload: tokens/s medians and runs of each, the
share of steps each drafted, and B / A.

    .venv/bin/python benchmarks/decision_memory.py [--decay 0.97] [--request-decay 0.998] [--batch-sizes 4 16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # B's memory is replaced by collective_rpc

from echo_vllm.assets.models import model_dir  # noqa: E402
from echo_vllm.bench.offline import echo_counts, echo_decisions, engine_options, run, warm_up_sampling, workloads  # noqa: E402
from echo_vllm.bench.plan import build_plan  # noqa: E402

HEAD = "heads/smollm2-135m-eagle3"


def use_memory(wrapper, decay: float, request_decay: float) -> None:
    """Replace the batch policy's measured goodput by an empty one with these decays (runs inside each worker)."""
    from echo_vllm.core.budget import MeasuredGoodput

    wrapper.model_runner.echo_policy.measured_goodput = MeasuredGoodput(decay=decay, request_decay=request_decay)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decay", type=float, default=0.97)
    parser.add_argument("--request-decay", type=float, default=0.998)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--out", default="bench-out/decision_memory.json")
    args = parser.parse_args()

    from vllm import LLM, SamplingParams

    plan = build_plan(str(model_dir("smollm2-135m")), HEAD, f"{HEAD}/calibration.json", "echo", "2",
                      "latency,throughput", "mt_bench,humaneval,gsm8k", 4, ",".join(map(str, args.batch_sizes)),
                      100, 128, args.repetitions, 0.5, 0.1, os.path.dirname(args.out) or ".")
    loads = workloads(plan)
    config = plan.method_configs()["echo"]
    engines = {name: LLM(model=plan.target, **engine_options(plan, loads), speculative_config=config)
               for name in ("A", "B")}
    engines["B"].collective_rpc(use_memory, args=(args.decay, args.request_decay))
    sampling = SamplingParams(temperature=0.0, max_tokens=plan.max_tokens, ignore_eos=True)
    results = {}
    for w in loads:
        rates, shares = {name: [] for name in engines}, {name: [] for name in engines}
        for llm in engines.values():
            run(llm, w, warm_up_sampling(sampling))
        for _ in range(args.repetitions):
            for name, llm in engines.items():
                before = echo_counts(llm)
                rates[name].append(run(llm, w, sampling))
                shares[name].append(echo_decisions(before, echo_counts(llm))["drafted_share"])
        median = {name: statistics.median(r) for name, r in rates.items()}
        results[f"{w.table} {w.key}"] = {"tokens_per_s": rates, "drafted_share": shares, "median": median,
                                         "b_x_a": median["B"] / median["A"]}
        print(f"{w.table} {w.key}: " + "; ".join(
            f"{name} {median[name]:.1f} tok/s ({min(rates[name]):.1f}-{max(rates[name]):.1f}), drafted "
            + "/".join(f"{s:.0%}" for s in shares[name]) for name in engines)
            + f"; B/A {median['B'] / median['A']:.3f}", flush=True)
    for llm in engines.values():
        llm.llm_engine.engine_core.shutdown()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"decay": args.decay, "request_decay": args.request_decay, "repetitions": args.repetitions,
                   "results": results}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
