"""Self-distillation data for a draft head: the target's own responses and hidden states.

1. `generate_responses`: the target answers the training prompts (vLLM, batched, greedy:
   the regime echo serves and is benchmarked in), appended chunk by chunk to a JSONL file so
   that an interrupted run resumes where it stopped.
   `answered_samples` instead takes conversations whose answers a dataset gives (tokenized
   with the target's chat template): no generation, and the target still labels every
   position through its distribution, captured next.
2. `capture_features`: one transformers forward pass per sequence over prompt + response (in
   bfloat16 by default: 1.6x faster than float32 here), keeping the hidden states of the
   layers the head taps (vLLM's aux layer id L = the input of layer L = transformers'
   hidden_states[L]) and the target's TEACHER_TOPK most likely next tokens with their
   probabilities at every position, stored in shards, also resumable.
3. `draft_vocabulary`: the most frequent response tokens, with EAGLE-3's d2t / t2d maps.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm


# the target's most likely next tokens kept per position: the distillation target
TEACHER_TOPK = 16


@dataclass(frozen=True)
class Sample:
    prompt_ids: list[int]
    response_ids: list[int]


def read_samples(path: Path) -> list[Sample]:
    if not path.exists():
        return []
    samples = []
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            samples.append(Sample(row["prompt_ids"], row["response_ids"]))
    return samples


def generate_responses(
    target: str, prompts: list[str], max_new_tokens: int, path: Path, chunk: int = 256
) -> list[Sample]:
    """Greedy responses of the target to `prompts` (chat template applied), saved to `path`.

    Resumes: prompts already answered in `path` (a prefix of `prompts`) are not asked again.
    """
    done = read_samples(path)
    todo = prompts[len(done):]
    if not todo:
        return done
    from vllm import LLM, SamplingParams

    from echo_vllm.assets.models import context_length
    from echo_vllm.device import tool_dtype

    with _every_core_bound():
        llm = LLM(model=target, dtype=tool_dtype(), enforce_eager=True, max_model_len=context_length(target, 2048),
                  kv_cache_memory_bytes=4 << 30, max_num_seqs=256, max_num_batched_tokens=8192)
    sampling = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
    try:
        with open(path, "a") as f, tqdm(total=len(prompts), initial=len(done), desc="generate", unit="prompt") as bar:
            for start in range(0, len(todo), chunk):
                batch = [[{"role": "user", "content": p}] for p in todo[start:start + chunk]]
                for out in llm.chat(batch, sampling, use_tqdm=False):
                    sample = Sample(list(out.prompt_token_ids), list(out.outputs[0].token_ids))
                    f.write(json.dumps({"prompt_ids": sample.prompt_ids, "response_ids": sample.response_ids}) + "\n")
                    done.append(sample)
                f.flush()
                bar.update(len(batch))
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
    return done


def answered_samples(target: str, exchanges) -> list[Sample]:
    """Conversations answered by a dataset (`exchanges`: .prompt, .answer) as samples: the
    prompt under the target's chat template, the answer closed by its end-of-turn token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(target)
    samples = []
    for exchange in exchanges:
        prompt_ids = tokenizer.apply_chat_template([{"role": "user", "content": exchange.prompt}],
                                                   add_generation_prompt=True, tokenize=True)
        if not isinstance(prompt_ids, list):  # newer tokenizers return an encoding
            prompt_ids = prompt_ids["input_ids"]
        answer_ids = tokenizer(exchange.answer, add_special_tokens=False)["input_ids"]
        samples.append(Sample(list(prompt_ids), answer_ids + [tokenizer.eos_token_id]))
    return samples


