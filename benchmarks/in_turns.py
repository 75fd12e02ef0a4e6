"""Speculative configurations side by side: engines take turns (A B C A B C ...) on the
bench's workloads, so drift on this shared machine hits all of them alike.

Each `--engine NAME=JSON` is one engine's `speculative_config` (`null`: no speculation); the
first engine is the reference every ratio is taken against. Per workload (a latency set at
batch size 1, or a throughput batch size): tokens/s (median and runs), and for echo engines
the share of steps drafted and explored and the mean budget (from each engine's own echo
stats; vLLM's spec-decode counters are one registry per process, shared by the engines, so
acceptance is not reported here: `echo-vllm bench` runs one speculative engine at a time).

    .venv/bin/python benchmarks/in_turns.py --engine 'plain=null' \\
        --engine 'eagle3 K=2={"method": "eagle3", "model": "heads/smollm2-135m-eagle3", "num_speculative_tokens": 2}' \\
        --engine 'echo={"method": "echo", "model": "heads/smollm2-135m-eagle3"}' [--tables latency] [--repetitions 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from echo_vllm.assets.models import model_dir  # noqa: E402
from echo_vllm.bench.offline import (  # noqa: E402
    echo_counts,
    echo_decisions,
    engine_options,
    run,
    warm_up_sampling,
    workloads,
)
from echo_vllm.bench.plan import build_plan  # noqa: E402

HEAD = "heads/smollm2-135m-eagle3"
ECHO_FIGURES = ("drafted_share", "explored_share", "mean_budget")


def engine_specs(values: list[str]) -> dict[str, dict | None]:
    """NAME=JSON pairs, in order; a clear error for a malformed one."""
    specs = {}
    for value in values:
        match = re.fullmatch(r"(.+?)=(\{.*\}|null)", value, flags=re.DOTALL)  # names may hold "=" (K=2)
        if match is None:
            raise SystemExit(f"--engine {value!r}: expected NAME=JSON (a JSON object, or null)")
        name, config = match.groups()
        try:
            specs[name] = json.loads(config)
        except json.JSONDecodeError as error:
            raise SystemExit(f"--engine {name}: not JSON ({error})") from error
    return specs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", action="append", required=True, help="NAME=JSON speculative_config, or NAME=null")
    parser.add_argument("--tables", default="latency", help="latency, throughput or both")
    parser.add_argument("--datasets", default="mt_bench,humaneval,gsm8k")
    parser.add_argument("--latency-prompts", type=int, default=4)
    parser.add_argument("--batch-sizes", default="1")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--out", default="bench-out/in_turns.json")
    args = parser.parse_args()
    specs = engine_specs(args.engine)

    from vllm import LLM, SamplingParams

    plan = build_plan(str(model_dir("smollm2-135m")), HEAD, None, "echo", "2", args.tables, args.datasets,
                      args.latency_prompts, args.batch_sizes, 100, args.max_tokens, args.repetitions, 0.5, 0.1,
                      os.path.dirname(args.out) or ".")
    loads = workloads(plan)
    engines = {name: LLM(model=plan.target, **engine_options(plan, loads), speculative_config=config)
               for name, config in specs.items()}
    is_echo = {name: bool(config) and config.get("method") == "echo" for name, config in specs.items()}
    sampling = SamplingParams(temperature=0.0, max_tokens=plan.max_tokens, ignore_eos=True)
    results = {}
    for w in loads:
        for llm in engines.values():
            run(llm, w, warm_up_sampling(sampling))
        before = {name: echo_counts(llm) for name, llm in engines.items() if is_echo[name]}
        rates = {name: [] for name in engines}
        for _ in range(args.repetitions):
            for name, llm in engines.items():
                rates[name].append(run(llm, w, sampling))
        reference = statistics.median(rates[next(iter(engines))])
        row = {}
        for name, llm in engines.items():
            median = statistics.median(rates[name])
            row[name] = {"tokens_per_s": median, "runs": rates[name], "x_first": median / reference}
            if is_echo[name]:
                decisions = echo_decisions(before[name], echo_counts(llm))
                row[name].update({key: decisions[key] for key in ECHO_FIGURES})
        results[f"{w.table} {w.key}"] = row
        print(f"{w.table} {w.key}:", flush=True)
        for name, r in row.items():
            extra = ", ".join(f"{key} {r[key]:.2f}" for key in ECHO_FIGURES if r.get(key) is not None)
            print(f"  {name}: {r['tokens_per_s']:.1f} tok/s ({min(r['runs']):.1f}-{max(r['runs']):.1f}), "
                  f"x{r['x_first']:.3f}" + (f"; {extra}" if extra else ""), flush=True)
    for llm in engines.values():
        llm.llm_engine.engine_core.shutdown()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"engines": specs, "repetitions": args.repetitions, "max_tokens": args.max_tokens,
                   "results": results}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
