"""Training recipes side by side on the same captured data: which makes the better head.

Reads a `echo-vllm train-draft` work directory (its responses, `features/` and, when the run
had `--answered`, `answered_features/`) and trains one head per recipe, in turn, on the same
machine. A recipe is a name and TrainConfig fields, plus two data choices:

    sequences=N   the first N self-distilled sequences only (default: all)
    answered=1    add the ShareGPT sequences with the dataset's answers (default 0)

Every recipe is validated on the same held-out self-distilled sequences (the last
--val-sequences of them; never trained on), so their validation top-1 compares directly.
Training tokens/s is reported per recipe. Each head is written to OUT/NAME, loadable by vLLM,
for benchmarks/head_accuracy.py to judge on the benchmark sets:

    .venv/bin/python benchmarks/train_recipes.py --work-dir WORK --out bench-out/recipes \\
        --recipe fp32:precision=fp32,epochs=1 --recipe bf16:precision=bf16,epochs=1
    .venv/bin/python benchmarks/head_accuracy.py --head bench-out/recipes/fp32 --head bench-out/recipes/bf16
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from echo_vllm.assets.models import prepare_model  # noqa: E402
from echo_vllm.draft_head import default_aux_layer_ids, head_config  # noqa: E402
from echo_vllm.training.data import concatenate, load_sequences, read_samples  # noqa: E402
from echo_vllm.training.head import Eagle3Head  # noqa: E402
from echo_vllm.training.pipeline import export_head, read_target, target_embedding, vocabulary_maps  # noqa: E402
from echo_vllm.training.train import TrainConfig, evaluate, train  # noqa: E402

DATA_CHOICES = {"sequences": 0, "answered": 0}


def parse_recipe(text: str) -> tuple[str, TrainConfig, dict]:
    """'name:key=value,...' -> (name, TrainConfig, data choices)."""
    name, _, fields = text.partition(":")
    types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    config, data = {}, dict(DATA_CHOICES)
    for item in filter(None, fields.split(",")):
        key, _, value = item.partition("=")
        if key in data:
            data[key] = int(value)
        elif key in types:
            config[key] = {"int": int, "float": float, "str": str}[types[key]](value)
        else:
            raise SystemExit(f"recipe {name!r}: unknown field {key!r}; TrainConfig fields: {sorted(types)}, "
                             f"data choices: {sorted(data)}")
    return name, TrainConfig(**config), data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", required=True, help="a train-draft work directory")
    parser.add_argument("--recipe", action="append", required=True, help="NAME:field=value,...")
    parser.add_argument("--draft-vocab-size", type=int, default=4096)
    parser.add_argument("--val-sequences", type=int, default=120, help="held-out self-distilled sequences")
    parser.add_argument("--out", default="bench-out/recipes")
    args = parser.parse_args()

    work = Path(args.work_dir)
    target = str(prepare_model("smollm2-135m"))
    target_config = read_target(target)
    layer_ids = default_aux_layer_ids(target_config["num_hidden_layers"])
    samples = read_samples(work / "responses.jsonl")
    d2t, t2d, t2d_index, _ = vocabulary_maps(samples, target_config["vocab_size"], args.draft_vocab_size)
    own = load_sequences(sorted((work / "features").glob("*.safetensors")))
    answered_paths = sorted((work / "answered_features").glob("*.safetensors"))
    answered = load_sequences(answered_paths) if answered_paths else None
    val = own.subset(list(range(len(own) - args.val_sequences, len(own))))
    trainable = len(own) - args.val_sequences
    results = {}
    for recipe in args.recipe:
        name, config, choices = parse_recipe(recipe)
        parts = [own.subset(list(range(choices["sequences"] or trainable)))]
        if choices["answered"]:
            if answered is None:
                raise SystemExit(f"recipe {name!r} asks for answered data; {work} has none (train-draft --answered)")
            parts.append(answered)
        data = concatenate(parts)
        # train() holds out its own val_fraction: here the shared `val` judges instead
        config = dataclasses.replace(config, val_fraction=1e-9)
        torch.manual_seed(config.seed)
        head = Eagle3Head(head_config(target_config, args.draft_vocab_size, layer_ids), target_embedding(target))
        out = Path(args.out) / name
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        summary = train(head, data, t2d_index, config, out / "checkpoint.pt")
        seconds = time.perf_counter() - started
        epochs_tokens = int(data.offsets[-1]) * config.epochs
        judged = evaluate(head, val, list(range(len(val))), t2d_index, config)
        results[name] = {"recipe": recipe, "sequences": len(data), "tokens": int(data.offsets[-1]),
                         "train_seconds": round(seconds), "train_tokens_per_s": round(epochs_tokens / seconds),
                         **judged}
        export_head(head, head.config, d2t, t2d, out)
        (out / "training.json").write_text(json.dumps({**summary, "history": [*summary["history"][:-1], {
            **summary["history"][-1], **judged}], "recipe": results[name]}, indent=2))
        (out / "checkpoint.pt").unlink()
        print(name, results[name], flush=True)
    (Path(args.out) / "recipes.json").write_text(json.dumps(results, indent=2))
    print("\n| recipe | sequences | tokens | train tokens/s | val loss | val top-1 by depth |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['sequences']} | {r['tokens']} | {r['train_tokens_per_s']} | {r['val_loss']} | "
              + " / ".join(f"{a:.3f}" for a in r["val_top1_by_depth"]) + " |")


if __name__ == "__main__":
    main()