@contextmanager
def _every_core_bound():
    """While an engine starts (its worker reads the binding then): vLLM's CPU backend keeps
    a core for its front end unless told otherwise; an offline generation job has little
    front-end work, so its worker gets every core (twice the tokens/s on a 2-core machine)
    unless the user chose a binding."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu() or "VLLM_CPU_OMP_THREADS_BIND" in os.environ:
        yield
        return
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    try:
        yield
    finally:
        del os.environ["VLLM_CPU_OMP_THREADS_BIND"]


def _shard_path(directory: Path, index: int) -> Path:
    return directory / f"features_{index:05d}.safetensors"


def capture_features(
    target: str, samples: list[Sample], layer_ids: tuple[int, ...], directory: Path,
    dtype: torch.dtype = torch.bfloat16, shard_size: int = 64, max_len: int = 1024,
) -> list[Path]:
    """Hidden states of `layer_ids` and the target's top-k next tokens for every sample
    (truncated to max_len tokens), the target run in `dtype`.

    Each shard holds `shard_size` samples: tokens [N] int64, features [N, len(layer_ids)*H]
    bf16, teacher_ids [N, TEACHER_TOPK] int32 and teacher_probs [N, TEACHER_TOPK] float16 (the
    target's next-token distribution at each position, its most likely tokens first),
    offsets [n + 1] and prompt_lens [n]. Existing shards are kept (resume).
    """
    from transformers import AutoModelForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    paths = [_shard_path(directory, i) for i in range(-(-len(samples) // shard_size))]
    missing = [i for i, p in enumerate(paths) if not p.exists()]
    if not missing:
        return paths
    model = AutoModelForCausalLM.from_pretrained(target, dtype=dtype).eval()
    with torch.inference_mode():
        for index in tqdm(missing, desc="capture hidden states", unit="shard"):
            shard = samples[index * shard_size:(index + 1) * shard_size]
            sequences = [(s.prompt_ids + s.response_ids)[:max_len] for s in shard]
            captured = [hidden_states_and_teacher(model, seq, layer_ids) for seq in sequences]
            lengths = torch.tensor([len(seq) for seq in sequences])
            tmp = paths[index].with_suffix(".tmp")
            save_file({
                "tokens": torch.tensor([t for seq in sequences for t in seq], dtype=torch.int64),
                "features": torch.cat([features for features, _, _ in captured]).to(torch.bfloat16),
                "teacher_ids": torch.cat([ids for _, ids, _ in captured]).to(torch.int32),
                "teacher_probs": torch.cat([probs for _, _, probs in captured]).to(torch.float16),
                "offsets": torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]),
                "prompt_lens": torch.tensor([min(len(s.prompt_ids), max_len) for s in shard]),
            }, tmp)
            os.replace(tmp, paths[index])
    return paths


def hidden_states_and_teacher(causal_lm, sequence: list[int], layer_ids: tuple[int, ...]):
    """One forward pass of a transformers causal LM over `sequence`: the concatenated hidden
    states of `layer_ids` [T, len(ids)*H], and the TEACHER_TOPK most likely next tokens [T, k]
    with their probabilities [T, k] at every position."""
    out = causal_lm(torch.tensor([sequence]), output_hidden_states=True)
    features = torch.cat([out.hidden_states[i][0] for i in layer_ids], dim=-1)
    probs, ids = out.logits[0].float().softmax(-1).topk(TEACHER_TOPK, dim=-1)
    return features, ids, probs


@dataclass(frozen=True)
class Sequences:
    """All captured sequences, concatenated. n sequences, N tokens."""

    tokens: torch.Tensor  # [N] int64
    features: torch.Tensor  # [N, F] bf16
    teacher_ids: torch.Tensor  # [N, k] int32: the target's most likely next tokens, best first
    teacher_probs: torch.Tensor  # [N, k] float16: their probabilities
    offsets: torch.Tensor  # [n + 1]
    prompt_lens: torch.Tensor  # [n]

    def __len__(self) -> int:
        return len(self.prompt_lens)

    def subset(self, indices: list[int]) -> "Sequences":
        """The sequences `indices`, concatenated in that order."""
        spans = [(int(self.offsets[i]), int(self.offsets[i + 1])) for i in indices]
        rows = torch.cat([torch.arange(start, end) for start, end in spans])
        lengths = torch.tensor([end - start for start, end in spans])
        return Sequences(self.tokens[rows], self.features[rows], self.teacher_ids[rows], self.teacher_probs[rows],
                         torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]),
                         self.prompt_lens[indices])


def concatenate(parts: list[Sequences]) -> Sequences:
    offsets, total = [torch.zeros(1, dtype=torch.int64)], 0
    for part in parts:
        offsets.append(part.offsets[1:] + total)
        total += int(part.offsets[-1])
    return Sequences(*(torch.cat([getattr(p, field) for p in parts])
                       for field in ("tokens", "features", "teacher_ids", "teacher_probs")),
                     torch.cat(offsets), torch.cat([p.prompt_lens for p in parts]))


def load_sequences(paths: list[Path]) -> Sequences:
    return concatenate([Sequences(**load_file(p)) for p in paths])


def draft_vocabulary(samples: list[Sample], vocab_size: int, draft_vocab_size: int):
    """The draft_vocab_size most frequent response tokens, in increasing id order.

    Returns (d2t [Vd] int64: target id - draft id, EAGLE-3's offsets; t2d [V] bool: which
    target ids are in the draft vocabulary; coverage: share of response tokens covered).
    """
    counts = torch.zeros(vocab_size, dtype=torch.int64)
    for sample in samples:
        counts += torch.bincount(torch.tensor(sample.response_ids, dtype=torch.int64), minlength=vocab_size)
    chosen = counts.topk(draft_vocab_size).indices.sort().values
    t2d = torch.zeros(vocab_size, dtype=torch.bool)
    t2d[chosen] = True
    coverage = float(counts[chosen].sum()) / max(int(counts.sum()), 1)
    return chosen - torch.arange(draft_vocab_size), t2d, coverage
