"""Tree verification as vLLM's sampler sees it: logits in, SamplerOutput out.

Unpacks vLLM's per-request sampling state, applies each request's temperature / top-k /
top-p with vLLM's own helper, calls the pure verification (echo_vllm.core.verify), and
packs the outcome the way vLLM's rejection sampler does: per request the accepted path then
the bonus token, left-aligned, padded with -1, with logprobs when asked for. Sampling options
whose meaning depends on the tokens before each position (penalties, min_tokens, bad words,
...) are refused at admission (scheduler_patches/patch_input_processor.py).
"""

from __future__ import annotations

import torch
from vllm.config.model import PROCESSED_LOGPROBS_MODES
from vllm.v1.outputs import LogprobsTensors, SamplerOutput
from vllm.v1.sample.metadata import SamplingMetadata
from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p
from vllm.v1.sample.rejection_sampler import PLACEHOLDER_TOKEN_ID
from vllm.v1.sample.sampler import Sampler

from echo_vllm.core.verify import Verdict, exponential_race, verify_tree


def sample_trees(
    sampler: Sampler,
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
    # greedy requests keep their logits: no constrained copy of a [T, V] tensor for them
    processed = logits if sampling_metadata.all_greedy else constrained_logits(logits, num_nodes, sampling_metadata)
    ends = num_nodes.cumsum(0).tolist()
    starts = [0, *ends[:-1]]
    greedy_tokens = processed.argmax(dim=-1).tolist()
    tokens_l, parents_l = tokens.tolist(), parent_idx.tolist()
    greedy_rows = _greedy_rows(sampling_metadata, len(ends))
    verdicts = []
    for row, (start, end) in enumerate(zip(starts, ends)):
        if greedy_rows[row]:
            target_token = lambda node, start=start: greedy_tokens[start + node]  # noqa: E731
        else:
            target_token = _sampler_draw(processed[start:end], sampling_metadata.generators.get(row))
        verdicts.append(verify_tree(tokens_l[start:end], parents_l[start:end], target_token))
    width = max(len(v.output_tokens) for v in verdicts)
    sampled = torch.full((len(verdicts), width), PLACEHOLDER_TOKEN_ID, dtype=torch.int32)
    # logits row each output token was drawn from: the root's, then each accepted node's
    source_rows = torch.zeros((len(verdicts), width), dtype=torch.int64)
    for row, (verdict, start) in enumerate(zip(verdicts, starts)):
        out = verdict.output_tokens
        sampled[row, : len(out)] = torch.tensor(out, dtype=torch.int32)
        source_rows[row, : len(out)] = torch.tensor([start, *(start + n for n in verdict.accepted_nodes)])
    logprobs = None
    if sampling_metadata.max_num_logprobs is not None:
        scored = processed if sampler.logprobs_mode in PROCESSED_LOGPROBS_MODES else logits
        logprobs = _logprobs(sampler, scored, source_rows, sampled, sampling_metadata.max_num_logprobs)
    return SamplerOutput(sampled_token_ids=sampled.to(logits.device), logprobs_tensors=logprobs), verdicts


def _greedy_rows(sampling_metadata: SamplingMetadata, num_rows: int) -> list[bool]:
    """Whether each request decodes greedily (temperature read to the host once)."""
    if sampling_metadata.all_greedy:
        return [True] * num_rows
    return (sampling_metadata.temperature[:num_rows] == 0.0).tolist()


def _sampler_draw(node_logits: torch.Tensor, generator: torch.Generator | None):
    """The target's token at a node, drawn as vLLM's sampler on this device draws one token.

    CPU: a seed from the request's generator (the global one without a seed), then Gumbel-max
    over the constrained logits (vLLM's `fused_gumbel_argmax`): a seeded request sees the very
    draws it would without speculation, one per emitted token. Elsewhere: an exponential race
    with the request's generator, which has the same law.
    """
    if node_logits.device.type == "cpu":

        def draw(node: int) -> int:
            seed = torch.randint(0, 2**31, (1,), generator=generator, dtype=torch.long)
            return int(torch.ops._C.fused_gumbel_argmax(node_logits[node : node + 1], seed))

        return draw
    return lambda node: exponential_race(node_logits[node].softmax(dim=-1), generator)


def constrained_logits(
    logits: torch.Tensor, num_nodes: torch.Tensor, sampling_metadata: SamplingMetadata
) -> torch.Tensor:
    """Each node's logits under its request's temperature, top-k and top-p (a copy).

    Greedy requests in the batch keep their argmax (temperature 0 is read as 1, top-k/top-p
    keep the argmax). vLLM's own helper for this (`apply_sampling_constraints`) expands per-request
    values with a CPU kernel that leaves int32 outputs such as top_k unwritten in 0.32, so
    the expansion here is a plain repeat_interleave.
    """
    out = logits.float().clone()
    repeats = num_nodes.to(logits.device)
    temperature = sampling_metadata.temperature.repeat_interleave(repeats)
    out.div_(torch.where(temperature == 0, 1.0, temperature).unsqueeze(1))
    top_k, top_p = sampling_metadata.top_k, sampling_metadata.top_p
    return apply_top_k_top_p(
        out,
        None if top_k is None else top_k.repeat_interleave(repeats),
        None if top_p is None else top_p.repeat_interleave(repeats),
    )


def _logprobs(
    sampler: Sampler, scored: torch.Tensor, source_rows: torch.Tensor, sampled: torch.Tensor,
    max_num_logprobs: int,
) -> LogprobsTensors:
    """Logprobs of every output position, flattened [B * W] like vLLM's rejection sampler
    (padding positions are filtered out by vLLM's parse_output)."""
    rows = scored[source_rows.flatten().to(scored.device)].float()
    if sampler.logprobs_mode not in ("raw_logits", "processed_logits"):
        rows = sampler.compute_logprobs(rows)
    token_ids = sampled.flatten().clamp(min=0).to(torch.int64).to(scored.device)
    return sampler.gather_logprobs(rows, max_num_logprobs, token_ids)
