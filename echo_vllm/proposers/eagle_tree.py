"""Echo's draft proposer: EAGLE-3 draft trees (EAGLE-2 / SGLang expansion).

Per step and request: a first pass of the draft model over the tokens committed last step
(vLLM's own EAGLE first pass, which writes the draft KV cache), then `steps - 1` expansion
depths computed in torch with the draft layer's own modules: at each depth the `topk`
frontier nodes each propose `topk` children, and the `topk` best by cumulative score become
the next frontier. Frontier nodes attend to the request's draft-KV prefix plus their own
ancestors (their K/V stay in local tensors, never in the paged cache). The verified tree is
the root plus the num_draft_tokens - 1 best nodes of the pool (echo_vllm.core.tree).

Echo with the automatic budget drafts a step only when speculation is expected to pay at its
batch size (core.budget.speculation_pays). A step it does not draft skips even the first
pass; the first-pass inputs of its rows are kept (`OwedRows`) and the draft KV they owe is
written before the request's next drafted step (`_catch_up`), in one batched pass. Requests
that finish in between never pay for it.

Shape key: B requests, K topk, Hd draft hidden size, H/Hkv heads, Dh head size, M tree keys.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field, fields, replace

import torch
from vllm.config import VllmConfig
from vllm.distributed import get_tensor_model_parallel_world_size, get_tp_group
from vllm.forward_context import set_forward_context
from vllm.v1.spec_decode.eagle import EagleProposer

from echo_vllm.config import EchoConfig
from echo_vllm.core.budget import (
    AcceptanceCurve,
    CostModel,
    Exploration,
    MeasuredGoodput,
    LinearCost,
    allocate,
    allocation_order,
    goodput_budget,
    most_confident_paths,
    speculation_pays,
)
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
from echo_vllm.kernels.paged_kv import CPU_PACKED, HEAD_MAJOR, KvLayout, check_isa, prefix_slots, slots_of
from echo_vllm.kernels.tree_attention import tree_attention


# steps whose deepest bought node sets the depth drafted next (elastic depth)
ELASTIC_DEPTH_WINDOW = 8
# Draft-KV rows one request may owe from steps that were not drafted. Beyond it the rows are
# dropped and the request drafts nothing until it finishes (its draft KV has a hole); this
# bounds the memory kept whatever the load does: the inputs of the latest MAX_OWED_ROWS
# undrafted steps at most, each kept once for all its requests.
MAX_OWED_ROWS = 256
# Drafted steps measured (drafting time, acceptance) before echo may decide that a step is
# not worth drafting: its estimates must not rest on the first, noisiest steps, since steps
# it does not draft measure nothing about drafting.
MIN_DRAFTED_STEPS = 32
# Draft tokens all rejected after which echo warns that the head may not fit the target.
NO_ACCEPTANCE_WARNING_DRAFTS = 1000
# Steps in a row of one choice (draft or not) after which one step takes the other
# (core.budget.Exploration): at least 16, at most 1024, and as many as keep what exploring
# costs, all told, to 1 % of the steps' time.
EXPLORATION_INTERVAL = 16
MAX_EXPLORATION_INTERVAL = 1024
MAX_EXPLORATION_SHARE = 0.01
# Drafted steps a switch from not drafting to drafting must pay for itself over (it writes
# the draft KV the undrafted steps owed): the shortest run of a choice before it is explored.
SWITCH_HORIZON_STEPS = EXPLORATION_INTERVAL


def kv_layout_of(device: torch.device) -> KvLayout:
    """How the attention backend echo extends on this device lays out its KV cache."""
    return CPU_PACKED if torch.device(device).type == "cpu" else HEAD_MAJOR


class EchoProposer(EagleProposer):
    def __init__(self, vllm_config: VllmConfig, device: torch.device, echo_config: EchoConfig, runner):
        super().__init__(vllm_config, device, runner=runner)
        self.model_runner = runner  # its input batch names the requests of each row
        self.echo_config = echo_config
        self.kv_layout = kv_layout_of(device)
        self.growth_policy = growth_policy(echo_config)
        # The auto budget's inputs: the target pass cost model (the runner measures it at
        # start-up and refines it each step), the drafting time per step by batch size, and
        # (to decide whether a step is worth drafting at all) the acceptance per request.
        self.cost_model: CostModel | None = None
        self.draft_cost = LinearCost()
        # The rest of a step's time, by batch size: scheduling, input preparation, output
        # processing (measured as the time between two drafting calls, less the drafting
        # and the target pass between them; the runner times the pass).
        self.step_overhead = LinearCost()
        # Writing the draft KV that undrafted steps owed, by the rows owed: the price of a
        # switch to drafting.
        self.catch_up_cost = LinearCost()
        self.last_pass_seconds: float | None = None
        self._last_propose: _DraftingCall | None = None
        self.acceptance_curve = AcceptanceCurve(echo_config.num_draft_tokens - 1)
        self.last_budget: int | None = None
        self.budget_sum = 0  # over the steps a budget limited (num_budgeted_steps)
        self.num_budgeted_steps = 0
        # steps drafted with the auto budget, and steps not drafted because speculation
        # did not pay (host-side counts)
        self.num_drafted_steps = 0
        self.num_undrafted_steps = 0
        # verification steps, trees with drafts verified, their draft tokens, and those accepted
        self.num_verified_steps = 0
        self.num_verified_trees = 0
        self.num_verified_drafts = 0
        self.num_proposed_drafts = 0  # draft tokens propose returned (verified ones are never more)
        self.num_accepted_drafts = 0
        # request-steps whose draft scores were NaN or infinite (a broken head): no drafts verified
        self.num_broken_drafts = 0
        self.num_broken_drafts_pending: torch.Tensor | int = 0
        # what drafted and undrafted steps really gave, and the steps that take the choice
        # not expected to be better so that both measurements stay current
        self.measured_goodput = MeasuredGoodput()
        # the verified drafts' predicted and accepted count since the last decision
        self.verified_since_propose = (0.0, 0)
        # per batch-size class, as the measurements are: a batch filling up or draining passes
        # through smaller classes, whose choices must not restart the wait of the full batch's
        self.explorations: dict[int, Exploration] = {}
        self.max_exploration_share = MAX_EXPLORATION_SHARE
        self.exploring = False  # this step drafts although not drafting was expected to be better
        self.num_exploration_steps = 0
        # by request id: first-pass inputs whose draft KV is owed; requests with a hole
        self.owed_rows: dict[str, OwedRows] = {}
        self.undraftable: set[str] = set()
        # Elastic depth (echo with a budget): draft one depth beyond the deepest node the
        # budget bought in recent steps, so a tight budget also stops paying for drafts
        # it never verifies, and an ample one lets trees grow back to `steps`.
        self.recent_bought_depths: deque[int] = deque(maxlen=ELASTIC_DEPTH_WINDOW)
        # gate decisions so far (host-side counts, read by logs and tests)
        self.num_gate_checks = 0
        self.num_gate_stops = 0
        self.gate_by_depth: dict[int, list[int]] = {}  # judge depth -> [checks, stops]
        # nodes the budget bought on the requests' most confident paths (go deep) and in all;
        # device scalars, read by stats() only (no host transfer per step)
        self.nodes_bought_deep: torch.Tensor | int = 0
        self.nodes_bought: torch.Tensor | int = 0
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
        self.drafted_values: torch.Tensor | None = None  # [B, N] their nodes' path probabilities

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
        """Draft one tree per request; returns each request's drafts in tree order (none
        for any request when the step is not worth drafting)."""
        batch = next_token_ids.shape[0]
        req_ids = self.model_runner.input_batch.req_ids[:batch]
        called = time.perf_counter()
        self._observe_step(called, req_ids)
        owed_rows = sum(self.owed_rows[req_id].num_rows for req_id in req_ids if req_id in self.owed_rows)
        if not self._speculation_pays(batch, owed_rows):
            self._owe_first_pass(req_ids, target_token_ids, target_positions, target_hidden_states,
                                 next_token_ids, token_indices_to_sample, common_attn_metadata)
            self.drafted_trees = self.drafted_calibration = None
            self.num_undrafted_steps += 1
            self._last_propose = _DraftingCall(called, time.perf_counter() - called, set(req_ids), False, 0.0)
            return [[] for _ in range(batch)]
        self._catch_up(req_ids, target_positions, common_attn_metadata)
        started = time.perf_counter()
        catch_up_seconds = started - called
        if owed_rows:
            self.catch_up_cost.observe(owed_rows, catch_up_seconds)
        root_logits_hidden, root_hidden, root_positions, cad = self._first_pass(
            target_token_ids, target_positions, target_hidden_states, next_token_ids,
            token_indices_to_sample, common_attn_metadata,
        )
        caps = self.tree_sizes(batch) - 1  # draft tokens each request may verify
        if self.undraftable:
            caps[[i for i, req_id in enumerate(req_ids) if req_id in self.undraftable]] = 0
        tree = self._expand(root_logits_hidden, root_hidden, root_positions + 1, next_token_ids, cad, caps)
        self.drafted_trees = tree
        drafts = [row[1:n] for row, n in zip(tree.tokens.tolist(), tree.num_nodes.tolist())]
        self.num_proposed_drafts += sum(map(len, drafts))
        self._count_broken_drafts(batch)
        self.draft_cost.observe(batch, time.perf_counter() - started)
        self._last_propose = _DraftingCall(called, time.perf_counter() - called, set(req_ids), True, catch_up_seconds)
        return drafts

    def _count_broken_drafts(self, batch: int) -> None:
        """Warn (once) when the head's outputs were not numbers: those requests decode without
        speculation. The device work is done by now (the drafts reached the host): no stall."""
        broken = int(self.num_broken_drafts_pending)
        if broken and not self.num_broken_drafts:
            logger.warning("echo-vllm: the draft head produced NaN or infinite scores for %d of %d requests; "
                           "they verify no drafts (decoding stays exact, without speculation's gain). "
                           "Check the head's checkpoint.", broken, batch)
        self.num_broken_drafts += broken

    def count_verified(self, trees: int, drafts: int, accepted: int) -> None:
        """One verification step: trees with drafts, their draft tokens, those accepted. Warns
        (once) when the target has rejected every one of the first NO_ACCEPTANCE_WARNING_DRAFTS
        (a head of another target?)."""
        before = self.num_verified_drafts
        self.num_verified_steps += trees > 0
        self.num_verified_trees += trees
        self.num_verified_drafts += drafts
        self.num_accepted_drafts += accepted
        if self.num_accepted_drafts == 0 and before < NO_ACCEPTANCE_WARNING_DRAFTS <= self.num_verified_drafts:
            logger.warning(
                "echo-vllm: the target rejected all of the head's first %d draft tokens: is it a head for this "
                "target? Decoding stays exact; %s", self.num_verified_drafts,
                "echo's auto budget drafts only where it pays (now almost never)" if self.auto_budget()
                else "with this policy every step still drafts and verifies (budget 'auto' would stop it)")

    def stats(self) -> dict:
        """What echo decided so far (counters since start-up; callers take differences):
        its gate as it stands (calibrated online or not), its budget, which steps it drafted,
        and the inputs of those decisions (acceptance curve, target cost model)."""
        policy = self.growth_policy
        curve = self.acceptance_curve
        return {
            "policy": policy.name,
            "gate_statistic": policy.statistic if policy.name == "echo" else None,
            "judge_depth": list(policy.check_depths),
            "threshold": list(policy.thresholds),
            "remaining_num_draft_tokens": policy.stopped_num_draft_tokens,
            "calibrating": self.online_calibration_steps is not None,
            "budget": self.echo_config.budget,
            "budget_sum": self.budget_sum,
            "num_budgeted_steps": self.num_budgeted_steps,
            "num_drafted_steps": self.num_drafted_steps,
            "num_undrafted_steps": self.num_undrafted_steps,
            "num_exploration_steps": self.num_exploration_steps,
            "num_broken_drafts": self.num_broken_drafts,
            "num_gate_checks": self.num_gate_checks,
            "num_gate_stops": self.num_gate_stops,
            "gate_by_depth": {depth: list(counts) for depth, counts in self.gate_by_depth.items()},
            "num_verified_steps": self.num_verified_steps,
            "num_verified_trees": self.num_verified_trees,
            "num_verified_drafts": self.num_verified_drafts,
            "num_proposed_drafts": self.num_proposed_drafts,
            "num_accepted_drafts": self.num_accepted_drafts,
            "nodes_bought": int(self.nodes_bought),
            "nodes_bought_deep": int(self.nodes_bought_deep),
            "acceptance_curve": None if curve.gains_per_request is None else {
                "drafts_per_request": curve.grid.tolist(),
                "accepted_per_request": (curve.scale * curve.gains_per_request).tolist()},
            "cost_model": None if self.cost_model is None else self.cost_model.to_dict(),
        }

    def draft_seconds(self, batch: int) -> float:
        """Expected seconds to draft a step of `batch` requests (0 before any was timed)."""
        return self.draft_cost(batch) or 0.0

    def step_seconds_besides_drafting(self, batch: int) -> float:
        """Expected seconds of a step of `batch` requests outside the target pass and drafting."""
        return self.step_overhead(batch) or 0.0

    def _observe_step(self, now: float, req_ids: list[str]) -> None:
        """What the previous drafting decision led to, timed up to this call: the step's other
        work (the time less that call and the target pass since), when requests ran through
        (no idle engine in between); and the step's goodput under that decision, when the
        same requests ran through (no prefill of a new one in the pass). The draft KV that
        undrafted steps owed, written by the step, is the price of changing from not drafting
        to drafting, paid once: it is left out of the goodput of drafted steps (an exploration
        pays all of it, and would make drafting step after step look dearer than it is) and
        kept in what the exploration cost (MeasuredGoodput.latest)."""
        (predicted, accepted), self.verified_since_propose = self.verified_since_propose, (0.0, 0)
        last = self._last_propose
        if last is None:
            return
        if self.last_pass_seconds is not None and not last.req_ids.isdisjoint(req_ids):
            self.step_overhead.observe(len(req_ids), now - last.called - last.seconds - self.last_pass_seconds)
        if last.req_ids == set(req_ids):
            batch = len(req_ids)
            self.measured_goodput.observe(batch, last.drafted, now - last.called, predicted, accepted,
                                          switch_seconds=last.catch_up_seconds)

    def observe_acceptance(self, predicted: float, accepted: int) -> None:
        """One verification of trees echo drafted: the summed path probabilities of their
        verified draft nodes and how many of those the target accepted."""
        self.acceptance_curve.observe_verified(predicted, accepted)
        self.verified_since_propose = (self.verified_since_propose[0] + predicted,
                                       self.verified_since_propose[1] + accepted)

    def forget(self, req_id: str) -> None:
        """A finished request: nothing is owed for it any more."""
        self.owed_rows.pop(req_id, None)
        self.undraftable.discard(req_id)

    # ---- steps not drafted ------------------------------------------------------------

    def _speculation_pays(self, batch: int, owed_rows: int) -> bool:
        """Echo with the auto budget drafts a step only when speculation is expected to beat
        a plain step at this batch size: as measured (core.budget.MeasuredGoodput) once
        drafted and undrafted steps were both measured at this batch size, as its model
        predicts (core.budget.speculation_pays) before; and, when the batch owes `owed_rows`
        rows of draft KV from undrafted steps, only if what drafting gains over the next
        SWITCH_HORIZON_STEPS steps covers writing them. Until the target's cost model is
        measured and MIN_DRAFTED_STEPS steps were drafted, it drafts; and now and then a step
        takes the other choice (core.budget.Exploration). The same decision on every rank."""
        self.exploring = False
        if not (self.auto_budget() and self.cost_model is not None and self.num_drafted_steps >= MIN_DRAFTED_STEPS):
            return True
        measured = self.measured_goodput
        ratio = measured.ratio(batch)
        pays = (ratio >= 1.0 if ratio is not None else
                speculation_pays(batch, self.acceptance_curve, self.cost_model, self.draft_cost(batch),
                                 self.step_seconds_besides_drafting(batch)))
        # A switch is dear on a full batch (on this CPU at batch 64, 6,000 owed rows, prompts
        # included, took about 3 s: ten plain steps): it is not taken on a close ratio or the
        # model's word, nor where nothing measured the gain at this class yet (exploring
        # will). Once an exploration paid for it, nothing is owed and the ratio alone decides.
        if pays and owed_rows:
            gain, switch_seconds = measured.drafting_gain(batch, SWITCH_HORIZON_STEPS), self.catch_up_cost(owed_rows)
            if switch_seconds is not None and (gain is None or gain < switch_seconds):
                pays = False
        # What the latest exploration cost, all told (a drafted one also wrote the draft KV
        # owed), sets the wait for the next one.
        cost = measured.latest_cost(batch, drafted=not pays)
        shared_pays, shared_cost = same_on_every_rank([float(pays), cost])
        shared_pays = bool(shared_pays)
        exploration = self.explorations.get(batch.bit_length())
        if exploration is None:  # not setdefault: that would build one every step
            exploration = self.explorations[batch.bit_length()] = Exploration(
                EXPLORATION_INTERVAL, MAX_EXPLORATION_INTERVAL, self.max_exploration_share)
        explore = exploration.due(shared_pays, shared_cost)
        self.num_exploration_steps += explore
        self.exploring = explore and not shared_pays
        return shared_pays != explore

    def _owe_first_pass(self, req_ids, target_token_ids, target_positions, target_hidden_states,
                        next_token_ids, token_indices_to_sample, cad) -> None:
        """A step not drafted: keep the first pass's inputs (shifted tokens, combined target
        hidden states) of each request's valid rows, to write their draft KV later. One copy
        of the step's inputs, which its requests' owed rows share: on a full batch a copy
        per request costs more than the rest of this work."""
        hidden = self.model.combine_hidden_states(target_hidden_states)
        num_tokens, last_rows, cad = self.set_inputs_first_pass(
            target_token_ids=target_token_ids, next_token_ids=next_token_ids, target_positions=target_positions,
            target_hidden_states=hidden, token_indices_to_sample=token_indices_to_sample, cad=cad,
            num_rejected_tokens_gpu=None,
        )
        step = OwedStep(self.input_ids[:num_tokens].clone(), self.hidden_states[:num_tokens].clone())
        starts = cad.query_start_loc_cpu[:-1].tolist()
        ends = (last_rows.cpu() + 1).tolist()  # rows after a request's sampled row were rejected
        first_positions = target_positions[cad.query_start_loc[:-1]].cpu().tolist()
        for req_id, start, end, first in zip(req_ids, starts, ends, first_positions):
            if req_id in self.undraftable:
                continue
            owed = self.owed_rows.get(req_id)
            if owed is None:
                owed = self.owed_rows[req_id] = OwedRows(first)
            if not owed.add(first, step, start, end):
                del self.owed_rows[req_id]
                self.undraftable.add(req_id)

    def _catch_up(self, req_ids, target_positions, cad) -> None:
        """Write the draft KV the batch's requests owe, in one batched draft-layer pass (the
        first pass's computation for those rows; attention causal over prefix + owed rows)."""
        owing = [(row, req_id) for row, req_id in enumerate(req_ids) if req_id in self.owed_rows]
        if not owing:
            return
        rows = torch.tensor([row for row, _ in owing])
        first_positions = target_positions[cad.query_start_loc[rows.to(self.device)]].cpu().tolist()
        batch_rows, chunks = [], []
        for (row, req_id), first in zip(owing, first_positions):
            owed = self.owed_rows.pop(req_id)
            if owed.end < first:  # rows missing in between: the draft KV has a hole
                self.undraftable.add(req_id)
                continue
            tokens, hidden = owed.rows_before(first)
            if len(tokens):
                batch_rows.append(row)
                chunks.append((owed.start, tokens, hidden))
        if not chunks:
            return
        device = self.device
        # rows padded to a power of two: each new pass shape costs the CPU's GEMM library a
        # new kernel (tens of ms the first time), and the owed counts vary from step to step
        width = 1 << (max(len(tokens) for _, tokens, _ in chunks) - 1).bit_length()
        count, hidden_size = len(chunks), chunks[0][2].shape[-1]
        tokens = torch.zeros(count, width, dtype=torch.long, device=device)
        hidden = torch.zeros(count, width, hidden_size, dtype=chunks[0][2].dtype, device=device)
        for i, (_, t, h) in enumerate(chunks):
            tokens[i, : len(t)], hidden[i, : len(t)] = t, h
        lengths = torch.tensor([len(t) for _, t, _ in chunks], device=device)
        starts = torch.tensor([start for start, _, _ in chunks], device=device)
        valid = torch.arange(width, device=device) < lengths.view(-1, 1)
        positions = starts.view(-1, 1) + torch.arange(width, device=device) * valid  # padding: the start
        causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
        block_table = cad.block_table_tensor[torch.tensor(batch_rows, device=device)]
        prefix_k, prefix_v = self._draft_prefix(block_table, starts)
        _, _, k, v = self._draft_step(tokens, hidden, positions, None, None, causal.expand(count, -1, -1),
                                      prefix_k, prefix_v, starts)
        slots = slots_of(block_table, positions, self.block_size)[valid]
        self.kv_layout.scatter(self._draft_attn_layer().kv_cache, slots, k[valid], v[valid])

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

    def _draft_attn_layer(self):
        (layer_name,) = self._draft_attn_layer_names
        attn_layer = self.vllm_config.compilation_config.static_forward_context[layer_name]
        if self.kv_layout is CPU_PACKED:
            check_isa(attn_layer.isa)
        return attn_layer

    def _draft_prefix(self, block_table: torch.Tensor, prefix_lens: torch.Tensor):
        """The draft layer's K/V of positions 0..prefix_lens-1 of each request, [A, P, Hkv, Dh]
        padded (block_table [A, nblk]); an empty prefix reads one slot the caller masks out."""
        slots = prefix_slots(block_table, prefix_lens.clamp(min=1), self.block_size)
        k, v = self.kv_layout.gather(self._draft_attn_layer().kv_cache, slots.flatten())
        return k.view(*slots.shape, *k.shape[1:]), v.view(*slots.shape, *v.shape[1:])

    def _expand(self, root_logits_hidden, root_hidden, first_positions, root_tokens, cad, caps) -> Tree:
        """Grow each request's candidate pool depth by depth, then select the verified tree.

        After each depth the growth policy checks, the requests it stops leave the draft
        batch (one host transfer there, none elsewhere). first_positions [B]: position of a
        depth-1 node's draft step (= committed length). caps [B] (host): draft tokens each
        request may verify; requests capped at 0 never grow.
        """
        topk, steps, policy = self.echo_config.topk, self.echo_config.steps, self.growth_policy
        batch, device = root_hidden.shape[0], root_hidden.device
        depth_of = pool_depths(steps, topk, device)
        frontier, pool = root_frontier(*self._topk_children(root_logits_hidden, topk))
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
        statistics = []  # per depth [B, S], when recording (the policy is static then)
        for depth in range(1, self._depths_to_draft()):
            if self.recording:
                statistics.append(torch.stack([gate_statistic(growing.frontier.scores, s) for s in STATISTICS], -1))
            if growing.rows.numel() == 0:
                break
            if depth in policy.check_depths:
                keep = policy.keep_growing(depth, growing.frontier.scores, pool.scores[growing.rows],
                                           depth_of[: pool.scores.shape[1]])
                keep_cpu = keep.cpu()  # the one host transfer of this depth
                stops = int((~keep_cpu).sum())
                self.num_gate_checks += keep_cpu.numel()
                self.num_gate_stops += stops
                checked = self.gate_by_depth.setdefault(depth, [0, 0])
                checked[0] += keep_cpu.numel()
                checked[1] += stops
                if not bool(keep_cpu.all()):
                    stopped = growing.rows[~keep_cpu.to(device)]
                    caps[stopped] = caps[stopped].clamp(max=policy.stopped_num_draft_tokens - 1)
                    growing = growing.select(keep_cpu.nonzero().flatten().to(device))
                if growing.rows.numel() == 0:
                    break
            if growing.prefix is None:  # gathered once, for the requests that really grow
                block_table = cad.block_table_tensor[growing.rows]
                growing = replace(growing, prefix=self._draft_prefix(block_table, growing.first_positions))
            growing, pool = self._grow(growing, pool, depth)
        # A head that outputs NaN (a corrupt or diverged checkpoint) must not steer the budget,
        # the gate or the acceptance curve: such a request verifies no draft this step.
        broken = pool.scores.isnan().any(dim=1) | pool.scores.isposinf().any(dim=1)
        pool = replace(pool, scores=pool.scores.masked_fill(broken.unsqueeze(1), -math.inf))
        caps = caps.masked_fill(broken, 0)
        self.num_broken_drafts_pending = broken.sum()  # read after the drafts' host transfer
        tree = self._select(pool, root_tokens.long(), caps, depth_of[: pool.scores.shape[1]])
        self.drafted_values = None
        if self.auto_budget():  # the acceptance scale compares them with what is accepted
            node_scores = pool.scores.gather(1, tree.pool_idx.clamp(min=0))
            self.drafted_values = torch.where(tree.pool_idx >= 0, node_scores.exp(), 0.0)
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

    def auto_budget(self) -> bool:
        """Echo spending a budget it sets itself (and deciding which steps to draft)."""
        return self._elastic_depth() and self.echo_config.budget == "auto"

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
        eye = torch.eye(topk, dtype=torch.bool, device=positions.device).expand(count, -1, -1)
        seen_self = torch.cat([growing.seen, eye], dim=2)  # ancestors, then itself
        logits_hidden, hidden, k, v = self._draft_step(
            growing.frontier.tokens, growing.parent_hidden, positions, growing.tree_k, growing.tree_v,
            seen_self, prefix_k, prefix_v, growing.first_positions,
        )
        tree_k = k if growing.tree_k is None else torch.cat([growing.tree_k, k], dim=1)
        tree_v = v if growing.tree_v is None else torch.cat([growing.tree_v, v], dim=1)
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
            on_paths = most_confident_paths(pool.scores, pool.parent_idx, depth_of)
            order = allocation_order(pool.scores, pool.parent_idx, depth_of, caps, on_paths)
            if budget == "auto":
                node_values = pool.scores.flatten()[order].exp()
                self.acceptance_curve.observe(node_values, batch)
                self.num_drafted_steps += 1
                # no cost model yet (start-up passes): every node the caps allow
                budget = None if self.cost_model is None else goodput_budget(
                    node_values * self.acceptance_curve.scale, batch, self.cost_model,
                    self.draft_seconds(batch) + self.step_seconds_besides_drafting(batch))
                if budget is not None and self.exploring:
                    budget = max(budget, batch)  # measure at least one draft per request
                (shared,) = same_on_every_rank([-1 if budget is None else budget])
                budget = None if shared < 0 else int(shared)
            self.last_budget = budget
            if budget is not None:
                self.budget_sum += budget
                self.num_budgeted_steps += 1
            chosen = allocate(order, batch, pool_size, budget)
            self.nodes_bought = self.nodes_bought + chosen.sum()
            self.nodes_bought_deep = self.nodes_bought_deep + (chosen & on_paths).sum()
        else:
            chosen = best_nodes(pool.scores, caps)
        return tree_from_chosen(pool, root_tokens, chosen)

    def tree_sizes(self, batch: int) -> torch.Tensor:
        """Most verified nodes per request [B], root included. Every request may differ; the
        policies give each num_draft_tokens."""
        return torch.full((batch,), self.echo_config.num_draft_tokens, dtype=torch.int64)

    def _draft_step(
        self, tokens, parent_hidden, positions, tree_k, tree_v, mask, prefix_k, prefix_v, prefix_lens,
    ):
        """One EAGLE-3 draft-layer pass over N new rows per request (as vLLM's llama_eagle3
        layer computes it), attending to the prefix, then to the earlier tree keys and the
        new rows' own keys as mask [B, N, M + N] allows.

        tokens [B, N]; parent_hidden [B, N, Hd] (the hidden state each row takes as input);
        positions [B, N]. Returns the post-norm hidden states (for logits), the hidden states
        their children take as input, and the rows' own K and V [B, N, Hkv, Dh].
        """
        layer = self.model.model.layers[0]
        attn = layer.self_attn
        batch, topk = tokens.shape
        embeds = layer.input_layernorm(self.model.model.embed_input_ids(tokens.flatten()))
        hidden, residual = layer._residual_norm(hidden_states=parent_hidden.reshape(batch * topk, -1))
        qkv, _ = attn.qkv_proj(torch.cat([embeds, hidden], dim=-1))
        q, k, v = qkv.split([attn.q_size, attn.kv_size, attn.kv_size], dim=-1)
        # vLLM's CPU rotary kernel reads positions as a dense array: no stride-0 views
        q, k = attn.rotary_emb(positions.flatten().contiguous(), q, k)
        q = q.view(batch, topk, attn.num_heads, attn.head_dim)
        k = k.view(batch, topk, attn.num_kv_heads, attn.head_dim)
        v = v.view(batch, topk, attn.num_kv_heads, attn.head_dim)
        keys = k if tree_k is None else torch.cat([tree_k, k], dim=1)
        values = v if tree_v is None else torch.cat([tree_v, v], dim=1)
        out = tree_attention(q, keys, values, mask, prefix_k, prefix_v, prefix_lens, attn.scaling)
        out, _ = attn.o_proj(out.reshape(batch * topk, -1))
        out, residual = layer.post_attention_layernorm(out, residual)
        out = layer.mlp(out)
        normed, prenorm = self.model.model.norm(out, residual)
        next_hidden = normed if self.model.model.norm_output else prenorm
        return normed, next_hidden, k, v


