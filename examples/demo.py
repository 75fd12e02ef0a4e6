"""Echo on SmolLM2-135M-Instruct with vLLM's LLM(): tokens/s with and without speculation.

Run after scripts/setup.sh (which prepares the model):  .venv/bin/python examples/demo.py

Both engines stay alive and take turns (plain, echo, plain, echo, ...) so that drift on a
shared machine hits both alike; each echo run is compared with the plain run just before it,
and the median of those ratios is reported. Two engines at
once: each holds the float32 model (0.5 GiB) and a 1 GiB KV cache (ENGINE below), sized for a
2-core, 24 GiB machine. Greedy outputs
must be identical: speculation never changes what the target would have written.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

from echo_vllm.assets.models import prepare_model  # noqa: E402
from echo_vllm.assets.prompts import load_prompts  # noqa: E402
from echo_vllm.bench.offline import paired_ratio  # noqa: E402
from echo_vllm.device import tool_dtype  # noqa: E402

# the EAGLE-3 head trained for SmolLM2 by `echo-vllm train-draft` (see its README.md)
HEAD = Path(__file__).resolve().parents[1] / "heads" / "smollm2-135m-eagle3"

ENGINE = dict(dtype=tool_dtype(), enforce_eager=True, kv_cache_memory_bytes=1 << 30,
              max_model_len=2048, disable_log_stats=False)


def timed_chat(llm, conversations, sampling) -> tuple[float, list[list[int]]]:
    """Tokens per second over the conversations, one request at a time (batch size 1)."""
    start = time.perf_counter()
    outputs = [llm.chat([c], sampling, use_tqdm=False)[0] for c in conversations]
    elapsed = time.perf_counter() - start
    tokens = [list(o.outputs[0].token_ids) for o in outputs]
    return sum(map(len, tokens)) / elapsed, tokens


def spec_counter(llm, name: str) -> float:
    return sum(m.value for m in llm.get_metrics() if m.name == f"vllm:spec_decode_{name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4, help="MT-Bench questions per repetition")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repetitions", type=int, default=3)
    args = parser.parse_args()

    from vllm import LLM, SamplingParams

    target = str(prepare_model("smollm2-135m"))
    head = str(HEAD)
    conversations = [[{"role": "user", "content": p.text}]
                     for p in load_prompts("mt_bench", limit=args.prompts)]
    sampling = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)

    plain = LLM(model=target, **ENGINE)
    echo = LLM(model=target, **ENGINE,
               speculative_config={"method": "echo", "model": head})  # ECHO, calibration beside the head
    rates = {"plain": [], "echo": []}
    outputs = {}
    for _ in range(args.repetitions):
        for name, llm in (("plain", plain), ("echo", echo)):
            rate, outputs[name] = timed_chat(llm, conversations, sampling)
            rates[name].append(rate)

    drafts, accepted = spec_counter(echo, "num_drafts"), spec_counter(echo, "num_accepted_tokens")
    print(f"\nSmolLM2-135M-Instruct, float32, CPU, batch size 1, {args.prompts} MT-Bench "
          f"questions x {args.max_tokens} tokens, {args.repetitions} repetitions interleaved")
    print(f"draft head: {head}")
    for name, values in rates.items():
        print(f"  {name:5s} median {statistics.median(values):6.1f} tokens/s "
              f"(min {min(values):.1f}, max {max(values):.1f})")
    print(f"  echo / plain: {paired_ratio(rates['echo'], rates['plain']):.2f}x (each run over the plain run before it)")
    print(f"  mean accepted tokens per step (bonus included): {1 + accepted / max(drafts, 1):.2f}")
    print(f"  greedy outputs identical: {outputs['plain'] == outputs['echo']}")
    if outputs["plain"] != outputs["echo"]:
        raise SystemExit("echo changed the greedy output: this is a bug, please report it")


if __name__ == "__main__":
    main()
