"""Is echo's choice between drafting a step and not drafting it the right one?

With the auto budget, echo drafts a step only when it expects speculation to beat a plain step
at that batch size (core.budget.speculation_pays). This checks the choice against what it
chooses between: in one echo engine (SmolLM2-135M, the committed head and its calibration,
budget auto), each batch size's workload (the throughput workload of `echo-vllm bench`:
MT-Bench prompts of about 100 tokens, 128 output tokens, greedy) runs in turns with the step
decision replaced:

  draft   every step drafted (echo's gate and budget still choose what is verified)
  plain   no step drafted (echo's cost on undrafted steps stays: their draft-KV writes)
  echo    echo's own decision, exploration included

Reported per batch size: tokens/s medians (min-max) of each, draft/plain and echo/best ratios,
the acceptance of the forced-draft runs, and the share of steps echo drafted. Echo chooses well
where echo is close to the better of draft and plain. One engine for all three, so the ratios
carry no difference between engines; the engine carries its estimates across modes, as it
carries them across traffic when serving.

    .venv/bin/python benchmarks/drafting_decision.py [--batch-sizes 1 4 8 16] [--repetitions 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # the decision is replaced by collective_rpc

from echo_vllm.assets.models import model_dir  # noqa: E402
from echo_vllm.bench.offline import (  # noqa: E402
    acceptance, echo_counts, echo_decisions, engine_options, run, spec_counts, workloads,
)
from echo_vllm.bench.plan import build_plan  # noqa: E402

MODES = ("plain", "draft", "echo")
HEAD = "heads/smollm2-135m-eagle3"


def use_decision(wrapper, mode: str) -> None:
    """Force the batch policy's step decision, or let it decide (runs inside each worker)."""
    wrapper.model_runner.echo_policy.forced_choice = None if mode == "echo" else mode == "draft"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--out", default="bench-out/drafting_decision.json")
    args = parser.parse_args()

    from vllm import LLM, SamplingParams

    plan = build_plan(str(model_dir("smollm2-135m")), HEAD, f"{HEAD}/calibration.json", "echo", "2", "throughput",
                      "mt_bench", 4, ",".join(map(str, args.batch_sizes)), 100, 128, args.repetitions, 0.5, 0.1,
                      os.path.dirname(args.out) or ".")
    loads = workloads(plan)
    llm = LLM(model=plan.target, **engine_options(plan, loads), speculative_config=plan.method_configs()["echo"])
    sampling = SamplingParams(temperature=0.0, max_tokens=plan.max_tokens, ignore_eos=True)
    results = {}
    for w in loads:
        llm.collective_rpc(use_decision, args=("echo",))
        run(llm, w, sampling)  # warm-up
        rates = {mode: [] for mode in MODES}
        draft_acceptance, echo_shares = [], []
        for _ in range(args.repetitions):
            for mode in MODES:
                llm.collective_rpc(use_decision, args=(mode,))
                counts, stats = spec_counts(llm), echo_counts(llm)
                rates[mode].append(run(llm, w, sampling))
                if mode == "draft":
                    draft_acceptance.append(acceptance(counts, spec_counts(llm)))
                if mode == "echo":
                    echo_shares.append(echo_decisions(stats, echo_counts(llm))["drafted_share"])
        median = {mode: statistics.median(r) for mode, r in rates.items()}
        results[w.batch_size] = {
            "tokens_per_s": rates, "median": median,
            "draft_x_plain": median["draft"] / median["plain"],
            "echo_x_best": median["echo"] / max(median["draft"], median["plain"]),
            "draft_mat": statistics.median(a["mat"] for a in draft_acceptance),
            "draft_utilization": statistics.median(a["utilization"] for a in draft_acceptance),
            "echo_drafted_share": statistics.median(s for s in echo_shares if s is not None),
        }
        r = results[w.batch_size]
        print(f"bs {w.batch_size}: " + ", ".join(f"{m} {median[m]:.1f} ({min(rates[m]):.1f}-{max(rates[m]):.1f})"
                                                  for m in MODES)
              + f" tok/s; draft/plain {r['draft_x_plain']:.3f}, echo/best {r['echo_x_best']:.3f}; "
              f"forced drafts: MAT {r['draft_mat']:.2f}, utilization {r['draft_utilization']:.2f}; "
              f"echo drafted {r['echo_drafted_share']:.0%} of steps", flush=True)
    llm.llm_engine.engine_core.shutdown()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"batch_sizes": args.batch_sizes, "repetitions": args.repetitions, "results": results}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
