"""Tree verification as vLLM's sampler sees it: logits in, SamplerOutput out.

Unpacks vLLM's per-request sampling state, applies each request's temperature / top-k /
top-p with vLLM's own helper, calls the pure verification (echo_vllm.core.verify), and
packs the outcome the way vLLM's rejection sampler does: per request the accepted path then
the bonus token, left-aligned, padded with -1.
"""

from __future__ import annotations

import torch
from vllm.v1.outputs import SamplerOutput
from vllm.v1.sample.metadata import SamplingMetadata
from vllm.v1.sample.rejection_sampler import PLACEHOLDER_TOKEN_ID, apply_sampling_constraints

from echo_vllm.core.verify import Verdict, verify_trees


def unsupported_sampling(sampling_metadata: SamplingMetadata) -> str | None:
    """What in this batch tree verification does not implement yet, if anything."""
    if sampling_metadata.max_num_logprobs is not None:
        return "logprobs"
    if not sampling_metadata.no_penalties:
        return "presence/frequency/repetition penalties"
    if sampling_metadata.bad_words_token_ids:
        return "bad_words"
    if sampling_metadata.allowed_token_ids_mask is not None:
        return "allowed_token_ids"
    return None


def sample_trees(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    parent_idx: torch.Tensor,
    num_nodes: torch.Tensor,
    sampling_metadata: SamplingMetadata,
) -> tuple[SamplerOutput, list[Verdict]]:
    """Verify every request's tree (a request without drafts is a lone root).

    logits [T, V]: the target's logits at every node, requests in batch order, T = sum of
    num_nodes [B]; tokens, parent_idx [T] flat, parents local to their request (-1 at roots).
    """
    problem = unsupported_sampling(sampling_metadata)
    if problem is not None:
        raise ValueError(f"echo-vllm: {problem} is not supported with method 'echo' yet")
    cu_num_nodes = num_nodes.cumsum(0)
    processed = apply_sampling_constraints(logits.float(), cu_num_nodes.to(logits.device), sampling_metadata)
    if sampling_metadata.all_greedy:
        is_greedy = [True] * len(num_nodes)
    else:
        is_greedy = (sampling_metadata.temperature == 0).tolist()
    verdicts = verify_trees(
        tokens, parent_idx, cu_num_nodes, processed, is_greedy, sampling_metadata.generators
    )
    width = max(len(v.output_tokens) for v in verdicts)
    sampled = torch.full((len(verdicts), width), PLACEHOLDER_TOKEN_ID, dtype=torch.int32)
    for row, verdict in enumerate(verdicts):
        out = verdict.output_tokens
        sampled[row, : len(out)] = torch.tensor(out, dtype=torch.int32)
    return SamplerOutput(sampled_token_ids=sampled.to(logits.device), logprobs_tensors=None), verdicts
