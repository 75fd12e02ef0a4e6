"""Mean acceptance length of a head on the three latency sets: vLLM's eagle3 chains at
K = 1..5 and echo's trees, as vLLM's own spec-decode counters count it.

Greedy decoding makes acceptance independent of the batch: each set's prompts run as one
batch per engine (minutes, not the bench's bs-1 hours). Acceptance only, no timing, so it may
run beside other work.

    .venv/bin/python benchmarks/acceptance_lengths.py --head heads/smollm2-135m-eagle3
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from echo_vllm.assets.models import prepare_model  # noqa: E402
from echo_vllm.assets.prompts import DATASETS, chat_messages, load_prompts  # noqa: E402
from echo_vllm.bench.offline import acceptance, spec_counts  # noqa: E402

SEED_TREE = {"steps": 5, "topk": 8, "num_draft_tokens": 32}


def methods(head: str, ks: list[int]) -> dict[str, dict]:
    configs = {f"eagle3 K={k}": {"method": "eagle3", "model": head, "num_speculative_tokens": k} for k in ks}
    configs["echo static tree 5x8, 32 nodes"] = {"method": "echo", "model": head, "policy": "static", **SEED_TREE}
    return configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head", required=True)
    parser.add_argument("--prompts", type=int, default=10, help="prompts per set")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--ks", default="1,2,3,4,5")
    parser.add_argument("--out", default="bench-out/acceptance_lengths.json")
    args = parser.parse_args()

    from vllm import LLM, SamplingParams

    target = str(prepare_model("smollm2-135m"))
    sampling = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    chats = {d: [chat_messages(p) for p in load_prompts(d, limit=args.prompts)] for d in DATASETS}
    results = {}
    for name, config in methods(args.head, [int(k) for k in args.ks.split(",")]).items():
        llm = LLM(model=target, dtype="float32", enforce_eager=True, max_model_len=2048, disable_log_stats=False,
                  kv_cache_memory_bytes=1 << 30, max_num_seqs=args.prompts, speculative_config=config)
        try:
            results[name] = {}
            for dataset, batch in chats.items():
                before = spec_counts(llm)
                llm.chat(batch, sampling, use_tqdm=False)
                results[name][dataset] = round(acceptance(before, spec_counts(llm))["mat"], 3)
        finally:
            llm.llm_engine.engine_core.shutdown()
        print(name, results[name], flush=True)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "mean_acceptance_length": results}, f, indent=2)
    print(f"\nhead {args.head}: mean acceptance length (vLLM's counters), greedy, {args.prompts} prompts per set, "
          f"{args.max_tokens} tokens\n")
    print("| method | " + " | ".join(DATASETS) + " |")
    print("|---|" + "---|" * len(DATASETS))
    for name, by_set in results.items():
        print(f"| {name} | " + " | ".join(f"{by_set[d]:.2f}" for d in DATASETS) + " |")


if __name__ == "__main__":
    main()
