"""At batch size 1, is echo's auto budget the better buy than one draft a step?

Echo's auto budget buys as many drafts a step as its cost model and the draft's calibrated
path probabilities say pay (on this CPU about two at batch size 1), where vLLM's `eagle3` K=1
chain verifies one. Four engines (SmolLM2-135M, the committed head; echo with its calibration)
run the latency workload of `echo-vllm bench` (the first prompts of MT-Bench, HumanEval and the
GSM8K-style set, one after another, 128 tokens, greedy): no speculation, `eagle3` K=1, echo
with budget `auto` and echo with a fixed budget of 1 (one draft a step: a chain through echo's
own machinery). Each run of a speculative engine follows a plain run, and its ratio is over
that run (median over repetitions). Also reported: echo's accepted / predicted drafts by depth
and its mean budget after each set.

    .venv/bin/python benchmarks/fixed_budget.py [--prompts 2] [--repetitions 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from echo_vllm.assets.models import model_dir  # noqa: E402
from echo_vllm.bench.offline import engine_options, run, warm_up_sampling, workloads  # noqa: E402
from echo_vllm.bench.plan import build_plan  # noqa: E402

HEAD = "heads/smollm2-135m-eagle3"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=2, help="prompts of each latency set")
    parser.add_argument("--repetitions", type=int, default=4)
    parser.add_argument("--out", default="bench-out/fixed_budget.json")
    args = parser.parse_args()

    from vllm import LLM, SamplingParams

    plan = build_plan(str(model_dir("smollm2-135m")), HEAD, f"{HEAD}/calibration.json", "eagle3,echo", "1", "latency",
                      "mt_bench,humaneval,gsm8k", args.prompts, "1", 100, 128, args.repetitions, 0.5, 0.1,
                      os.path.dirname(args.out) or ".")
    loads = workloads(plan)
    configs = plan.method_configs()
    configs["echo budget 1"] = {**configs["echo"], "budget": 1}
    plain = LLM(model=plan.target, **engine_options(plan, loads))
    engines = {name: LLM(model=plan.target, **engine_options(plan, loads), speculative_config=config)
               for name, config in configs.items()}
    sampling = SamplingParams(temperature=0.0, max_tokens=plan.max_tokens, ignore_eos=True)
    results = {}
    for w in loads:
        for llm in (plain, *engines.values()):
            run(llm, w, warm_up_sampling(sampling))
        ratios: dict[str, list[float]] = {name: [] for name in engines}
        for _ in range(args.repetitions):
            for name, llm in engines.items():
                plain_rate = run(plain, w, sampling)
                ratios[name].append(run(llm, w, sampling) / plain_rate)
        stats = engines["echo"].collective_rpc("echo_stats")[0]
        results[w.key] = {
            "x_plain": {name: statistics.median(r) for name, r in ratios.items()}, "runs": ratios,
            "echo_accepted_per_predicted_by_depth": stats["accepted_per_predicted_by_depth"],
            "echo_mean_budget": stats["budget_sum"] / max(stats["num_budgeted_steps"], 1),
        }
        print(f"{w.key}: x plain " + ", ".join(f"{name} {statistics.median(r):.3f}" for name, r in ratios.items())
              + f"; echo accepted / predicted by depth {[round(s, 2) for s in stats['accepted_per_predicted_by_depth']]}, "
              f"mean budget {results[w.key]['echo_mean_budget']:.2f} (since start-up)", flush=True)
    for llm in (plain, *engines.values()):
        llm.llm_engine.engine_core.shutdown()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"prompts": args.prompts, "repetitions": args.repetitions, "results": results}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