@dataclass(frozen=True)
class _DraftingCall:
    """One call of the drafter (one step's drafting decision), timed."""

    called: float  # time.perf_counter() at the call
    seconds: float  # the call's own time
    req_ids: set[str]
    drafted: bool
    catch_up_seconds: float  # of `seconds`, writing the draft KV owed by undrafted steps


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
    prefix: tuple | None  # ([A, P, Hkv, Dh], same) draft K/V of the committed positions, once needed

    def select(self, keep: torch.Tensor) -> "_Growing":
        """The rows at `keep` [A'] (indices into these rows)."""
        def take(t):
            return None if t is None else t[keep]

        frontier = Frontier(*(take(getattr(self.frontier, f.name)) for f in fields(Frontier)))
        return _Growing(self.rows[keep], frontier, self.parent_hidden[keep], self.first_positions[keep],
                        take(self.tree_k), take(self.tree_v), self.seen[keep],
                        None if self.prefix is None else tuple(take(t) for t in self.prefix))


@dataclass(frozen=True)
class OwedStep:
    """The first-pass inputs of one undrafted step, all its rows: shifted input ids [T] and
    combined target hidden states [T, Hd]."""

    tokens: torch.Tensor
    hidden: torch.Tensor


@dataclass
class OwedRows:
    """First-pass inputs of one request's rows whose draft KV was not written (steps not
    drafted): consecutive positions start..end-1, as row ranges of the steps' inputs."""

    start: int
    end: int = field(init=False)
    chunks: list[tuple[OwedStep, int, int]] = field(default_factory=list)  # (step, first row, end row)

    def __post_init__(self):
        self.end = self.start

    def add(self, first: int, step: OwedStep, row_start: int, row_end: int) -> bool:
        """The step's rows row_start..row_end-1, at positions first, first+1, ... Rows already
        owed from `first` on are replaced (a request recomputed after preemption). False when
        the owed rows would leave a hole or exceed MAX_OWED_ROWS: the caller gives the request up."""
        if first > self.end:
            return False
        if first < self.end:
            tokens, hidden = self.rows_before(first)
            self.chunks, self.start = [(OwedStep(tokens, hidden), 0, len(tokens))], min(self.start, first)
        self.chunks.append((step, row_start, row_end))
        self.end = first + row_end - row_start
        return self.num_rows <= MAX_OWED_ROWS

    @property
    def num_rows(self) -> int:
        return self.end - self.start

    def rows_before(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The owed rows at positions below `position`: tokens [n], hidden [n, Hd]."""
        count = max(0, min(position, self.end) - self.start)
        tokens = torch.cat([step.tokens[a:b] for step, a, b in self.chunks])
        hidden = torch.cat([step.hidden[a:b] for step, a, b in self.chunks])
        return tokens[:count], hidden[:count]


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
