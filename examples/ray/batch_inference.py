"""Offline batch inference with echo on Ray Data: an actor pool, each actor one vLLM `LLM()`
with echo, over a dataset of prompts; answers come back complete and in input order.

This is the path when one engine is not enough for a large offline job: Ray spreads the
actors over the cluster's nodes (or, here, over the cores of one machine). Run after
scripts/setup.sh, on this machine (a local Ray instance on loopback, CPU actors):

    .venv/bin/python examples/ray/batch_inference.py --actors 2 --limit 16

`--actors 2` keeps two engines alive at once, one per actor, each with the float32 model
(0.5 GiB) and a 512 MiB KV cache: sized for a 2-core, 24 GiB machine (one core per actor).

On a GPU cluster, connect to it instead (`ray.init("auto")`), give each actor `num_gpus`
(its tensor-parallel size) instead of CPUs, and drop the CPU-only engine settings.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# the EAGLE-3 head trained for SmolLM2 by `echo-vllm train-draft`, and its Sweet-Spot calibration
HEAD = Path(__file__).resolve().parents[2] / "heads" / "smollm2-135m-eagle3"


class EchoPredictor:
    """One engine per actor; `__call__` answers a batch of prompts (greedy, max_tokens)."""

    def __init__(self, model: str, speculative_config: dict, max_tokens: int):
        from vllm import LLM, SamplingParams

        from echo_vllm.device import tool_dtype

        self.llm = LLM(model=model, dtype=tool_dtype(), enforce_eager=True, max_model_len=2048,
                       kv_cache_memory_bytes=512 << 20, speculative_config=speculative_config)
        self.sampling = SamplingParams(temperature=0.0, max_tokens=max_tokens)

    def __call__(self, batch: dict) -> dict:
        conversations = [[{"role": "user", "content": p}] for p in batch["prompt"]]
        outputs = self.llm.chat(conversations, self.sampling, use_tqdm=False)
        return {"id": batch["id"], "prompt": batch["prompt"], "answer": [o.outputs[0].text for o in outputs]}


def run(prompts: list[str], model: str, speculative_config: dict, actors: int = 2, batch_size: int = 4,
        max_tokens: int = 64) -> list[dict]:
    """Answers of `actors` echo engines on a local Ray instance, in the prompts' order."""
    import ray

    ray.init(num_cpus=actors, include_dashboard=False, ignore_reinit_error=True,
             # each actor an engine on its own core: vLLM's CPU thread binding is per process,
             # so it is left to Ray (nobind) and each engine runs one OpenMP thread
             runtime_env={"env_vars": {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1",
                                       "HF_HUB_OFFLINE": "1"}})
    try:
        ray.data.DataContext.get_current().execution_options.preserve_order = True
        dataset = ray.data.from_items([{"id": i, "prompt": p} for i, p in enumerate(prompts)])
        answers = dataset.map_batches(
            EchoPredictor, fn_constructor_kwargs={"model": model, "speculative_config": speculative_config,
                                                  "max_tokens": max_tokens},
            batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=1,
        ).take_all()
    finally:
        ray.shutdown()
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--limit", type=int, default=16, help="MT-Bench prompts to answer")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", help="also write the answers here (JSONL, in order)")
    args = parser.parse_args()

    from echo_vllm.assets.models import prepare_model
    from echo_vllm.assets.prompts import load_prompts

    prompts = [p.text for p in load_prompts("mt_bench", args.limit)]
    config = {"method": "echo", "model": str(HEAD), "calibration_file": str(HEAD / "calibration.json")}
    answers = run(prompts, str(prepare_model("smollm2-135m")), config, args.actors, max_tokens=args.max_tokens)
    for answer in answers:
        print(f"[{answer['id']}] {answer['prompt'][:60]!r} -> {answer['answer'][:80]!r}")
    if args.out:
        with open(args.out, "w") as f:
            for answer in answers:
                f.write(json.dumps({key: answer[key] for key in ("id", "prompt", "answer")}, default=int) + "\n")


if __name__ == "__main__":
    main()
