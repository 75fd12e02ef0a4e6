"""The Triton tree-attention kernel equals the torch reference, prefix read from a paged cache.

Runs on a GPU when there is one; without one, the same check runs under Triton's interpreter
(TRITON_INTERPRET=1, the kernel executed on CPU tensors by numpy) in a subprocess.
"""

import math
import os
import subprocess
import sys

import pytest
import torch

from echo_vllm.core.tree import ancestor_mask

PARENTS = [[-1, 0, 1, 2, 3], [-1, 0, 0, 1, 1, 2, 3, 3], [-1, 0, 0, 0, 0, -1, -1, -1]]  # last: 5 nodes, padded
PREFIX_LENS = [70, 5, 0]


def check_against_reference(device: str) -> None:
    from echo_vllm.kernels.tree_attention import tree_attention
    from echo_vllm.kernels.triton_tree_attention import tree_attention_paged

    g = torch.Generator().manual_seed(0)
    heads, kv_heads, head_dim, block_size, num_blocks = 4, 2, 64, 16, 24
    batch, nodes = len(PARENTS), max(map(len, PARENTS))
    parents = torch.tensor([p + [-1] * (nodes - len(p)) for p in PARENTS])
    mask = ancestor_mask(parents)
    query = torch.randn(batch, nodes, heads, head_dim, generator=g)
    tree_k, tree_v = (torch.randn(batch, nodes, kv_heads, head_dim, generator=g) for _ in range(2))
    key_cache, value_cache = (torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=g) for _ in range(2))
    block_table = torch.randperm(num_blocks, generator=g)[: batch * 6].view(batch, 6).to(torch.int32)
    prefix_lens = torch.tensor(PREFIX_LENS, dtype=torch.int32)

    positions = torch.arange(max(PREFIX_LENS)).clamp(max=max(PREFIX_LENS) - 1)
    blocks = block_table.long().gather(1, (positions // block_size).expand(batch, -1))
    prefix_k = key_cache[blocks, positions % block_size]  # [B, P, Hkv, Dh]
    prefix_v = value_cache[blocks, positions % block_size]
    scale = 1 / math.sqrt(head_dim)
    expected = tree_attention(query, tree_k, tree_v, mask, prefix_k, prefix_v, prefix_lens.long(), scale)

    to = lambda t: t.to(device)  # noqa: E731
    got = tree_attention_paged(to(query), to(tree_k), to(tree_v), to(mask), to(key_cache), to(value_cache),
                               to(block_table), to(prefix_lens), scale)
    torch.testing.assert_close(got.cpu(), expected, atol=2e-4, rtol=2e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_kernel_matches_reference_on_gpu():
    check_against_reference("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU test runs the compiled kernel")
def test_kernel_matches_reference_under_the_triton_interpreter():
    pytest.importorskip("triton")
    code = f"import runpy; runpy.run_path({__file__!r})['check_against_reference']('cpu')"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
