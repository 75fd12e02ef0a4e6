"""`echo-vllm train-draft`: prompts -> target responses -> hidden states -> trained head.

Besides the prompts the target answers, `answered` ShareGPT conversations may be added with
the dataset's own answers: they cost no generation, and the head still learns the target's
distribution at each of their positions (the default loss, "kl").

Every stage keeps its results in a work directory (default
$ECHO_VLLM_CACHE/training/<output name>) and skips what is already there, so an interrupted
run started again with the same command resumes; other settings in the same work directory
are refused rather than mixed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import psutil
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from echo_vllm.assets.models import cache_dir
from echo_vllm.draft_head import default_aux_layer_ids, head_config
from echo_vllm.training.data import (
    TEACHER_TOPK,
    answered_samples,
    capture_features,
    draft_vocabulary,
    generate_responses,
    load_sequences,
)
from echo_vllm.training.head import Eagle3Head
from echo_vllm.training.prompt_pool import answered_exchanges, training_prompts
from echo_vllm.training.train import TrainConfig, train

# bytes of features per token (three bf16 hidden states) times a generous tokens-per-prompt
FEATURE_BYTES_PER_PROMPT = 3 * 2 * 1024
CAPTURE_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def read_target(target: str) -> dict:
    path = Path(target)
    if not (path / "config.json").is_file():
        raise ValueError(f"echo-vllm: target directory {target!r} has no config.json (prepare it first, "
                         "e.g. echo-vllm prepare-model smollm2-135m)")
    if not any(path.glob("*.safetensors")):
        raise ValueError(f"echo-vllm: target directory {target!r} has no *.safetensors weights")
    return json.loads((path / "config.json").read_text())


def target_embedding(target: str) -> torch.Tensor:
    for file in sorted(Path(target).glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            if "model.embed_tokens.weight" in f.keys():
                return f.get_tensor("model.embed_tokens.weight").float()
    raise ValueError(f"echo-vllm: no model.embed_tokens.weight in {target!r}")


def prepare_work_dir(work: Path, settings: dict, num_prompts: int, hidden_size: int) -> None:
    """Refuse a work directory holding another run's data, and a disk too full for ours."""
    work.mkdir(parents=True, exist_ok=True)
    recorded = work / "settings.json"
    if recorded.exists():
        previous = json.loads(recorded.read_text())
        if previous != settings:
            changed = sorted(k for k in settings if previous.get(k) != settings[k])
            raise ValueError(f"echo-vllm: work directory {work} holds data made with other settings "
                             f"({', '.join(changed)}); resume with the same settings or pass another --work-dir")
    recorded.write_text(json.dumps(settings, indent=2))
    needed = num_prompts * FEATURE_BYTES_PER_PROMPT * hidden_size
    free = shutil.disk_usage(work).free
    if free < needed:
        raise RuntimeError(f"echo-vllm: {work} has {free / 2**30:.1f} GiB free; hidden states need up to "
                           f"{needed / 2**30:.1f} GiB: free space or pass another --work-dir")


def train_draft(target: str, out: str, num_prompts: int, max_new_tokens: int, draft_vocab_size: int,
                train_config: TrainConfig, work_dir: str | None = None, answered: int = 0,
                capture_precision: str = "bf16") -> dict:
    """Build the head for `target` into `out` (vLLM's eagle3 / echo load it). Returns the summary."""
    if capture_precision not in CAPTURE_DTYPES:
        raise ValueError(f"echo-vllm: capture precision {capture_precision!r} is not one of {list(CAPTURE_DTYPES)}")
    with ProcessTreeMemory() as memory:
        summary = _train_draft(target, out, num_prompts, max_new_tokens, draft_vocab_size, train_config, work_dir,
                               answered, capture_precision)
    summary["peak_rss_gib"] = round(memory.peak_bytes / 2**30, 2)
    export_summary(Path(out), summary)
    return summary


