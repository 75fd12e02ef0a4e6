"""Echo's draft proposer: EAGLE-3 draft trees (EAGLE-2 / SGLang expansion).

Per step and request: a first pass of the draft model over the tokens committed last step
(vLLM's own EAGLE first pass, which writes the draft KV cache), then `steps - 1` expansion
depths computed in torch with the draft layer's own modules: at each depth the `topk`
frontier nodes each propose `topk` children, and the `topk` best by cumulative score become
the next frontier. Frontier nodes attend to the request's draft-KV prefix plus their own
ancestors (their K/V stay in local tensors, never in the paged cache). The verified tree is
the root plus the num_draft_tokens - 1 best nodes of the pool (echo_vllm.core.tree).

Shape key: B requests, K topk, Hd draft hidden size, H/Hkv heads, Dh head size, M tree keys.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, fields

import torch
from vllm.config import VllmConfig
from vllm.distributed import get_tensor_model_parallel_world_size, get_tp_group
from vllm.forward_context import set_forward_context
from vllm.v1.spec_decode.eagle import EagleProposer

from echo_vllm.config import EchoConfig
from echo_vllm.core.budget import CostModel, allocate, allocation_order, goodput_budget
from echo_vllm.core.gating import (
    STATISTICS,
    GrowthPolicy,
    ddd_policy,
    echo_policy,
    gate_statistic,
    opt_tree_policy,
    static_policy,
)
from echo_vllm.core.tree import (
    Frontier,
    Tree,
    best_nodes,
    expand_frontier,
    pool_depths,
    root_frontier,
    score_ranks,
    tree_from_chosen,
)
from echo_vllm.log import logger
from echo_vllm.kernels.paged_kv import CPU_PACKED, HEAD_MAJOR, KvLayout, check_isa, prefix_slots
from echo_vllm.kernels.tree_attention import tree_attention


# steps whose deepest bought node sets the depth drafted next (elastic depth)
ELASTIC_DEPTH_WINDOW = 8


def kv_layout_of(device: torch.device) -> KvLayout:
    """How the attention backend echo extends on this device lays out its KV cache."""
    return CPU_PACKED if torch.device(device).type == "cpu" else HEAD_MAJOR


class EchoProposer(EagleProposer):
    def __init__(
        self, vllm_config: VllmConfig, device: torch.device, echo_config: EchoConfig, runner=None
    ):
        super().__init__(vllm_config, device, runner=runner)
        self.echo_config = echo_config
        self.kv_layout = kv_layout_of(device)
        self.growth_policy = growth_policy(echo_config)
        # The auto budget's inputs: the target pass cost model (the runner measures it at
        # start-up and refines it each step) and the drafting time per step (EMA).
        self.cost_model: CostModel | None = None
        self.draft_seconds = 0.0
        self.last_budget: int | None = None
        # Elastic depth (echo with a budget): draft one depth beyond the deepest node the
        # budget bought in recent steps, so a tight budget also stops paying for drafts
        # it never verifies, and an ample one lets trees grow back to `steps`.
        self.recent_bought_depths: deque[int] = deque(maxlen=ELASTIC_DEPTH_WINDOW)
        # gate decisions so far (host-side counts, read by logs and tests)
        self.num_gate_checks = 0
        self.num_gate_stops = 0
        # Sweet-Spot calibration (echo-vllm calibrate): with recording on, every step also
        # yields each request's gate statistics by depth and its tree nodes' score ranks.
        self.recording = False
        # echo without a gate calibrates one online over its first verification steps
        self.online_calibration_steps = echo_config.calibration_steps
        if self.online_calibration_steps is not None:
            self.recording = True
            logger.info("echo-vllm: no gate given (judge_depth/threshold or calibration_file): calibrating "
                        "it online over the first %d verification steps, gating off meanwhile",
                        self.online_calibration_steps)
        self.drafted_calibration: tuple[torch.Tensor, torch.Tensor] | None = None
        # The trees behind the draft lists `propose` returned, in batch-row order. vLLM's
        # runner passes only the token lists on, so echo's runner collects them here.
        self.drafted_trees: Tree | None = None

    def propose(
        self,
        num_speculative_tokens,
        target_token_ids: torch.Tensor,
        target_positions: torch.Tensor,
        target_hidden_states: torch.Tensor,
        next_token_ids: torch.Tensor,
        token_indices_to_sample: torch.Tensor | None,
        common_attn_metadata,
        sampling_metadata,
        mm_embed_inputs=None,
        num_rejected_tokens_gpu=None,
        slot_mappings=None,
    ) -> list[list[int]]:
        """Draft one tree per request; returns each request's drafts in tree order."""
        started = time.perf_counter()
        root_logits_hidden, root_hidden, root_positions, cad = self._first_pass(
            target_token_ids, target_positions, target_hidden_states, next_token_ids,
            token_indices_to_sample, common_attn_metadata,
        )
        tree = self._expand(root_logits_hidden, root_hidden, root_positions + 1, next_token_ids, cad)
        self.drafted_trees = tree
        drafts = [row[1:n] for row, n in zip(tree.tokens.tolist(), tree.num_nodes.tolist())]
        self.draft_seconds = 0.9 * self.draft_seconds + 0.1 * (time.perf_counter() - started)
        return drafts

    def _first_pass(
        self, target_token_ids, target_positions, target_hidden_states, next_token_ids,
        token_indices_to_sample, cad,
    ):
        """vLLM's EAGLE-3 first pass over the committed tokens (it also fills the draft KV).

        Returns, per request, the post-norm hidden state that predicts depth 1, the hidden
        state depth-1 nodes take as input, the position of the last committed row, and the
        attention metadata after the pass.
        """
        target_hidden_states = self.model.combine_hidden_states(target_hidden_states)
        num_tokens, token_indices_to_sample, cad = self.set_inputs_first_pass(
            target_token_ids=target_token_ids,
            next_token_ids=next_token_ids,
            target_positions=target_positions,
            target_hidden_states=target_hidden_states,
            token_indices_to_sample=token_indices_to_sample,
            cad=cad,
            num_rejected_tokens_gpu=None,
        )
        _, per_layer_attn_metadata = self.build_per_group_and_layer_attn_metadata(cad)
        cudagraph_mode, num_input_tokens, num_tokens_across_dp = (
            self._determine_batch_execution_and_padding(num_tokens)
        )
        model_kwargs, slot_mapping_size = self.build_model_inputs_first_pass(
            num_tokens, num_input_tokens, None
        )
        with set_forward_context(
            per_layer_attn_metadata,
            self.vllm_config,
            num_tokens=num_input_tokens,
            num_tokens_across_dp=num_tokens_across_dp,
            cudagraph_runtime_mode=cudagraph_mode,
            slot_mapping=self._get_slot_mapping(slot_mapping_size, cad.slot_mapping),
        ):
            last_hidden_states, hidden_states = self.model(**model_kwargs)
        rows = token_indices_to_sample
        return last_hidden_states[rows], hidden_states[rows], self.positions[rows], cad

    def _topk_children(self, logits_hidden: torch.Tensor, topk: int):
        """The draft's `topk` best next tokens (target ids) and their log-probabilities."""
        logits = self.model.logits_processor(self.model.lm_head, logits_hidden)  # draft vocab
        values, draft_ids = logits.float().log_softmax(dim=-1).topk(topk, dim=-1)
        d2t = self.model.draft_id_to_target_id
        return values, (draft_ids + d2t[draft_ids] if d2t is not None else draft_ids)

    def _draft_prefix(self, cad, prefix_lens: torch.Tensor):
        """The draft layer's K/V of every committed position, [B, P, Hkv, Dh] padded."""
        (layer_name,) = self._draft_attn_layer_names
        attn_layer = self.vllm_config.compilation_config.static_forward_context[layer_name]
        if self.kv_layout is CPU_PACKED:
            check_isa(attn_layer.isa)
        slots = prefix_slots(cad.block_table_tensor[: len(prefix_lens)], prefix_lens, self.block_size)
        k, v = self.kv_layout.gather(attn_layer.kv_cache, slots.flatten())
        return k.view(*slots.shape, *k.shape[1:]), v.view(*slots.shape, *v.shape[1:])

    def _expand(self, root_logits_hidden, root_hidden, first_positions, root_tokens, cad) -> Tree:
        """Grow each request's candidate pool depth by depth, then select the verified tree.

        After each depth the growth policy checks, the requests it stops leave the draft
        batch (one host transfer there, none elsewhere). first_positions [B]: position of a
        depth-1 node's draft step (= committed length).
        """
        topk, steps, policy = self.echo_config.topk, self.echo_config.steps, self.growth_policy
        batch, device = root_hidden.shape[0], root_hidden.device
        depth_of = pool_depths(steps, topk, device)
        caps = self.tree_sizes(batch).to(device) - 1  # draft tokens each request may verify
        frontier, pool = root_frontier(*self._topk_children(root_logits_hidden, topk))
        growing = _Growing(
            rows=torch.arange(batch, device=device), frontier=frontier,
            parent_hidden=root_hidden.unsqueeze(1).expand(batch, topk, -1),
            first_positions=first_positions.long(), tree_k=None, tree_v=None,
            seen=torch.zeros(batch, topk, 0, dtype=torch.bool, device=device),
            prefix=self._draft_prefix(cad, first_positions.long()) if steps > 1 else (None, None),
        )
        statistics = []  # per depth [B, S], when recording (the policy is static then)
        for depth in range(1, self._depths_to_draft()):
            if self.recording:
                statistics.append(torch.stack([gate_statistic(growing.frontier.scores, s) for s in STATISTICS], -1))
            if depth in policy.check_depths:
                keep = policy.keep_growing(depth, growing.frontier.scores, pool.scores[growing.rows],
                                           depth_of[: pool.scores.shape[1]])
                keep_cpu = keep.cpu()  # the one host transfer of this depth
                self.num_gate_checks += keep_cpu.numel()
                self.num_gate_stops += int((~keep_cpu).sum())
                if not bool(keep_cpu.all()):
                    stopped = growing.rows[~keep_cpu.to(device)]
                    caps[stopped] = caps[stopped].clamp(max=policy.stopped_num_draft_tokens - 1)
                    growing = growing.select(keep_cpu.nonzero().flatten().to(device))
                if growing.rows.numel() == 0:
                    break
            growing, pool = self._grow(growing, pool, depth)
        tree = self._select(pool, root_tokens.long(), caps, depth_of[: pool.scores.shape[1]])
        if self._elastic_depth():
            self.recent_bought_depths.append(int(tree.depths.max()))
        if self.recording:
            ranks = score_ranks(pool.scores).gather(1, tree.pool_idx.clamp(min=0))
            self.drafted_calibration = (
                torch.stack(statistics, dim=1).cpu() if statistics else torch.zeros(batch, 0, len(STATISTICS)),
                torch.where(tree.pool_idx >= 0, ranks, -1).cpu(),
            )
        return tree

    def _elastic_depth(self) -> bool:
        return self.growth_policy.name == "echo" and self.echo_config.budget is not None and not self.recording

    def _depths_to_draft(self) -> int:
        """`steps`, or with elastic depth one beyond the deepest node bought lately."""
        steps = self.echo_config.steps
        if not self._elastic_depth() or not self.recent_bought_depths:
            return steps
        return min(steps, max(self.recent_bought_depths) + 1)

    def _grow(self, growing: "_Growing", pool, depth: int):
        """Draft depth + 1 for the growing requests: each frontier node proposes topk children."""
        topk = self.echo_config.topk
        count = growing.rows.numel()
        positions = (growing.first_positions + depth - 1).view(count, 1).expand(count, topk)
        prefix_k, prefix_v = growing.prefix
        logits_hidden, hidden, k, v = self._draft_step(
            growing.frontier, growing.parent_hidden, positions, growing.tree_k, growing.tree_v,
            growing.seen, prefix_k, prefix_v, growing.first_positions,
        )
        tree_k = k if growing.tree_k is None else torch.cat([growing.tree_k, k], dim=1)
        tree_v = v if growing.tree_v is None else torch.cat([growing.tree_v, v], dim=1)
        eye = torch.eye(topk, dtype=torch.bool, device=k.device).expand(count, -1, -1)
        seen_self = torch.cat([growing.seen, eye], dim=2)
        top_logprobs, top_tokens = self._topk_children(logits_hidden, topk)
        frontier, pool = expand_frontier(
            growing.frontier, top_logprobs.view(count, topk, topk), top_tokens.view(count, topk, topk),
            pool, rows=growing.rows,
        )
        parent = frontier.parent_pos
        seen = seen_self.gather(1, parent.unsqueeze(-1).expand(-1, -1, seen_self.shape[2]))
        parent_hidden = hidden.view(count, topk, -1).gather(1, parent.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        grown = _Growing(growing.rows, frontier, parent_hidden, growing.first_positions, tree_k, tree_v,
                         seen, growing.prefix)
        return grown, pool

    def _select(self, pool, root_tokens, caps, depth_of) -> Tree:
        """The verified trees: echo with a budget spends it over the whole batch (go deep,
        then wide); otherwise, and while calibrating (whole trees are measured), each
        request takes its best nodes up to its cap."""
        budget = self.echo_config.budget
        if self.growth_policy.name == "echo" and budget is not None and not self.recording:
            batch, pool_size = pool.scores.shape
            order = allocation_order(pool.scores, pool.parent_idx, depth_of, caps)
            if budget == "auto":
                # no cost model yet (start-up passes): every node the caps allow
                budget = None if self.cost_model is None else goodput_budget(
                    pool.scores.flatten()[order].exp(), batch, self.cost_model, self.draft_seconds)
                (shared,) = same_on_every_rank([-1 if budget is None else budget])
                budget = None if shared < 0 else int(shared)
            self.last_budget = budget
            chosen = allocate(order, batch, pool_size, budget)
        else:
            chosen = best_nodes(pool.scores, caps)
        return tree_from_chosen(pool, root_tokens, chosen)

    def tree_sizes(self, batch: int) -> torch.Tensor:
        """Most verified nodes per request [B], root included. Every request may differ; the
        policies give each num_draft_tokens."""
        return torch.full((batch,), self.echo_config.num_draft_tokens, dtype=torch.int64)

    def _draft_step(
        self, frontier: Frontier, parent_hidden, positions, tree_k, tree_v, seen,
        prefix_k, prefix_v, prefix_lens,
    ):
        """One EAGLE-3 draft-layer pass over the frontier nodes (as vLLM's llama_eagle3 layer
        computes it), attending to prefix + ancestors + self.

        Returns the post-norm hidden states (for logits), the hidden states their children
        take as input, and the nodes' own K and V [B, K, Hkv, Dh].
        """
        layer = self.model.model.layers[0]
        attn = layer.self_attn
        batch, topk = frontier.tokens.shape
        embeds = layer.input_layernorm(self.model.model.embed_input_ids(frontier.tokens.flatten()))
        hidden, residual = layer._residual_norm(hidden_states=parent_hidden.reshape(batch * topk, -1))
        qkv, _ = attn.qkv_proj(torch.cat([embeds, hidden], dim=-1))
        q, k, v = qkv.split([attn.q_size, attn.kv_size, attn.kv_size], dim=-1)
        # vLLM's CPU rotary kernel reads positions as a dense array: no stride-0 views
        q, k = attn.rotary_emb(positions.flatten().contiguous(), q, k)
        q = q.view(batch, topk, attn.num_heads, attn.head_dim)
        k = k.view(batch, topk, attn.num_kv_heads, attn.head_dim)
        v = v.view(batch, topk, attn.num_kv_heads, attn.head_dim)
        self_mask = torch.eye(topk, dtype=torch.bool, device=q.device).expand(batch, -1, -1)
        keys = k if tree_k is None else torch.cat([tree_k, k], dim=1)
        values = v if tree_v is None else torch.cat([tree_v, v], dim=1)
        out = tree_attention(
            q, keys, values, torch.cat([seen, self_mask], dim=2), prefix_k, prefix_v, prefix_lens,
            attn.scaling,
        )
        out, _ = attn.o_proj(out.reshape(batch * topk, -1))
        out, residual = layer.post_attention_layernorm(out, residual)
        out = layer.mlp(out)
        normed, prenorm = self.model.model.norm(out, residual)
        next_hidden = normed if self.model.model.norm_output else prenorm
        return normed, next_hidden, k, v


@dataclass(frozen=True)
class _Growing:
    """The draft state of the requests still growing, row-aligned (A rows)."""

    rows: torch.Tensor  # [A] int64, batch row of each
    frontier: Frontier  # [A, K]
    parent_hidden: torch.Tensor  # [A, K, Hd], input hidden state of each frontier node
    first_positions: torch.Tensor  # [A] int64, committed length (= draft-KV prefix length)
    tree_k: torch.Tensor | None  # [A, M, Hkv, Dh], draft keys of the tree nodes drafted so far
    tree_v: torch.Tensor | None
    seen: torch.Tensor  # [A, K, M] bool, which tree keys are ancestors of each frontier node
    prefix: tuple  # ([A, P, Hkv, Dh], same) draft K/V of the committed positions, or (None, None)

    def select(self, keep: torch.Tensor) -> "_Growing":
        """The rows at `keep` [A'] (indices into these rows)."""
        def take(t):
            return None if t is None else t[keep]

        frontier = Frontier(*(take(getattr(self.frontier, f.name)) for f in fields(Frontier)))
        return _Growing(self.rows[keep], frontier, self.parent_hidden[keep], self.first_positions[keep],
                        take(self.tree_k), take(self.tree_v), self.seen[keep],
                        tuple(take(t) for t in self.prefix))


def same_on_every_rank(values: list[float]) -> list[float]:
    """Rank 0's values on every tensor-parallel rank. Ranks time their own passes, so
    decisions made from timings (budget, calibrated gate) could differ; all ranks must
    verify the same trees."""
    if get_tensor_model_parallel_world_size() == 1:
        return values
    shared = torch.tensor(values, dtype=torch.float64, device=get_tp_group().device)
    get_tp_group().broadcast(shared, src=0)
    return shared.tolist()


def growth_policy(config: EchoConfig) -> GrowthPolicy:
    """The per-request policy the config names (echo_vllm.core.gating)."""
    if config.policy == "ddd":
        return ddd_policy(config.num_draft_tokens, config.judge_depth, config.threshold[0])
    if config.policy == "opt_tree":
        return opt_tree_policy(config.num_draft_tokens, config.steps, config.threshold[0])
    if config.policy == "echo":  # without judge depths (online calibration): no gate yet
        return echo_policy(config.num_draft_tokens, config.judge_depth, config.threshold,
                           config.remaining_num_draft_tokens or config.num_draft_tokens, config.gate_statistic)
    return static_policy(config.num_draft_tokens)
