"""Echo's GPU check: tree attention and echo_vllm.core on a bare GPU machine (torch + Triton,
no vLLM), one JSON out. docs/GPU.md says how to run it and read the result.

  python scripts/gpu_check.py --out gpu_check.json          # a CUDA machine, under 8 minutes
  TRITON_INTERPRET=1 python scripts/gpu_check.py --cpu-smoke --out smoke.json   # CPU, small sizes

It checks, each against CPU / fp32 truth:
  parity   cascade tree attention (prefix part in torch: FlashAttention comes with vLLM) and the
           Triton kernel against the fp32 torch reference, bf16 and fp16, head sizes 64/128/256,
           query/kv heads 32/8 and 28/4, nodes 2-129, prefixes 0-32k, int64 lengths, block sizes
           16 and 32, a permuted block table;
  timing   per-layer time of each against the same shapes without a tree (floors: the prefix
           part alone, and torch SDPA over dense contiguous K/V), 1/8/64 requests, 32 nodes, 4k
           prefix, with the peak memory each adds;
  core     echo_vllm.core's drafting-step functions on CUDA tensors against their CPU results.
Imports torch, Triton (where it runs) and echo_vllm modules that never import vLLM.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from echo_vllm.core.budget import (  # noqa: E402
    allocate,
    allocation_order,
    chain_allocation_order,
    most_confident_paths,
)
from echo_vllm.core.gating import gate_statistic  # noqa: E402
from echo_vllm.core.tree import (  # noqa: E402
    ancestor_mask,
    best_nodes,
    chain_tree,
    expand_frontier,
    node_depths,
    pool_depths,
    root_frontier,
    tree_from_chosen,
    tree_positions,
)
from echo_vllm.kernels.cascade_tree_attention import cascade_tree_attention, paged_prefix_attention  # noqa: E402
from echo_vllm.kernels.tree_attention import tree_attention  # noqa: E402

TOLERANCE = {torch.bfloat16: 3e-2, torch.float16: 5e-3}
DEADLINE_S = 7 * 60  # stop starting new checks past this (the whole run must stay under 8 minutes)


def parity_cases(smoke: bool) -> list[dict]:
    """Each dtype x head size x head ratio once, nodes / prefixes / block size cycled over them."""
    if smoke:
        return [dict(dtype=torch.bfloat16, head_dim=64, heads=4, kv_heads=1, nodes=5, prefix_lens=[0, 37],
                     block_size=16),
                dict(dtype=torch.float16, head_dim=32, heads=7, kv_heads=1, nodes=3, prefix_lens=[20], block_size=32)]
    shapes = [(2, [0, 1, 4097]), (5, [32768, 17]), (33, [0, 4000, 2048]), (100, [31, 8191]),
              (129, [32768, 0, 500]), (13, [16, 32, 33])]
    cases, i = [], 0
    for dtype in (torch.bfloat16, torch.float16):
        for head_dim in (64, 128, 256):
            for heads, kv_heads in ((32, 8), (28, 4)):
                nodes, prefix_lens = shapes[i % len(shapes)]
                cases.append(dict(dtype=dtype, head_dim=head_dim, heads=heads, kv_heads=kv_heads, nodes=nodes,
                                  prefix_lens=prefix_lens, block_size=(16, 32)[i % 2]))
                i += 1
    return cases


def random_parents(g: torch.Generator, batch: int, nodes: int) -> torch.Tensor:
    parents = torch.full((batch, nodes), -1)
    for i in range(1, nodes):
        parents[:, i] = torch.randint(0, i, (batch,), generator=g)
    return parents


def make_batch(seed, device, dtype, head_dim, heads, kv_heads, nodes, prefix_lens, block_size):
    """A tree batch over a paged cache of noise, a permuted block table, int64 lengths."""
    g = torch.Generator().manual_seed(seed)
    batch = len(prefix_lens)
    per_request = max(1, -(-max(prefix_lens) // block_size))
    num_blocks = batch * per_request + 1

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    return dict(
        query=rand(batch, nodes, heads, head_dim), tree_key=rand(batch, nodes, kv_heads, head_dim),
        tree_value=rand(batch, nodes, kv_heads, head_dim),
        tree_mask=ancestor_mask(random_parents(g, batch, nodes)).to(device),
        key_cache=rand(num_blocks, block_size, kv_heads, head_dim),
        value_cache=rand(num_blocks, block_size, kv_heads, head_dim),
        block_table=torch.randperm(num_blocks, generator=g)[: batch * per_request].view(batch, per_request)
        .to(device=device, dtype=torch.int32),
        prefix_lens=torch.tensor(prefix_lens, dtype=torch.int64, device=device),
        max_prefix_len=max(prefix_lens), scale=1 / math.sqrt(head_dim),
    )


def reference(b) -> torch.Tensor:
    """fp32 tree_attention over the prefix gathered through the block table."""
    block_size = b["key_cache"].shape[1]
    positions = torch.arange(max(1, b["max_prefix_len"]), device=b["query"].device)
    blocks = b["block_table"].long()[:, positions // block_size]
    prefix_k = b["key_cache"][blocks, positions % block_size].float()
    prefix_v = b["value_cache"][blocks, positions % block_size].float()
    return tree_attention(b["query"].float(), b["tree_key"].float(), b["tree_value"].float(), b["tree_mask"],
                          prefix_k, prefix_v, b["prefix_lens"], b["scale"])


def run_cascade(b, prefix_attention=paged_prefix_attention) -> torch.Tensor:
    return cascade_tree_attention(b["query"], b["tree_key"], b["tree_value"], b["tree_mask"], b["key_cache"],
                                  b["value_cache"], b["block_table"], b["prefix_lens"], b["max_prefix_len"],
                                  b["scale"], prefix_attention=prefix_attention)


def run_triton(b) -> torch.Tensor:
    from echo_vllm.kernels.triton_tree_attention import tree_attention_paged

    return tree_attention_paged(b["query"], b["tree_key"], b["tree_value"], b["tree_mask"], b["key_cache"],
                                b["value_cache"], b["block_table"], b["prefix_lens"], b["scale"])


def triton_available(device: str) -> str | None:
    """None when the Triton kernel can run here, else why not."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "on CPU the kernel runs only under TRITON_INTERPRET=1"
    return None


