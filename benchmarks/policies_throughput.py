"""Throughput of every speculation policy against decoding without speculation, by batch size.

SmolLM2-135M (float32, CPU) with the trained EAGLE-3 head; MT-Bench prompts, greedy, 128
output tokens per request (ignore_eos, so every request of a batch runs to the end). For
each batch size B, one run submits B prompts at once (B = 1: four prompts one after the
other). Each speculative engine lives beside a plain one (memory allows two SmolLM2 engines
with room, not eight) and they take turns run by run; each figure is the median of the
runs, and each ratio compares runs interleaved with each other. Prefix caching is off in
both engines (the runs repeat their prompts).

  tokens/s      output tokens / wall time of a run
  x plain       tokens/s over no speculation's, medians of the same interleaved runs
  MAT           tokens committed per request per verification step (bonus included)
  utilization   accepted draft tokens / verified draft tokens

    .venv/bin/python benchmarks/policies_throughput.py --head heads/smollm2-135m-eagle3 \\
        --calibration heads/smollm2-135m-eagle3/calibration.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from echo_vllm.assets.models import prepare_model  # noqa: E402
from echo_vllm.assets.prompts import chat_messages, load_prompts  # noqa: E402

TREE = {"steps": 5, "topk": 8, "num_draft_tokens": 32}  # SGLang's EAGLE-3 tree, the seed's static baseline


def methods(head: str, calibration: str | None, eagle3_ks: list[int], ddd_threshold: float,
            opt_tree_gain: float) -> dict[str, dict]:
    """Speculative config of each method compared with no speculation."""
    out: dict[str, dict] = {}
    for k in eagle3_ks:
        out[f"eagle3 K={k}"] = {"method": "eagle3", "model": head, "num_speculative_tokens": k}
    echo = {"method": "echo", "model": head}
    out["static"] = {**echo, **TREE}
    out["ddd"] = {**echo, **TREE, "policy": "ddd", "threshold": ddd_threshold}
    out["opt_tree"] = {**echo, **TREE, "policy": "opt_tree", "threshold": opt_tree_gain}
    # echo: the gate from a calibration file, else calibrated online over its first steps
    out["echo"] = {**echo, "calibration_file": calibration} if calibration else {**echo, **TREE, "policy": "echo"}
    return out


def spec_counts(llm) -> dict[str, float]:
    return {m.name: m.value for m in llm.get_metrics() if m.name.startswith("vllm:spec_decode") and hasattr(m, "value")}


def run(llm, chats, batch_size, sampling) -> tuple[float, dict[str, float]]:
    """One run: tokens/s and the spec-decode counter increments."""
    before = spec_counts(llm)
    start = time.perf_counter()
    if batch_size == 1:
        outputs = [o for c in chats for o in llm.chat([c], sampling, use_tqdm=False)]
    else:
        outputs = llm.chat(chats, sampling, use_tqdm=False)
    seconds = time.perf_counter() - start
    after = spec_counts(llm)
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return tokens / seconds, {k: after[k] - before.get(k, 0.0) for k in after}


def summarize(counts: list[dict[str, float]]) -> tuple[float | None, float | None]:
    drafts = sum(c.get("vllm:spec_decode_num_drafts", 0.0) for c in counts)
    draft_tokens = sum(c.get("vllm:spec_decode_num_draft_tokens", 0.0) for c in counts)
    accepted = sum(c.get("vllm:spec_decode_num_accepted_tokens", 0.0) for c in counts)
    if drafts == 0:
        return None, None
    return 1.0 + accepted / drafts, (accepted / draft_tokens if draft_tokens else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head", required=True)
    parser.add_argument("--calibration", help="echo's calibration file (echo-vllm calibrate); without it echo "
                        "calibrates online")
    parser.add_argument("--batch-sizes", default="1,4,16,32,64")
    parser.add_argument("--eagle3-k", default="1,2,3", help="vLLM eagle3 chain lengths to try (best reported)")
    parser.add_argument("--ddd-threshold", type=float, default=0.5)
    parser.add_argument("--opt-tree-gain", type=float, default=0.1)
    parser.add_argument("--methods", help="comma-separated subset of the methods to run (default: all); "
                        "results already in --out for other methods are kept, so a long study can run in parts")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--out", default="bench-out/policies_throughput.json")
    args = parser.parse_args()

    from vllm import LLM, SamplingParams

    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    target = str(prepare_model("smollm2-135m"))
    # No prefix caching: every run repeats the same prompts, and a cache hit would depend on
    # which engine's KV cache (a speculative engine also holds draft KV and lookahead slots)
    # still holds the previous run's blocks, not on decoding.
    engine = dict(dtype="float32", enforce_eager=True, max_model_len=1024, disable_log_stats=False,
                  kv_cache_memory_bytes=1 << 30, max_num_seqs=max(batch_sizes), enable_prefix_caching=False)
    configs = methods(args.head, args.calibration, [int(k) for k in args.eagle3_k.split(",")],
                      args.ddd_threshold, args.opt_tree_gain)
    if args.methods:
        chosen = args.methods.split(",")
        unknown = [m for m in chosen if m not in configs]
        if unknown:
            parser.error(f"unknown method(s) {unknown}; known: {list(configs)}")
        configs = {name: configs[name] for name in chosen}
    sampling = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    prompts = [chat_messages(p) for p in load_prompts("mt_bench")]
    batches = {b: prompts[:4] if b == 1 else (prompts * 2)[:b] for b in batch_sizes}

    plain = LLM(model=target, **engine)
    results = previous_results(args.out, batch_sizes)
    for name, config in configs.items():
        llm = LLM(model=target, **engine, speculative_config=config)
        for batch_size, chats in batches.items():
            for runner in (plain, llm):  # warm-up at this batch size
                run(runner, chats[:4], batch_size, sampling)
            rates, plain_rates, counts = [], [], []
            for _ in range(args.repetitions):
                plain_rates.append(run(plain, chats, batch_size, sampling)[0])
                rate, count = run(llm, chats, batch_size, sampling)
                rates.append(rate)
                counts.append(count)
            mat, utilization = summarize(counts)
            results[batch_size][name] = {
                "tokens_per_s": statistics.median(rates), "runs": rates,
                "plain_tokens_per_s": statistics.median(plain_rates), "plain_runs": plain_rates,
                "x_plain": statistics.median(rates) / statistics.median(plain_rates),
                "mat": mat, "utilization": utilization,
            }
            print(json.dumps({"bs": batch_size, "method": name, "x_plain": round(results[batch_size][name]["x_plain"], 3),
                              "mat": mat}), flush=True)
        llm.llm_engine.engine_core.shutdown()
        del llm
        save(results, args)  # after every method: an interrupted study keeps what it measured
    report(results, args)


def previous_results(path: str, batch_sizes: list[int]) -> dict[int, dict]:
    """Results of earlier runs in `path` (each method's ratios come from its own interleaved
    runs, so parts measured at different times still compare like with like)."""
    results = {b: {} for b in batch_sizes}
    if os.path.exists(path):
        for batch_size, by_method in json.load(open(path))["results"].items():
            results.setdefault(int(batch_size), {}).update(by_method)
    return results


def save(results: dict, args) -> None:
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "results": results, "date": time.strftime("%Y-%m-%d %H:%M")}, f, indent=2)


def report(results: dict, args) -> None:
    print(f"\nSmolLM2-135M float32 CPU, head {args.head}; MT-Bench, greedy, {args.max_tokens} tokens; "
          f"median of {args.repetitions} interleaved runs\n")
    print("| bs | method | tokens/s | plain tokens/s (same turns) | x plain | MAT | utilization |")
    print("|---|---|---|---|---|---|---|")
    for batch_size, by_method in results.items():
        for name, r in by_method.items():
            mat = "-" if r["mat"] is None else f"{r['mat']:.2f}"
            util = "-" if r["utilization"] is None else f"{r['utilization']:.2f}"
            print(f"| {batch_size} | {name} | {r['tokens_per_s']:.1f} | {r['plain_tokens_per_s']:.1f} | "
                  f"{r['x_plain']:.2f} | {mat} | {util} |")
    print(f"\nraw measurements: {args.out}")


if __name__ == "__main__":
    main()
