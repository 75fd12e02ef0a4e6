"""Offline batch inference with echo through vLLM's LLM(): a file of prompts in, a JSONL file of
answers out, in order.

Run after scripts/setup.sh (which prepares SmolLM2-135M-Instruct):

    .venv/bin/python examples/offline_batch.py --prompts prompts.txt --out answers.jsonl

With no --prompts, the 80 MT-Bench questions are used. Echo decides per batch how much to
speculate (its `auto` budget): with many prompts in flight it drafts little or nothing, and a
single long request gets the trees. The answers are what the target alone would write.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# the EAGLE-3 head trained for SmolLM2 by `echo-vllm train-draft`, and its Sweet-Spot calibration
HEAD = Path(__file__).resolve().parents[1] / "heads" / "smollm2-135m-eagle3"


def read_prompts(path: str | None) -> list[str]:
    if path is None:
        from echo_vllm.assets.prompts import load_prompts

        return [p.text for p in load_prompts("mt_bench")]
    prompts = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not prompts:
        raise SystemExit(f"{path}: no prompts (one per line)")
    return prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", help="a text file, one prompt per line (default: MT-Bench)")
    parser.add_argument("--out", default="answers.jsonl")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--limit", type=int, help="only the first N prompts")
    args = parser.parse_args()

    from vllm import LLM, SamplingParams

    from echo_vllm.assets.models import prepare_model
    from echo_vllm.device import tool_dtype

    prompts = read_prompts(args.prompts)[: args.limit]
    llm = LLM(
        model=str(prepare_model("smollm2-135m")),
        dtype=tool_dtype(),  # float32 on CPU (bf16 dies there), the model's dtype on a GPU
        enforce_eager=True,
        max_model_len=2048,
        kv_cache_memory_bytes=1 << 30,
        speculative_config={
            "method": "echo",
            "model": str(HEAD),
            "calibration_file": str(HEAD / "calibration.json"),
        },
    )
    conversations = [[{"role": "user", "content": p}] for p in prompts]
    outputs = llm.chat(conversations, SamplingParams(temperature=0.0, max_tokens=args.max_tokens))
    with open(args.out, "w") as f:
        for prompt, output in zip(prompts, outputs):
            f.write(json.dumps({"prompt": prompt, "answer": output.outputs[0].text}) + "\n")
    print(f"{len(outputs)} answers written to {args.out}")


if __name__ == "__main__":
    main()
