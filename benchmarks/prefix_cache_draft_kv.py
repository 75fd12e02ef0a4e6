"""Does echo accept less on a prefix-cache hit whose blocks never got their draft KV?

A step echo does not draft owes its rows' draft KV, written by the request's next drafted
step (core/owed_kv.py). A request that never drafts (a full batch) leaves its prompt's blocks
in the prefix cache with the draft layer's slots unwritten, and a later request that hits
those blocks drafts on that draft KV. One echo engine (the committed head and calibration,
prefix caching on) decodes the same MT-Bench prompts one at a time (64 tokens, greedy) four
times: on a cold cache; on hits on the blocks the first run drafted; on hits on blocks
written by undrafted steps, the draft layer's KV cache then zeroed; on a cold cache again.
Reported: echo's mean acceptance length (MAT) over each run's verified trees.

    .venv/bin/python benchmarks/prefix_cache_draft_kv.py [--prompts 12]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # the decision and the cache are reached by collective_rpc

from echo_vllm.assets.models import model_dir  # noqa: E402
from echo_vllm.assets.prompts import chat_messages, load_prompts  # noqa: E402
from echo_vllm.bench.offline import echo_counts  # noqa: E402

HEAD = "heads/smollm2-135m-eagle3"


def set_forced_choice(worker, value) -> None:
    worker.model_runner.echo_policy.forced_choice = value


def zero_draft_kv(worker) -> None:
    worker.model_runner.drafter._draft_attn_layer().kv_cache.zero_()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=12)
    args = parser.parse_args()

    from vllm import LLM, SamplingParams

    llm = LLM(model=str(model_dir("smollm2-135m")), dtype="float32", enforce_eager=True, max_model_len=2048,
              kv_cache_memory_bytes=1 << 30, enable_prefix_caching=True,
              speculative_config={"method": "echo", "model": HEAD})
    chats = [chat_messages(p) for p in load_prompts("mt_bench", args.prompts + 4)]
    prompts, others = chats[:args.prompts], chats[args.prompts:]
    sampling = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)
    llm.chat(others, sampling, use_tqdm=False)  # warm-up on other prompts

    def mat_one_at_a_time(label: str) -> None:
        before = echo_counts(llm)
        for chat in prompts:
            llm.chat([chat], sampling, use_tqdm=False)
        after = echo_counts(llm)
        trees = after["num_verified_trees"] - before["num_verified_trees"]
        accepted = after["num_accepted_drafts"] - before["num_accepted_drafts"]
        print(f"{label}: MAT {1 + accepted / max(trees, 1):.3f} ({trees} trees verified, {accepted} drafts accepted)",
              flush=True)

    llm.reset_prefix_cache()
    mat_one_at_a_time("cold cache")
    mat_one_at_a_time("hits on blocks of drafted requests")
    llm.reset_prefix_cache()
    llm.collective_rpc(set_forced_choice, args=(False,))  # every step undrafted: the prompts' draft KV is owed
    llm.chat(prompts, sampling, use_tqdm=False)
    llm.collective_rpc(set_forced_choice, args=(None,))
    llm.collective_rpc(zero_draft_kv)
    mat_one_at_a_time("hits on blocks of undrafted requests, draft KV zeroed")
    llm.reset_prefix_cache()
    mat_one_at_a_time("cold cache again")


if __name__ == "__main__":
    main()
