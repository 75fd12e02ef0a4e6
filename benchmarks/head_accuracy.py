"""How often a draft head's greedy guess is the target's next token, on the benchmark sets,
measured offline: what vLLM's acceptance should be, without vLLM's speculative path.

Per prompt set (MT-Bench, HumanEval, GSM8K-style): the target answers (vLLM, greedy, 128
tokens); one transformers pass captures its hidden states; the head, unrolled as in training
(fed its own hidden states, the true tokens as input), guesses every response token at depths
1..3. Top-1 at depth 1 is the per-step acceptance rate a K = 1 chain should see in vLLM (a
token outside the draft vocabulary counts as a miss); a large gap between the two points at a
train / inference mismatch, while a gap between these figures and the card's validation
accuracy measures how far the head generalizes beyond its training prompts.

    .venv/bin/python benchmarks/head_accuracy.py --head heads/smollm2-135m-eagle3
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from echo_vllm.assets.models import prepare_model  # noqa: E402
from echo_vllm.assets.prompts import DATASETS, chat_messages, load_prompts  # noqa: E402
from echo_vllm.training.data import hidden_states_and_teacher  # noqa: E402
from echo_vllm.training.pipeline import load_head  # noqa: E402


def responses(target: str, num_prompts: int, max_tokens: int) -> dict[str, list[tuple[list[int], list[int]]]]:
    from vllm import LLM, SamplingParams

    llm = LLM(model=target, dtype="float32", enforce_eager=True, kv_cache_memory_bytes=512 << 20, max_model_len=2048)
    sampling = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    out = {}
    for dataset in DATASETS:
        chats = [chat_messages(p) for p in load_prompts(dataset, limit=num_prompts)]
        out[dataset] = [(list(o.prompt_token_ids), list(o.outputs[0].token_ids))
                        for o in llm.chat(chats, sampling, use_tqdm=False)]
    llm.llm_engine.engine_core.shutdown()
    return out


def captured_features(model, layer_ids, samples) -> list[torch.Tensor]:
    """The target's hidden states over each (prompt, response), float32 as served."""
    with torch.inference_mode():
        return [hidden_states_and_teacher(model, prompt + response, layer_ids)[0] for prompt, response in samples]


def top1_by_depth(head, d2t, samples, features, depths: int) -> list[float]:
    """Share of response tokens the head guesses at each depth (row t at depth j+1 guesses
    token t+2+j)."""
    correct, counted = [0] * depths, [0] * depths
    with torch.inference_mode():
        for (prompt, response), sample_features in zip(samples, features):
            sequence = torch.tensor(prompt + response)
            for step, logits in enumerate(head(sample_features[None], sequence[None], depths)):
                guess = logits[0].argmax(-1)
                guess = guess + d2t[guess]  # draft ids -> target ids
                rows = torch.arange(max(len(prompt) - 2 - step, 0), len(sequence) - 2 - step)
                correct[step] += int((guess[rows] == sequence[rows + 2 + step]).sum())
                counted[step] += len(rows)
    return [round(c / max(n, 1), 4) for c, n in zip(correct, counted)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head", required=True, action="append",
                        help="a head directory; repeat to compare heads on the same responses")
    parser.add_argument("--prompts", type=int, default=30, help="prompts per set")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--depths", type=int, default=3)
    parser.add_argument("--record", action="store_true",
                        help="also write each head's figures into its training.json and card")
    parser.add_argument("--out", default="bench-out/head_accuracy.json")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM

    target = str(prepare_model("smollm2-135m"))
    samples = responses(target, args.prompts, args.max_tokens)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).eval()
    features, results = {}, {}
    for head_dir in args.head:
        head, d2t = load_head(head_dir, target)
        layer_ids = tuple(head.config["eagle_config"]["eagle_aux_hidden_state_layer_ids"])
        for dataset in DATASETS:
            if (dataset, layer_ids) not in features:
                features[dataset, layer_ids] = captured_features(model, layer_ids, samples[dataset])
        results[head_dir] = {d: top1_by_depth(head, d2t, samples[d], features[d, layer_ids], args.depths)
                             for d in DATASETS}
        if args.record:
            record(head_dir, results[head_dir], args)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "top1_by_depth": results}, f, indent=2)
    for head_dir, by_set in results.items():
        card = json.loads(open(os.path.join(head_dir, "training.json")).read())["history"][-1]["val_top1_by_depth"]
        print(f"\nhead {head_dir}: top-1 by depth, greedy responses of {args.prompts} prompts per set\n")
        print("| prompts | " + " | ".join(f"depth {d + 1}" for d in range(args.depths)) + " |")
        print("|---|" + "---|" * args.depths)
        for dataset, accuracy in by_set.items():
            print(f"| {dataset} | " + " | ".join(f"{a:.3f}" for a in accuracy) + " |")
        print("| training validation split (card) | " + " | ".join(f"{a:.3f}" for a in card) + " |")


def record(head_dir: str, by_set: dict, args) -> None:
    """The figures into the head's training.json, and its card re-written from it."""
    from pathlib import Path

    from echo_vllm.training.pipeline import export_summary

    path = Path(head_dir) / "training.json"
    summary = json.loads(path.read_text())
    summary["benchmark_top1_by_depth"] = {"prompts_per_set": args.prompts, "max_tokens": args.max_tokens,
                                          "by_set": by_set}
    export_summary(Path(head_dir), summary)


if __name__ == "__main__":
    main()
