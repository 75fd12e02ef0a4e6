"""What separates echo's engine from the plain engine of `echo-vllm bench` when echo drafts
nothing: vLLM's asynchronous scheduling, and what echo's engine does on an undrafted step.

vLLM schedules step N+1 while step N runs (async scheduling, on by default). Echo's engines run
without it: vLLM turns it off with the padded drafter batch off, which echo needs for trees
(see echo_vllm/config.py). So every ratio of `echo-vllm bench` against no speculation also
holds the difference between the two schedulers. And on a step echo does not draft, its engine
still keeps the first-pass inputs each request owes and goes through vLLM's speculative-decoding
paths. Three engines take turns on the throughput workload of `echo-vllm bench` (MT-Bench
prompts of about 100 tokens, 128 output tokens, greedy) at each batch size: no speculation with
async scheduling on (vLLM's default, the bench's plain engine) and off, and echo with the
committed head and calibration and its step decision replaced by "never draft". Reported:
sync / async (the scheduler alone) and echo-undrafted / sync (echo's cost on undrafted steps).

    .venv/bin/python benchmarks/async_scheduling.py [--batch-sizes 1 4 8 16 32 64] [--repetitions 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # the decision is replaced by collective_rpc

from echo_vllm.assets.models import model_dir  # noqa: E402
from echo_vllm.bench.offline import engine_options, run, warm_up_sampling, workloads  # noqa: E402
from echo_vllm.bench.plan import build_plan  # noqa: E402

HEAD = "heads/smollm2-135m-eagle3"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64])
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--out", default="bench-out/async_scheduling.json")
    args = parser.parse_args()

    from vllm import LLM, SamplingParams

    plan = build_plan(str(model_dir("smollm2-135m")), HEAD, f"{HEAD}/calibration.json", "echo", "2", "throughput", "mt_bench", 4,
                      ",".join(map(str, args.batch_sizes)), 100, 128, args.repetitions, 0.5, 0.1,
                      os.path.dirname(args.out) or ".")
    loads = workloads(plan)
    engines = {"async": LLM(model=plan.target, **engine_options(plan, loads)),
               "sync": LLM(model=plan.target, **engine_options(plan, loads), async_scheduling=False),
               "echo_undrafted": LLM(model=plan.target, **engine_options(plan, loads),
                                     speculative_config=plan.method_configs()["echo"])}
    engines["echo_undrafted"].collective_rpc(
        lambda worker: setattr(worker.model_runner.echo_policy, "forced_choice", False))
    sampling = SamplingParams(temperature=0.0, max_tokens=plan.max_tokens, ignore_eos=True)
    results = {}
    for w in loads:
        for llm in engines.values():
            run(llm, w, warm_up_sampling(sampling))
        rates = {name: [] for name in engines}
        for _ in range(args.repetitions):
            for name, llm in engines.items():
                rates[name].append(run(llm, w, sampling))
        median = {name: statistics.median(r) for name, r in rates.items()}
        results[w.batch_size] = {"tokens_per_s": rates, "median": median, "sync_x_async": median["sync"] / median["async"],
                                 "echo_undrafted_x_sync": median["echo_undrafted"] / median["sync"]}
        print(f"bs {w.batch_size}: " + ", ".join(f"{name} {median[name]:.1f} ({min(r):.1f}-{max(r):.1f})"
                                                 for name, r in rates.items())
              + f" tok/s; sync / async {results[w.batch_size]['sync_x_async']:.3f}, "
              f"echo undrafted / sync {results[w.batch_size]['echo_undrafted_x_sync']:.3f}", flush=True)
    for llm in engines.values():
        llm.llm_engine.engine_core.shutdown()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"repetitions": args.repetitions, "results": results}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
