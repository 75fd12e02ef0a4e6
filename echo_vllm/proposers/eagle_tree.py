"""Echo's draft proposer: EAGLE-3 draft trees (EAGLE-2 / SGLang expansion).

Per step and request: a first pass of the draft model over the tokens committed last step
(vLLM's own EAGLE first pass, which writes the draft KV cache), then up to `steps - 1`
expansion depths computed in torch with the draft layer's own modules: at each depth the
`topk` frontier nodes each propose `topk` children, and the `topk` best by cumulative score
become the next frontier. Frontier nodes attend to the request's draft-KV prefix plus their
own ancestors (their K/V stay in local tensors, never in the paged cache). The verified tree
is chosen from the candidate pool by the step's plan: the batch's budget (go deep, then
wide) or each request's best nodes (echo_vllm.core.tree, core.budget).

What to draft is not decided here: the batch policy (scheduler_patches/batch_policy.py)
plans each step (draft or not, how deep, which gate) and sets the budget. A step it does not
draft still writes the draft KV its rows need later, but computes nothing else
(`_write_draft_kv`).

`propose` returns a DraftResult: vLLM's runner passes it through unchanged to echo's runner,
which hands the draft lists to the scheduler and keeps the trees.

Shape key: B requests, K topk, Hd draft hidden size, H/Hkv heads, Dh head size, M tree keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch
from vllm.config import VllmConfig
from vllm.forward_context import set_forward_context
from vllm.v1.spec_decode.eagle import EagleProposer

from echo_vllm.config import EchoConfig
from echo_vllm.core.budget import allocate, allocation_order, chain_allocation_order, most_confident_paths
from echo_vllm.core.gating import STATISTICS, gate_statistic
from echo_vllm.core.tree import (
    Frontier,
    Pool,
    Tree,
    best_nodes,
    chain_tree,
    child_visibility,
    deepest_and_widest,
    expand_frontier,
    pool_depths,
    root_frontier,
    score_ranks,
    tree_from_chosen,
    tree_positions,
)
from echo_vllm.kernels.draft_prefix import GatheredPrefix, PagedPrefix
from echo_vllm.kernels.paged_kv import CPU_PACKED, HEAD_MAJOR, KvLayout, check_isa, prefix_slots
from echo_vllm.log import logger
from echo_vllm.scheduler_patches.batch_policy import BatchPolicy, StepPlan
from echo_vllm.stats import EchoCounters


def kv_layout_of(device: torch.device) -> KvLayout:
    """How the attention backend echo extends on this device lays out its KV cache."""
    return CPU_PACKED if torch.device(device).type == "cpu" else HEAD_MAJOR


@dataclass(frozen=True)
class DraftedTrees:
    """The verified trees one drafted step chose, with what the runner records about them."""

    tree: Tree  # [B, N]
    node_values: torch.Tensor | None  # [B, N] path probability of each node (0 at the root): auto budget
    # when recording: gate statistics by depth [B, D-1, S] and each node's score rank [B, N] (-1: root)
    calibration: tuple[torch.Tensor, torch.Tensor] | None
    num_broken: torch.Tensor  # scalar: requests whose draft scores were NaN or infinite


@dataclass(frozen=True)
class DraftResult:
    """What `propose` returns: the drafts for vLLM's scheduler and the trees behind them."""

    drafts: list[list[int]]  # per request, its draft tokens in tree order (the root excluded)
    trees: DraftedTrees | None  # None: the step was not drafted (no drafts at all)


