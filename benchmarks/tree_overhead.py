"""Step-time cost of verifying a draft tree instead of a chain, and draft time per depth.

On SmolLM2-135M (float32, CPU) with an untrained EAGLE-3 head (acceptance is meaningless
here; the shapes are what is measured), two echo engines run side by side:

  tree   steps 5, topk 8, num_draft_tokens 32  (the seed's configuration for bs 4-16)
  chain  steps 31, topk 1, num_draft_tokens 32 (the same 32 verified nodes as one chain)

and take turns (tree, chain, tree, chain, ...) at each batch size. Timers installed in the
workers record, per engine step: the target pass over all nodes (echo's runner
`execute_model`: input prep, forward with tree attention, logits), verification (`_sample`),
the draft first pass, and each expansion depth. Reported: medians over all steps of all
repetitions, with min-max of the per-repetition medians.

    .venv/bin/python benchmarks/tree_overhead.py [--batch-sizes 1 16] [--repetitions 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # timers go in by collective_rpc

from echo_vllm.assets.models import cache_dir, prepare_model  # noqa: E402
from echo_vllm.assets.prompts import load_prompts  # noqa: E402
from echo_vllm.draft_head import write_random_head  # noqa: E402

SHAPES = {
    "tree": {"steps": 5, "topk": 8, "num_draft_tokens": 32},
    "chain": {"steps": 31, "topk": 1, "num_draft_tokens": 32},
}
ENGINE = dict(dtype="float32", enforce_eager=True, kv_cache_memory_bytes=2 << 30,
              max_model_len=2048, max_num_seqs=32)


def install_timers(wrapper) -> None:
    """Wrap the timed methods of the worker's runner and drafter (runs inside the worker)."""
    import time as _time

    runner, drafter = wrapper.model_runner, wrapper.model_runner.drafter
    runner.echo_timings = {}
    depth = {"next": 1}  # expansion depth of the next _draft_step call

    def timed(owner, name, label):
        """label(args) -> the timing's name, or None to skip this call."""
        original = getattr(owner, name)

        def timed_call(*args, **kwargs):
            key = label(args)
            start = _time.perf_counter()
            result = original(*args, **kwargs)
            if key is not None:
                runner.echo_timings.setdefault(key, []).append(_time.perf_counter() - start)
            return result

        setattr(owner, name, timed_call)

    def first_pass_label(args):
        depth["next"] = 1
        return "draft first pass"

    def depth_label(args):
        depth["next"] += 1
        return f"draft depth {depth['next'] - 1}"

    # steps that verify drafts only (prefill steps are the same with or without trees)
    timed(runner, "execute_model",
          lambda args: "target pass" if args[0].scheduled_spec_decode_tokens else None)
    timed(runner, "_sample", lambda args: "verification" if args[1] is not None else None)
    timed(drafter, "propose", lambda args: "draft, all depths")
    timed(drafter, "_first_pass", first_pass_label)
    timed(drafter, "_draft_step", depth_label)


def take_timings(wrapper) -> dict[str, list[float]]:
    timings = wrapper.model_runner.echo_timings
    wrapper.model_runner.echo_timings = {}
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--out", default="bench-out/tree_overhead.json")
    args = parser.parse_args()

    from vllm import LLM, SamplingParams

    target = str(prepare_model("smollm2-135m"))
    head = str(cache_dir() / "heads" / "smollm2-135m-random")
    if not os.path.exists(os.path.join(head, "config.json")):
        write_random_head(head, target, draft_vocab_size=8192, seed=0)
    engines = {name: LLM(model=target, **ENGINE, speculative_config={"method": "echo", "model": head,
                                                                   "policy": "static", **shape})
               for name, shape in SHAPES.items()}
    for llm in engines.values():
        llm.collective_rpc(install_timers)
    questions = [[{"role": "user", "content": p.text}] for p in load_prompts("mt_bench")]
    sampling = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)

    results: dict = {}
    for batch_size in args.batch_sizes:
        batch = questions[:batch_size]
        per_rep: dict = {name: {} for name in engines}
        for _ in range(args.repetitions):
            for name, llm in engines.items():
                llm.chat(batch, sampling, use_tqdm=False)
                (timings,) = llm.collective_rpc(take_timings)
                for key, values in timings.items():
                    per_rep[name].setdefault(key, []).append(values)
        results[batch_size] = {
            name: {key: {"median_ms": 1e3 * statistics.median(v for rep in reps for v in rep),
                         "rep_medians_ms": [1e3 * statistics.median(rep) for rep in reps]}
                   for key, reps in timings.items()}
            for name, timings in per_rep.items()
        }
    report(results, args)


def report(results: dict, args) -> None:
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"shapes": SHAPES, "engine": ENGINE, "results": results,
                   "date": time.strftime("%Y-%m-%d %H:%M")}, f, indent=2)
    print(f"\nSmolLM2-135M float32 CPU, untrained head, {args.repetitions} repetitions, "
          f"{args.max_tokens} tokens per request; medians per engine step, ms (min-max of "
          "repetition medians)\n")
    for batch_size, by_shape in results.items():
        print(f"batch size {batch_size}")
        print("| step part | tree (5 x 8, 32 nodes) | chain (31 x 1, 32 nodes) | tree / chain |")
        print("|---|---|---|---|")
        # the chain's depths past the tree's are in the JSON file
        keys = sorted(by_shape["tree"], key=_order)
        for key in keys:
            cells = [_cell(by_shape[name].get(key)) for name in ("tree", "chain")]
            tree, chain = by_shape["tree"].get(key), by_shape["chain"].get(key)
            ratio = f"{tree['median_ms'] / chain['median_ms']:.2f}" if tree and chain else "-"
            print(f"| {key} | {cells[0]} | {cells[1]} | {ratio} |")
        print()
    print(f"raw measurements: {args.out}")


def _order(key: str):
    parts = ["target pass", "verification", "draft, all depths", "draft first pass"]
    return (parts.index(key), 0) if key in parts else (len(parts), int(key.rsplit(" ", 1)[1]))


def _cell(entry) -> str:
    if entry is None:
        return "-"
    reps = entry["rep_medians_ms"]
    return f"{entry['median_ms']:.1f} ({min(reps):.1f}-{max(reps):.1f})"


if __name__ == "__main__":
    main()