def _train_draft(target: str, out: str, num_prompts: int, max_new_tokens: int, draft_vocab_size: int,
                 train_config: TrainConfig, work_dir: str | None, answered: int, capture_precision: str) -> dict:
    started = time.time()
    target_config = read_target(target)
    layer_ids = default_aux_layer_ids(target_config["num_hidden_layers"])
    work = Path(work_dir) if work_dir else cache_dir() / "training" / Path(out).resolve().name
    # what the data depends on; training settings only name the checkpoint, so the same data
    # can be trained on again with other settings
    prompts = training_prompts(num_prompts, seed=train_config.seed)
    data_settings = {"target": str(Path(target).resolve()), "num_prompts": num_prompts,
                     "prompts_sha256": hashlib.sha256(json.dumps(prompts).encode()).hexdigest(),
                     "max_new_tokens": max_new_tokens, "aux_layer_ids": list(layer_ids),
                     "seed": train_config.seed, "answered": answered, "capture_precision": capture_precision,
                     "teacher_topk": TEACHER_TOPK}
    prepare_work_dir(work, data_settings, num_prompts + answered, target_config["hidden_size"])
    train_settings = json.dumps({"draft_vocab_size": draft_vocab_size, **asdict(train_config)}, sort_keys=True)
    checkpoint = work / f"checkpoint-{hashlib.sha256(train_settings.encode()).hexdigest()[:12]}.pt"

    resumed = (work / "responses.jsonl").exists() or checkpoint.exists()
    phase_started = time.time()
    samples = generate_responses(target, prompts, max_new_tokens, work / "responses.jsonl")
    phase_seconds = {"generate": round(time.time() - phase_started)}
    phase_started = time.time()
    dtype = CAPTURE_DTYPES[capture_precision]
    shards = capture_features(target, samples, layer_ids, work / "features", dtype)
    if answered:
        answered_data = answered_samples(target, answered_exchanges(answered, prompts, seed=train_config.seed))
        shards += capture_features(target, answered_data, layer_ids, work / "answered_features", dtype)
    phase_seconds["capture"] = round(time.time() - phase_started)
    d2t, t2d, t2d_index, coverage = vocabulary_maps(samples, target_config["vocab_size"], draft_vocab_size)

    config = head_config(target_config, draft_vocab_size, layer_ids)
    torch.manual_seed(train_config.seed)
    head = Eagle3Head(config, target_embedding(target))
    data = load_sequences(shards)
    phase_started = time.time()
    summary = train(head, data, t2d_index, train_config, checkpoint)
    phase_seconds["train"] = round(time.time() - phase_started)
    phase_seconds = accumulated_phase_seconds(work / "phase_seconds.json", phase_seconds, checkpoint.stem)
    summary.update({
        "command": recorded_command(),
        "target": Path(target).name,
        "prompts": len(samples),
        "response_tokens": sum(len(s.response_ids) for s in samples),
        "answered": answered,
        "capture_precision": capture_precision,
        "sequence_tokens": int(data.offsets[-1]),
        "draft_vocab_size": draft_vocab_size,
        "draft_vocab_coverage": round(coverage, 4),
        "train_config": asdict(train_config),
        "wall_time_s": round(time.time() - started),
        "phase_seconds": phase_seconds,
        "compute_time_s": sum(phase_seconds.values()),
        "resumed_earlier_work": resumed,
    })
    export_head(head, config, d2t, t2d, Path(out))
    return summary


def recorded_command() -> str | None:
    """The echo-vllm command line for the card, this machine's cache directory written as
    $ECHO_VLLM_CACHE (a card names no local path); None when not run from the command line."""
    if not sys.argv[0].endswith("echo-vllm"):
        return None
    return " ".join(["echo-vllm", *sys.argv[1:]]).replace(str(cache_dir()), "$ECHO_VLLM_CACHE")


def vocabulary_maps(samples, vocab_size: int, draft_vocab_size: int):
    """The draft vocabulary of `samples`' responses (the target's own outputs: what it will
    draft): d2t, t2d, t2d_index (target id -> draft id, -100 outside) and the coverage."""
    d2t, t2d, coverage = draft_vocabulary(samples, vocab_size, draft_vocab_size)
    t2d_index = torch.full((vocab_size,), -100, dtype=torch.int64)
    t2d_index[t2d] = torch.arange(draft_vocab_size)
    return d2t, t2d, t2d_index, coverage


def accumulated_phase_seconds(path: Path, this_run: dict, checkpoint_name: str) -> dict:
    """Each phase's seconds summed over every run that worked on it (an interrupted run's
    work is kept, so its time counts). Training is counted per checkpoint: other training
    settings on the same data start their own."""
    totals = json.loads(path.read_text()) if path.exists() else {}
    keys = {"generate": "generate", "capture": "capture", "train": f"train {checkpoint_name}"}
    for phase, key in keys.items():
        totals[key] = totals.get(key, 0) + this_run[phase]
    path.write_text(json.dumps(totals, indent=2))
    return {phase: totals[key] for phase, key in keys.items()}


def export_head(head: Eagle3Head, config: dict, d2t: torch.Tensor, t2d: torch.Tensor, out: Path) -> None:
    """The head in vLLM's EAGLE-3 checkpoint layout (bf16 weights)."""
    out.mkdir(parents=True, exist_ok=True)
    tensors = {name: value.detach().to(torch.bfloat16).contiguous() for name, value in head.state_dict().items()}
    tensors["d2t"], tensors["t2d"] = d2t, t2d
    save_file(tensors, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(config, indent=2))