class EchoProposer(EagleProposer):
    def __init__(self, vllm_config: VllmConfig, device: torch.device, echo_config: EchoConfig, runner,
                 policy: BatchPolicy, counters: EchoCounters):
        super().__init__(vllm_config, device, runner=runner)
        self.model_runner = runner  # its input batch names the requests of each row
        self.echo_config = echo_config
        self.policy = policy
        self.counters = counters
        self.kv_layout = kv_layout_of(device)

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
    ) -> DraftResult:
        """Draft one tree per request, as the batch policy plans the step (no drafts for any
        request when it is not worth drafting)."""
        batch = next_token_ids.shape[0]
        req_ids = self.model_runner.input_batch.req_ids[:batch]
        plan = self.policy.decide(req_ids)
        if not plan.draft:
            self._write_draft_kv(target_token_ids, target_positions, target_hidden_states, next_token_ids,
                                 token_indices_to_sample, common_attn_metadata)
            self.policy.drafted(plan, req_ids)
            return DraftResult([[] for _ in range(batch)], None)
        root_logits_hidden, root_hidden, root_positions, cad = self._first_pass(
            target_token_ids, target_positions, target_hidden_states, next_token_ids,
            token_indices_to_sample, common_attn_metadata,
        )
        caps = self.tree_sizes(batch) - 1  # draft tokens each request may verify
        trees = self._expand(plan, root_logits_hidden, root_hidden, root_positions + 1, next_token_ids, cad, caps)
        tree = trees.tree
        drafts = [row[1:n] for row, n in zip(tree.tokens.tolist(), tree.num_nodes.tolist())]
        self.counters.num_proposed_drafts += sum(map(len, drafts))
        self._count_broken_drafts(int(trees.num_broken), batch)
        self.policy.drafted(plan, req_ids)
        return DraftResult(drafts, trees)

    def _count_broken_drafts(self, broken: int, batch: int) -> None:
        """Warn (once) when the head's outputs were not numbers: those requests decode without
        speculation. Read after the drafts' host transfer: no stall."""
        if broken and not self.counters.num_broken_drafts:
            logger.warning("echo-vllm: the draft head produced NaN or infinite scores for %d of %d requests; "
                           "they verify no drafts (decoding stays exact, without speculation's gain). "
                           "Check the head's checkpoint.", broken, batch)
        self.counters.num_broken_drafts += broken

    def tree_sizes(self, batch: int) -> torch.Tensor:
        """Most verified nodes per request [B], root included. Every request may differ; the
        policies give each num_draft_tokens."""
        return torch.full((batch,), self.echo_config.num_draft_tokens, dtype=torch.int64)

    # ---- steps not drafted ------------------------------------------------------------

    def _write_draft_kv(self, target_token_ids, target_positions, target_hidden_states, next_token_ids,
                        token_indices_to_sample, cad) -> None:
        """A step not drafted: write the draft KV of its rows into the slots the first pass
        would write, as the first pass computes it. A row's draft K/V depend on its own inputs
        only (token, combined target hidden state, position), so the draft layer's K/V
        projections suffice; the first pass's attention, MLP and logits feed drafting alone.
        Written now rather than at the request's next drafted step, the draft KV is whole
        whatever the steps decide: a change to drafting costs nothing, and prompt blocks
        shared through the prefix cache carry it."""
        num_tokens, _, cad = self._set_first_pass_inputs(target_token_ids, target_positions, target_hidden_states,
                                                         next_token_ids, token_indices_to_sample, cad)
        _, k, v, _ = self._draft_qkv(self.input_ids[:num_tokens], self.hidden_states[:num_tokens],
                                     self.positions[:num_tokens])
        self.kv_layout.scatter(self._draft_attn_layer().kv_cache, cad.slot_mapping[:num_tokens].long(), k, v)

    # ---- drafting ---------------------------------------------------------------------

    def _set_first_pass_inputs(self, target_token_ids, target_positions, target_hidden_states, next_token_ids,
                               token_indices_to_sample, cad):
        """vLLM's first-pass inputs in the drafter's buffers (input_ids, positions,
        hidden_states): the committed tokens shifted by one, each request's next token last,
        and the target's hidden states combined by the head's fc. Returns the token count,
        each request's last row and the attention metadata, as set_inputs_first_pass does."""
        return self.set_inputs_first_pass(
            target_token_ids=target_token_ids, next_token_ids=next_token_ids, target_positions=target_positions,
            target_hidden_states=self.model.combine_hidden_states(target_hidden_states),
            token_indices_to_sample=token_indices_to_sample, cad=cad, num_rejected_tokens_gpu=None,
        )

    def _first_pass(
        self, target_token_ids, target_positions, target_hidden_states, next_token_ids,
        token_indices_to_sample, cad,
    ):
        """vLLM's EAGLE-3 first pass over the committed tokens (it also fills the draft KV).

        Returns, per request, the post-norm hidden state that predicts depth 1, the hidden
        state depth-1 nodes take as input, the position of the last committed row, and the
        attention metadata after the pass.
        """
        num_tokens, token_indices_to_sample, cad = self._set_first_pass_inputs(
            target_token_ids, target_positions, target_hidden_states, next_token_ids, token_indices_to_sample, cad)
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

    def _draft_attn_layer(self):
        (layer_name,) = self._draft_attn_layer_names
        attn_layer = self.vllm_config.compilation_config.static_forward_context[layer_name]
        if self.kv_layout is CPU_PACKED:
            check_isa(attn_layer.isa)
        return attn_layer

    def _draft_prefix(self, block_table: torch.Tensor, prefix_lens: torch.Tensor,
                      max_prefix_len: int) -> GatheredPrefix | PagedPrefix:
        """The draft layer's K/V of positions 0..prefix_lens-1 of each request (block_table
        [A, nblk]; max_prefix_len a host bound on prefix_lens).

        CPU (packed cache): copied out once, [A, P, Hkv, Dh] padded; an empty prefix reads one
        slot that attention masks out. GPU (FlashAttention's cache): left in the cache, read by
        cascade attention through the block table at every tree step: nothing is copied."""
        attn_layer = self._draft_attn_layer()
        if self.kv_layout is CPU_PACKED:
            slots = prefix_slots(block_table, prefix_lens.clamp(min=1), self.block_size)
            k, v = self.kv_layout.gather(attn_layer.kv_cache, slots.flatten())
            return GatheredPrefix(k.view(*slots.shape, *k.shape[1:]), v.view(*slots.shape, *v.shape[1:]), prefix_lens)
        from vllm.v1.attention.ops.merge_attn_states import merge_attn_states

        from echo_vllm.kernels.gpu_backend import flash_prefix_attention

        impl = attn_layer.impl
        key_cache, value_cache = attn_layer.kv_cache.transpose(1, 2).split(impl.head_size, dim=-1)
        return PagedPrefix(key_cache, value_cache, block_table, prefix_lens, max_prefix_len,
                           flash_prefix_attention(impl.vllm_flash_attn_version), merge_attn_states)

    def _expand(self, plan: StepPlan, root_logits_hidden, root_hidden, first_positions, root_tokens, cad,
                caps) -> DraftedTrees:
        """Grow each request's candidate pool depth by depth, then select the verified trees.

        first_positions [B]: position of a depth-1 node's draft step (= committed length).
        caps [B] (host): draft tokens each request may verify; requests capped at 0 never grow.
        """
        batch = root_hidden.shape[0]
        depth_of = pool_depths(plan.depths, plan.width, root_hidden.device)  # the pool grows no deeper
        frontier, pool = root_frontier(*self._topk_children(root_logits_hidden, plan.width))
        statistics = []  # per depth [B, S], when recording (the gate is off then)
        if plan.depths > 1:
            pool, caps, statistics = self._grow_pool(plan, frontier, pool, root_hidden, first_positions, cad, caps,
                                                     depth_of)
        pool, caps, broken = _without_broken_scores(pool, caps.to(pool.scores.device))
        tree = self._select(plan, pool, root_tokens.long(), caps, depth_of[: pool.scores.shape[1]])
        node_values = None
        if self.policy.auto_budget():  # the acceptance scale compares them with what is accepted
            node_scores = pool.scores.gather(1, tree.pool_idx.clamp(min=0))
            node_values = torch.where(tree.pool_idx >= 0, node_scores.exp(), 0.0)
        if plan.spends_budget:  # elastic depth and width; chains are padded to the longest, one node wide
            longest = tree.tokens.shape[1] - 1
            deepest, widest = (longest, min(longest, 1)) if plan.width == 1 else deepest_and_widest(tree)
            self.policy.bought(plan.depths, deepest, widest)
        calibration = None
        if plan.recording:
            ranks = score_ranks(pool.scores).gather(1, tree.pool_idx.clamp(min=0))
            calibration = (
                torch.stack(statistics, dim=1).cpu() if statistics else torch.zeros(batch, 0, len(STATISTICS)),
                torch.where(tree.pool_idx >= 0, ranks, -1).cpu(),
            )
        return DraftedTrees(tree, node_values, calibration, broken.sum())

    def _grow_pool(self, plan: StepPlan, frontier: Frontier, pool: Pool, root_hidden, first_positions, cad, caps,
                   depth_of) -> tuple[Pool, torch.Tensor, list[torch.Tensor]]:
        """Depths 2 to plan.depths of the pool, from the depth-1 frontier. After each depth the
        plan's gate checks, the requests it stops leave the draft batch (one host transfer
        there, none elsewhere) and their caps are cut. Returns the pool, the caps (on the
        device) and, when recording, the gate statistics of each depth checked."""
        topk = plan.width
        batch, device = root_hidden.shape[0], root_hidden.device
        growing = _Growing(
            rows=torch.arange(batch, device=device), frontier=frontier,
            parent_hidden=root_hidden.unsqueeze(1).expand(batch, topk, -1),
            first_positions=first_positions.long(), tree_k=None, tree_v=None,
            seen=torch.zeros(batch, topk, 0, dtype=torch.bool, device=device),
            prefix=None,
        )
        if not bool((caps > 0).all()):
            growing = growing.select((caps > 0).nonzero().flatten().to(device))
        caps = caps.to(device)
        statistics = []
        grown, growth_started = 0, self.policy.clock()
        for depth in range(1, plan.depths):
            if plan.recording:
                statistics.append(torch.stack([gate_statistic(growing.frontier.scores, s) for s in STATISTICS], -1))
            if growing.rows.numel() == 0:
                break
            if depth in plan.gate.check_depths:
                growing = self._gate(plan, depth, growing, pool, depth_of, caps)
                if growing.rows.numel() == 0:
                    break
            if growing.prefix is None:  # gathered once, for the requests that really grow
                block_table = cad.block_table_tensor[growing.rows]
                growing = replace(growing, prefix=self._draft_prefix(block_table, growing.first_positions,
                                                                     cad.max_seq_len))
            growing, pool = self._grow(growing, pool, depth, topk)
            grown += 1
        if grown:  # what growing past depth 1 cost (the budget's drafting cost by depth)
            self.policy.grew(grown, self.policy.clock() - growth_started)
        return pool, caps, statistics

    def _gate(self, plan: StepPlan, depth: int, growing: "_Growing", pool: Pool, depth_of, caps) -> "_Growing":
        """The requests the plan's gate lets grow past `depth`; the stopped ones are cut to
        the gate's node count (caps [B], in place). One host transfer."""
        gate = plan.gate
        keep = gate.keep_growing(depth, growing.frontier.scores, pool.scores[growing.rows],
                                 depth_of[: pool.scores.shape[1]])
        keep_cpu = keep.cpu()
        self.counters.count_gate(depth, keep_cpu.numel(), int((~keep_cpu).sum()))
        if bool(keep_cpu.all()):
            return growing
        stopped = growing.rows[~keep_cpu.to(caps.device)]
        caps[stopped] = caps[stopped].clamp(max=gate.stopped_num_draft_tokens - 1)
        return growing.select(keep_cpu.nonzero().flatten().to(caps.device))

    def _grow(self, growing: "_Growing", pool: Pool, depth: int, topk: int) -> tuple["_Growing", Pool]:
        """Draft depth + 1 for the growing requests: each of the `topk` frontier nodes proposes
        `topk` children."""
        count = growing.rows.numel()
        # the frontier's nodes sit at `depth`; the root at first_positions - 1
        depths = torch.full((count, topk), depth, dtype=torch.int64, device=growing.first_positions.device)
        positions = tree_positions(depths, growing.first_positions - 1)
        eye = torch.eye(topk, dtype=torch.bool, device=positions.device).expand(count, -1, -1)
        seen_self = torch.cat([growing.seen, eye], dim=2)  # ancestors, then itself
        logits_hidden, hidden, k, v = self._draft_step(
            growing.frontier.tokens, growing.parent_hidden, positions, growing.tree_k, growing.tree_v,
            seen_self, growing.prefix,
        )
        tree_k = k if growing.tree_k is None else torch.cat([growing.tree_k, k], dim=1)
        tree_v = v if growing.tree_v is None else torch.cat([growing.tree_v, v], dim=1)
        top_logprobs, top_tokens = self._topk_children(logits_hidden, topk)
        frontier, pool = expand_frontier(
            growing.frontier, top_logprobs.view(count, topk, topk), top_tokens.view(count, topk, topk),
            pool, rows=growing.rows,
        )
        parent = frontier.parent_pos
        parent_hidden = hidden.view(count, topk, -1).gather(1, parent.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        grown = _Growing(growing.rows, frontier, parent_hidden, growing.first_positions, tree_k, tree_v,
                         child_visibility(seen_self, parent), growing.prefix)
        return grown, pool

    def _select(self, plan: StepPlan, pool: Pool, root_tokens, caps, depth_of) -> Tree:
        """The verified trees: with a batch-wide budget, the policy's budget spent over the
        whole batch (go deep, then wide); otherwise, and while calibrating (whole trees are
        measured), each request takes its best nodes up to its cap. A pool one node wide is
        a chain, whose trees are its prefixes: selected as such, at a chain's cost."""
        chain = plan.width == 1
        if plan.spends_budget:
            chosen = self._spend_budget(plan, pool, caps, depth_of, chain)
        else:
            chosen = best_nodes(pool.scores, caps)
        if chain:
            return chain_tree(pool, root_tokens, chosen.sum(dim=1))
        return tree_from_chosen(pool, root_tokens, chosen, depth_of)

    def _spend_budget(self, plan: StepPlan, pool: Pool, caps, depth_of, chain: bool) -> torch.Tensor:
        """[B, P] bool: the pool nodes the step's budget buys, deep first, then wide."""
        batch, pool_size = pool.scores.shape
        if chain:
            order = chain_allocation_order(pool.scores, caps)
        else:
            on_paths = most_confident_paths(pool.scores, pool.parent_idx, depth_of)
            order = allocation_order(pool.scores, pool.parent_idx, depth_of, caps, on_paths)
        auto = self.policy.auto_budget()
        node_values = pool.scores.flatten()[order].exp() if auto else None
        node_depths = depth_of[order % pool_size] if auto else None
        budget = self.policy.budget(plan, node_values, node_depths, batch)
        chosen = allocate(order, batch, pool_size, budget)
        bought = chosen.sum()
        self.counters.nodes_bought = self.counters.nodes_bought + bought
        bought_deep = bought if chain else (chosen & on_paths).sum()  # a chain's nodes are all on its path
        self.counters.nodes_bought_deep = self.counters.nodes_bought_deep + bought_deep
        return chosen

    def _draft_step(self, tokens, parent_hidden, positions, tree_k, tree_v, mask, prefix: GatheredPrefix | PagedPrefix):
        """One EAGLE-3 draft-layer pass over N new rows per request (as vLLM's llama_eagle3
        layer computes it), attending to the prefix (as `prefix` reads it), then to the earlier
        tree keys and the new rows' own keys as mask [B, N, M + N] allows.

        tokens [B, N]; parent_hidden [B, N, Hd] (the hidden state each row takes as input);
        positions [B, N]. Returns the post-norm hidden states (for logits), the hidden states
        their children take as input, and the rows' own K and V [B, N, Hkv, Dh].
        """
        layer = self.model.model.layers[0]
        attn = layer.self_attn
        batch, topk = tokens.shape
        q, k, v, residual = self._draft_qkv(tokens.flatten(), parent_hidden.reshape(batch * topk, -1),
                                            positions.flatten())
        q = q.view(batch, topk, attn.num_heads, attn.head_dim)
        k = k.view(batch, topk, attn.num_kv_heads, attn.head_dim)
        v = v.view(batch, topk, attn.num_kv_heads, attn.head_dim)
        keys = k if tree_k is None else torch.cat([tree_k, k], dim=1)
        values = v if tree_v is None else torch.cat([tree_v, v], dim=1)
        out = prefix.attend(q, keys, values, mask, attn.scaling)
        out, _ = attn.o_proj(out.reshape(batch * topk, -1))
        out, residual = layer.post_attention_layernorm(out, residual)
        out = layer.mlp(out)
        normed, prenorm = self.model.model.norm(out, residual)
        next_hidden = normed if self.model.model.norm_output else prenorm
        return normed, next_hidden, k, v

    def _draft_qkv(self, tokens, hidden, positions):
        """The draft layer's Q, K and V of rows (tokens [T], their input hidden states [T, Hd],
        positions [T]), rotary applied: Q [T, H * Dh], K and V [T, Hkv, Dh]; and the residual
        the layer carries past attention."""
        layer = self.model.model.layers[0]
        attn = layer.self_attn
        embeds = layer.input_layernorm(self.model.model.embed_input_ids(tokens))
        hidden, residual = layer._residual_norm(hidden_states=hidden)
        qkv, _ = attn.qkv_proj(torch.cat([embeds, hidden], dim=-1))
        q, k, v = qkv.split([attn.q_size, attn.kv_size, attn.kv_size], dim=-1)
        # vLLM's CPU rotary kernel reads positions as a dense array: no stride-0 views
        q, k = attn.rotary_emb(positions.contiguous(), q, k)
        return q, k.view(-1, attn.num_kv_heads, attn.head_dim), v.view(-1, attn.num_kv_heads, attn.head_dim), residual


def _without_broken_scores(pool: Pool, caps: torch.Tensor) -> tuple[Pool, torch.Tensor, torch.Tensor]:
    """A head that outputs NaN (a corrupt or diverged checkpoint) must not steer the budget,
    the gate or the acceptance curve: such a request verifies no draft this step. Returns the
    pool and caps without them, and which requests [B] were broken."""
    broken = ~(pool.scores < math.inf).all(dim=1)  # NaN and +inf compare false; -inf is a node never drafted
    pool = replace(pool, scores=pool.scores.masked_fill(broken.unsqueeze(1), -math.inf))
    return pool, caps.masked_fill(broken, 0), broken


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
    prefix: GatheredPrefix | PagedPrefix | None  # the draft KV of the committed positions, once needed

    def select(self, keep: torch.Tensor) -> "_Growing":
        """The rows at `keep` [A'] (indices into these rows)."""
        def take(t):
            return None if t is None else t[keep]

        frontier = Frontier(*(take(getattr(self.frontier, f.name)) for f in fields(Frontier)))
        return _Growing(self.rows[keep], frontier, self.parent_hidden[keep], self.first_positions[keep],
                        take(self.tree_k), take(self.tree_v), self.seen[keep],
                        None if self.prefix is None else self.prefix.select(keep))
