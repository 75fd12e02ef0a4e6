"""Acceptance and speed of an EAGLE-3 head on SmolLM2: vLLM's `eagle3` chains (K = 1..5) and
echo's static tree, against decoding without speculation, side by side.

Per prompt set (MT-Bench, HumanEval, GSM8K-style; greedy, 128 output tokens):
  MAL       mean acceptance length: tokens committed per verification step, the bonus
            token included = 1 + accepted / steps, from vLLM's spec-decode counters over a
            batched run of every prompt of the set
  tokens/s  batch size 1, a few prompts one at a time; each speculative engine takes turns
            with a plain engine (plain, method, plain, method, ...); medians reported
  speedup   tokens/s over plain decoding, from the medians of the same interleaved runs

One speculative engine at a time lives beside the plain one (memory: this machine holds a
few SmolLM2 engines, not seven).

    .venv/bin/python benchmarks/eagle3_acceptance.py --head heads/smollm2-135m-eagle3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from echo_vllm.assets.models import prepare_model  # noqa: E402
from echo_vllm.assets.prompts import DATASETS, chat_messages, load_prompts  # noqa: E402

ENGINE = dict(dtype="float32", enforce_eager=True, kv_cache_memory_bytes=512 << 20,
              max_model_len=2048, disable_log_stats=False)
ECHO_TREE = {"steps": 5, "topk": 8, "num_draft_tokens": 32}  # the seed's bs 4-16 static tree


def spec_counts(llm) -> tuple[float, float]:
    metrics = {m.name: m.value for m in llm.get_metrics() if hasattr(m, "value")}
    return (metrics.get("vllm:spec_decode_num_drafts", 0.0),
            metrics.get("vllm:spec_decode_num_accepted_tokens", 0.0))


def mean_acceptance_length(llm, chats, sampling) -> float | None:
    drafts_before, accepted_before = spec_counts(llm)
    llm.chat(chats, sampling, use_tqdm=False)
    drafts, accepted = spec_counts(llm)
    steps = drafts - drafts_before
    return None if steps == 0 else 1.0 + (accepted - accepted_before) / steps


def tokens_per_second(llm, chats, sampling) -> float:
    start = time.perf_counter()
    tokens = sum(len(llm.chat([c], sampling, use_tqdm=False)[0].outputs[0].token_ids) for c in chats)
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head", required=True)
    parser.add_argument("--prompts", type=int, default=20, help="prompts per set for MAL")
    parser.add_argument("--speed-prompts", type=int, default=2, help="prompts per set timed at bs 1")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--max-k", type=int, default=5)
    parser.add_argument("--out", default="bench-out/eagle3_acceptance.json")
    args = parser.parse_args()

    from vllm import LLM, SamplingParams

    target = str(prepare_model("smollm2-135m"))
    methods = {f"eagle3 K={k}": {"method": "eagle3", "model": args.head, "num_speculative_tokens": k}
               for k in range(1, args.max_k + 1)}
    methods["echo tree 5x8/32"] = {"method": "echo", "model": args.head, **ECHO_TREE}
    sampling = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    chats = {d: [chat_messages(p) for p in load_prompts(d, limit=args.prompts)] for d in DATASETS}

    plain = LLM(model=target, **ENGINE)
    results = {d: {} for d in DATASETS}
    for name, speculative_config in methods.items():
        llm = LLM(model=target, **ENGINE, speculative_config=speculative_config)
        for dataset in DATASETS:
            speed_chats = chats[dataset][: args.speed_prompts]
            rates = {"plain": [], name: []}
            for _ in range(args.repetitions):
                rates["plain"].append(tokens_per_second(plain, speed_chats, sampling))
                rates[name].append(tokens_per_second(llm, speed_chats, sampling))
            results[dataset][name] = {
                "mal": mean_acceptance_length(llm, chats[dataset], sampling),
                "tokens_per_s": statistics.median(rates[name]),
                "tokens_per_s_runs": rates[name],
                "plain_tokens_per_s": statistics.median(rates["plain"]),
                "plain_tokens_per_s_runs": rates["plain"],
                "speedup": statistics.median(rates[name]) / statistics.median(rates["plain"]),
            }
        llm.llm_engine.engine_core.shutdown()
        del llm
    report(results, args)


def report(results: dict, args) -> None:
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"head": args.head, "args": vars(args), "results": results,
                   "date": time.strftime("%Y-%m-%d %H:%M")}, f, indent=2)
    print(f"\nSmolLM2-135M float32 CPU, head {args.head}; greedy, {args.max_tokens} tokens; MAL over "
          f"{args.prompts} prompts per set; tokens/s at bs 1 over {args.speed_prompts} prompts, "
          f"median of {args.repetitions} interleaved repetitions\n")
    names = list(next(iter(results.values())))
    print("| method | " + " | ".join(f"{d} MAL | {d} tok/s vs plain" for d in results) + " |")
    print("|---|" + "---|---|" * len(results))
    for name in names:
        cells = []
        for by_method in results.values():
            r = by_method[name]
            mal = "-" if r["mal"] is None else f"{r['mal']:.2f}"
            cells.append(f"{mal} | {r['tokens_per_s']:.1f} vs {r['plain_tokens_per_s']:.1f} ({r['speedup']:.2f}x)")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\nraw measurements: {args.out}")


if __name__ == "__main__":
    main()