def check_parity(cases, device, kernels) -> list[dict]:
    results = []
    for seed, case in enumerate(cases):
        b = make_batch(seed, device, **case)
        expected = reference(b)
        for name, kernel in kernels.items():
            entry = {**case, "dtype": str(case["dtype"]).removeprefix("torch."), "kernel": name,
                     "tolerance": TOLERANCE[case["dtype"]]}
            try:
                got = kernel(b).float()
            except Exception as error:  # a kernel that fails to compile or run is a finding, not the end
                results.append({**entry, "ok": False, "error": repr(error)[:500]})
                continue
            tol = entry["tolerance"]
            results.append({**entry, "max_abs_error": (got - expected).abs().max().item(),
                            "ok": bool(torch.allclose(got, expected, atol=tol, rtol=tol))})
        del b, expected
    return results


def timed(fn, device: str, reps: int) -> tuple[float, int]:
    """Median milliseconds of fn() over reps (after a warm-up), and the peak bytes it
    allocated beyond what was allocated before (CUDA; 0 on CPU)."""
    fn()
    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    peak = torch.cuda.max_memory_allocated() - before if cuda else 0
    return sorted(times)[len(times) // 2], peak


def dense_sdpa_floor(b):
    """The no-tree floor of a fused kernel: SDPA over dense contiguous K/V [R, Hkv, P+N, Dh]
    (every request's prefix the same length), no mask, returning fn()."""
    import torch.nn.functional as F

    batch, nodes, heads, head_dim = b["query"].shape
    keys = b["max_prefix_len"] + nodes
    k = torch.randn(batch, b["tree_key"].shape[2], keys, head_dim, device=b["query"].device, dtype=b["query"].dtype)
    v = torch.randn_like(k)
    q = b["query"].transpose(1, 2).contiguous()
    return lambda: F.scaled_dot_product_attention(q, k, v, scale=b["scale"], enable_gqa=True)


def time_one_size(device, requests, nodes, prefix, heads, kv_heads, head_dim, reps, kernels) -> dict:
    """Per-layer milliseconds and peak extra bytes of each kernel and both floors, bf16."""
    b = make_batch(requests, device, torch.bfloat16, head_dim, heads, kv_heads, nodes, [prefix] * requests, 16)
    flat_query = b["query"].reshape(-1, heads, head_dim)
    fns = {name: (lambda kernel=kernel: kernel(b)) for name, kernel in kernels.items()}
    fns["floor_prefix_part"] = lambda: paged_prefix_attention(
        flat_query, b["key_cache"], b["value_cache"], b["block_table"], b["prefix_lens"], prefix, b["scale"])
    fns["floor_dense_sdpa"] = dense_sdpa_floor(b)
    measured = {}
    for name, fn in fns.items():
        try:
            measured[name] = timed(fn, device, reps)
        except Exception as error:  # e.g. out of memory: recorded, the other timings still run
            measured[name] = (math.nan, repr(error)[:300])
    ms = {name: t for name, (t, _) in measured.items()}
    return dict(
        requests=requests, nodes=nodes, prefix=prefix, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
        dtype="bfloat16", block_size=16, ms=ms, peak_extra_bytes={n: p for n, (_, p) in measured.items()},
        ratio_to_floor_prefix_part={n: ms[n] / ms["floor_prefix_part"] for n in kernels},
        ratio_to_floor_dense_sdpa={n: ms[n] / ms["floor_dense_sdpa"] for n in kernels},
    )


def check_timing(device: str, smoke: bool, kernels) -> list[dict]:
    """1/8/64 requests x 32 nodes x 4k prefix, heads 32/8, head size 128 (tiny when smoke)."""
    requests_list, nodes, prefix, reps = ([1, 2], 5, 64, 2) if smoke else ([1, 8, 64], 32, 4096, 20)
    head_dim, heads, kv_heads = (32, 4, 1) if smoke else (128, 32, 8)
    return [time_one_size(device, requests, nodes, prefix, heads, kv_heads, head_dim, reps, kernels)
            for requests in requests_list]


def drafting_step(device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """The core functions of one drafting step (drafter's order) on seeded random draft scores."""
    g = torch.Generator().manual_seed(seed)
    batch, topk, steps = 4, 3, 4

    def logprobs(*shape):
        return torch.randn(*shape, generator=g).log_softmax(-1).to(device)

    def tokens(*shape):
        return torch.randint(0, 1000, shape, generator=g).to(device)

    frontier, pool = root_frontier(logprobs(batch, topk), tokens(batch, topk))
    gates = [gate_statistic(frontier.scores, "frontier_sum")]
    for _ in range(steps - 1):
        frontier, pool = expand_frontier(frontier, logprobs(batch, topk, topk), tokens(batch, topk, topk), pool)
        gates.append(gate_statistic(frontier.scores, "best_path"))
    depth_of = pool_depths(steps, topk, device)
    tree = tree_from_chosen(pool, tokens(batch), best_nodes(pool.scores, torch.tensor([1, 4, 7, 12], device=device)),
                            depth_of)
    on_paths = most_confident_paths(pool.scores, pool.parent_idx, depth_of)
    order = allocation_order(pool.scores, pool.parent_idx, depth_of, torch.full((batch,), 8, device=device), on_paths)
    # a frontier one node wide: chains, selected as such
    frontier, chain = root_frontier(logprobs(batch, 5)[:, :1], tokens(batch, 1))
    for _ in range(steps - 1):
        frontier, chain = expand_frontier(frontier, logprobs(batch, 1, 5)[..., :1], tokens(batch, 1, 1), chain)
    chain_order = chain_allocation_order(chain.scores, torch.tensor([4, 2, 0, 3], device=device))
    chain_bought = allocate(chain_order, batch, steps, 5).sum(dim=1)
    chains = chain_tree(chain, tokens(batch), chain_bought)
    return dict(pool_scores=pool.scores, pool_parents=pool.parent_idx, gates=torch.stack(gates),
                tree_tokens=tree.tokens, tree_parents=tree.parent_idx, tree_depths=tree.depths,
                node_depths=node_depths(tree.parent_idx), mask=ancestor_mask(tree.parent_idx),
                positions=tree_positions(tree.depths, torch.tensor([0, 5, 4096, 32767], device=device)),
                on_paths=on_paths, order=order, allocated=allocate(order, batch, pool.scores.shape[1], 20),
                chain_order=chain_order, chain_tokens=chains.tokens, chain_parents=chains.parent_idx)


def check_core(device: str) -> list[dict]:
    on_cpu, on_device = drafting_step("cpu"), drafting_step(device)
    results = []
    for name, expected in on_cpu.items():
        got = on_device[name].cpu()
        same = got.shape == expected.shape and (torch.allclose(got, expected, atol=1e-6) if got.is_floating_point()
                                                else torch.equal(got, expected))
        results.append({"function_output": name, "ok": bool(same)})
    return results


def goal(timing) -> dict | str:
    """The issue's goal: tree attention within 1.3x of the no-tree floor at the largest size
    timed (64 requests x 32 nodes x 4k prefix on a GPU)."""
    if not isinstance(timing, list) or not timing:
        return "not timed"
    largest = timing[-1]
    return {"size": {k: largest[k] for k in ("requests", "nodes", "prefix")},
            **{f"{kernel}_within_1.3x_of_{floor}": bool(ratio <= 1.3)
               for floor in ("floor_prefix_part", "floor_dense_sdpa")
               for kernel, ratio in largest[f"ratio_to_{floor}"].items()}}


def machine(device: str) -> dict:
    info = {"device": device, "torch": torch.__version__}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device == "cuda":
        info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                    total_memory_bytes=torch.cuda.get_device_properties(0).total_memory)
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check.json", help="where to write the JSON result")
    parser.add_argument("--cpu-smoke", action="store_true", help="small sizes on CPU (automatic without CUDA)")
    args = parser.parse_args(argv)
    smoke = args.cpu_smoke or not torch.cuda.is_available()
    device = "cpu" if smoke else "cuda"
    started = time.perf_counter()
    torch.backends.cuda.matmul.allow_tf32 = False  # the reference is true fp32
    kernels = {"cascade": run_cascade}
    triton_skipped = triton_available(device)
    if triton_skipped is None:
        kernels["triton"] = run_triton
    report = {"mode": "cpu-smoke" if smoke else "gpu", "machine": machine(device), "triton_skipped": triton_skipped}
    sections = [("parity", lambda: check_parity(parity_cases(smoke), device, kernels)),
                ("timing", lambda: check_timing(device, smoke, kernels)), ("core", lambda: check_core(device))]
    for name, run in sections:
        if time.perf_counter() - started > DEADLINE_S:
            report[name] = {"skipped": "out of time"}
            continue
        report[name] = run()
        report[f"{name}_s"] = round(time.perf_counter() - started, 1)
    report["goal"] = goal(report["timing"])
    report["all_ok"] = all(r["ok"] for section in ("parity", "core") if isinstance(report[section], list)
                           for r in report[section])
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("mode", "all_ok", "elapsed_s", "triton_skipped")}))
    return 0 if report["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