def load_head(path: str, target: str) -> tuple[Eagle3Head, torch.Tensor]:
    """An exported head as a torch module (float32) and its d2t map: export_head's inverse."""
    config = json.loads((Path(path) / "config.json").read_text())
    head = Eagle3Head(config, target_embedding(target))
    tensors = load_file(Path(path) / "model.safetensors")
    d2t = tensors.pop("d2t")
    tensors.pop("t2d")
    head.load_state_dict({name: value.float() for name, value in tensors.items()})
    return head.eval(), d2t


def export_summary(out: Path, summary: dict) -> None:
    """training.json and the card written from it, beside the head."""
    (out / "training.json").write_text(json.dumps(summary, indent=2))
    (out / "README.md").write_text(model_card(json.loads((out / "config.json").read_text()), summary))


def model_card(config: dict, summary: dict) -> str:
    """The head's card, written from its training summary (nothing typed by hand)."""
    final = summary["history"][-1]
    depths = ", ".join(f"depth {d + 1}: {a:.3f}" for d, a in enumerate(final["val_top1_by_depth"]))
    train = summary["train_config"]
    phases = summary["phase_seconds"]
    return f"""# EAGLE-3 head for {summary['target']}

Produced by `echo-vllm train-draft` (echo-vllm), written by it with this card:

    {summary['command']}

- Architecture: one Llama decoder layer (hidden {config['hidden_size']}, {config['num_attention_heads']} heads /
  {config['num_key_value_heads']} KV heads), `fc` over the target's hidden states at layers
  {config['eagle_config']['eagle_aux_hidden_state_layer_ids']}, draft vocabulary of {summary['draft_vocab_size']} tokens
  (covering {summary['draft_vocab_coverage']:.1%} of the training responses' tokens), bf16 weights. Loads with vLLM's
  `eagle3` method and with echo.
- Data: {summary['prompts']} training prompts (reasoning-gym tasks, Python standard-library code prompts,
  instruction templates, ShareGPT user turns; none from the benchmark sets), the target's greedy responses:
  {summary['response_tokens']} response tokens; {answered_line(summary)}{summary['sequence_tokens']} tokens in all
  with the prompts; {summary['train_sequences']} sequences for training, {summary['val_sequences']} held out. The
  target's top-{TEACHER_TOPK} next-token distribution captured at every position, the target run in
  {summary['capture_precision']}.
- Training: loss {train['loss']} ({LOSS_NAMES[train['loss']]}), {train['precision']} matrix products,
  {train['epochs']} epochs, {summary['optimizer_steps']} optimizer steps, training-time test over
  {train['ttt_steps']} steps, AdamW lr {train['lr']}, warm-up {train['warmup_fraction']:.0%} then cosine, gradient
  clipping {train['grad_clip']}, {train['batch_tokens']} padded tokens per batch, seed {train['seed']}.
- Validation top-1 accuracy by draft depth (the head fed its own hidden states): {depths};
  validation loss {final['val_loss']}.
- Compute time {summary['compute_time_s']} s on a 2-core CPU, every run that worked on this head counted
  (generation {phases['generate']} s, hidden states {phases['capture']} s, training {phases['train']} s); wall time
  {summary['wall_time_s']} s for {"the last run, which resumed earlier work" if summary['resumed_earlier_work']
  else "the whole command"}; peak resident memory {summary['peak_rss_gib']} GiB (this process and the vLLM
  engine's processes together, sampled every second).
{benchmark_lines(summary)}"""


LOSS_NAMES = {"kl": "to the target's distribution over the draft vocabulary",
              "hard": "to the target's most likely token"}


def benchmark_lines(summary: dict) -> str:
    """The accuracy on the benchmark sets, once benchmarks/head_accuracy.py --record wrote it."""
    measured = summary.get("benchmark_top1_by_depth")
    if not measured:
        return ""
    rows = "\n".join(f"  - {name}: " + ", ".join(f"depth {d + 1}: {a:.3f}" for d, a in enumerate(accuracy))
                     for name, accuracy in measured["by_set"].items())
    return (f"- Top-1 by depth on the benchmark sets (`benchmarks/head_accuracy.py --record`: the target's "
            f"greedy responses to {measured['prompts_per_set']} prompts per set, {measured['max_tokens']} "
            f"tokens):\n{rows}\n")


def answered_line(summary: dict) -> str:
    if not summary["answered"]:
        return ""
    return f"{summary['answered']} ShareGPT conversations with the dataset's answers; "


class ProcessTreeMemory:
    """Peak resident memory of this process and every process it starts (vLLM's engine core
    and worker), summed, sampled every `interval` seconds by a background thread. getrusage
    cannot do this: it never sees an engine worker that its own parent did not wait for."""

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> "ProcessTreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        me = psutil.Process()
        while True:
            total = 0
            for process in [me, *me.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.NoSuchProcess:
                    pass  # ended between listing and reading
            self.peak_bytes = max(self.peak_bytes, total)
            if self._stop.wait(self.interval):
                return
