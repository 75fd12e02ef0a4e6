"""One attention layer of a drafted step on CPU: vLLM's causal kernel against echo's tree rows.

SmolLM2-135M's attention shapes (9 query heads, 3 kv heads, head size 64, vLLM's CPU block
size 128, float32). Each step has R requests, each a 6-node tree (parents -1, 0, 0, 1, 1, 2)
after a P-token prefix. In turns, medians of the rounds, ms per layer call:
  vllm causal   vLLM's CPU backend on the step as if every tree were a chain (what a chain
                of the same token count costs)
  echo tree     echo's CPU backend on the same step with its trees (kernels/cpu_backend.py)

    .venv/bin/python benchmarks/cpu_tree_attention.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from types import SimpleNamespace

import torch
from vllm import _custom_ops as ops
from vllm.v1.attention.backends import cpu_attn
from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackendImpl, CPUAttentionMetadata

from echo_vllm.core.tree import ancestor_mask
from echo_vllm.kernels.cpu_backend import EchoCPUAttentionBackendImpl
from echo_vllm.kernels.tree_attention import METADATA_ATTRIBUTE, tree_attention_batch

HEADS, KV_HEADS, HEAD_SIZE, BLOCK_SIZE = 9, 3, 64, 128
PARENTS = [-1, 0, 0, 1, 1, 2]
SHAPES = [(1, 300), (1, 1000), (4, 300), (16, 300), (64, 100)]  # (requests, prefix tokens)
CALLS = 200  # layer calls per timing


def step(requests: int, prefix: int):
    """A step's q, k, v, one layer's cache and vLLM's metadata, and the step's trees."""
    nodes = len(PARENTS)
    blocks = -(-(prefix + nodes) // BLOCK_SIZE)
    cache = torch.randn(requests * blocks, KV_HEADS, BLOCK_SIZE, 2 * HEAD_SIZE)
    block_table = torch.arange(requests * blocks, dtype=torch.int32).view(requests, blocks)
    tokens = requests * nodes
    qkv = [torch.randn(tokens, h, HEAD_SIZE) for h in (HEADS, KV_HEADS, KV_HEADS)]
    seq_lens = torch.full((requests,), prefix + nodes, dtype=torch.int32)
    query_start_loc = torch.arange(requests + 1, dtype=torch.int32) * nodes
    metadata = CPUAttentionMetadata(
        num_actual_tokens=tokens, max_query_len=nodes, query_start_loc=query_start_loc,
        max_seq_len=prefix + nodes, seq_lens=seq_lens, block_table=block_table,
        slot_mapping=torch.zeros(tokens, dtype=torch.int64),
        scheduler_metadata=ops.cpu_attn_get_scheduler_metadata(
            num_reqs=requests, num_heads=HEADS, num_kv_heads=KV_HEADS, head_dim=HEAD_SIZE, seq_lens=seq_lens,
            dtype=torch.float32, query_start_loc=query_start_loc, causal=True, sliding_window_size=-1,
            isa="vec", enable_kv_split=False),
    )
    trees = tree_attention_batch(
        torch.arange(tokens).view(requests, nodes), torch.ones(requests, nodes, dtype=torch.bool),
        ancestor_mask(torch.tensor([PARENTS] * requests)), block_table, torch.full((requests,), prefix),
        BLOCK_SIZE, "cpu")
    return qkv, cache, metadata, trees


def ms_per_call(forward) -> float:
    start = time.perf_counter()
    for _ in range(CALLS):
        forward()
    return (time.perf_counter() - start) / CALLS * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    config = SimpleNamespace(model_config=SimpleNamespace(dtype=torch.float32))
    cpu_attn.get_current_vllm_config = lambda: config  # the impls' constructor reads the model dtype
    impl_args = (HEADS, HEAD_SIZE, 1 / math.sqrt(HEAD_SIZE), KV_HEADS, None, None, "auto")
    vllm_impl, echo_impl = CPUAttentionBackendImpl(*impl_args), EchoCPUAttentionBackendImpl(*impl_args)
    layer = SimpleNamespace(_k_scale_float=1.0, _v_scale_float=1.0)
    print(f"torch threads {torch.get_num_threads()}; ms per layer call, median of {args.rounds} rounds")
    print("| requests | prefix | vllm causal | echo tree | echo / vllm |")
    print("|---|---|---|---|---|")
    for requests, prefix in SHAPES:
        (q, k, v), cache, metadata, trees = step(requests, prefix)
        tree_metadata = copy.copy(metadata)
        setattr(tree_metadata, METADATA_ATTRIBUTE, trees)
        output = torch.zeros_like(q)
        timings = {"vllm": [], "echo": []}
        for _ in range(args.rounds):
            timings["vllm"].append(ms_per_call(lambda: vllm_impl.forward(layer, q, k, v, cache, metadata, output)))
            timings["echo"].append(ms_per_call(
                lambda: echo_impl.forward(layer, q, k, v, cache, tree_metadata, output)))
        causal, tree = statistics.median(timings["vllm"]), statistics.median(timings["echo"])
        print(f"| {requests} | {prefix} | {causal:.3f} | {tree:.3f} | {tree / causal:.2f} |")


if __name__ == "__main__":
    main()
