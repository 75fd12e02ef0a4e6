"""Draft trees inside vLLM's V1 model runner (a mixin over GPUModelRunner / CPUModelRunner).

vLLM verifies chains. Its scheduler and runner still carry a tree unchanged if the drafts of
a request are a flat list in tree order (every parent before its children): truncating the
list keeps a connected tree, KV slots stay one per node, and vLLM already computes logits
for every scheduled draft row. Echo adds, per step:

  _prepare_inputs            positions of tree rows = prefix + depth (slots stay distinct)
  _build_attention_metadata  the ancestor masks, for the attention backend
  _sample                    tree verification, then the accepted nodes' KV moved to the
                             slots of a chain (prefix+1, prefix+2, ...), which is what the
                             scheduler's rollback assumes
  propose_draft_token_ids    the accepted nodes' rows moved the same way (tokens, positions,
                             target hidden states), so vLLM's EAGLE input prep, written for
                             chains, hands the drafter the accepted path; then echo's
                             proposer drafts the next trees

The step's trees must live from _prepare_inputs to drafting, across vLLM's own call chain,
so they are kept on the runner (`_echo_step`), as are the drafted trees until their drafts
are scheduled (`_echo_trees`, by request id).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import vllm
from vllm.config import VllmConfig
from vllm.distributed import get_tensor_model_parallel_rank
from vllm.model_executor.layers.attention_layer_base import AttentionLayerBase
from vllm.config.vllm import get_layers_from_vllm_config
from vllm.forward_context import set_forward_context
from vllm.v1.outputs import DraftTokenIds

from echo_vllm.core.budget import CostModel, compute_bound, measurement_sizes
from echo_vllm.cost_cache import cost_key, cost_path, cpu_isa, cpu_name, read_cost, write_cost
from echo_vllm.core.commit import (
    accepted_moves,
    branching_trees,
    flatten_trees,
    locate_roots,
    moved_positions,
    moved_rows,
    node_positions,
    node_rows,
    pad_trees,
    scheduled_parents,
)
from echo_vllm.core.tree import ancestor_mask
from echo_vllm.core.verify import Verdict
from echo_vllm.device import synchronizing_clock
from echo_vllm.kernels.paged_kv import check_isa, move_kv, slots_of
from echo_vllm.kernels.tree_attention import METADATA_ATTRIBUTE, TreeAttentionBatch, tree_attention_batch
from echo_vllm.log import logger
from echo_vllm.proposers.eagle_tree import DraftResult, EchoProposer, kv_layout_of
from echo_vllm.scheduler_patches.batch_policy import BatchPolicy
from echo_vllm.scheduler_patches.gate_calibration import GateCalibration
from echo_vllm.stats import EchoCounters
from echo_vllm.tensor_parallel import same_on_every_rank
from echo_vllm.tree_sampler import sample_trees

# Draft tokens all rejected after which echo warns that the head may not fit the target.
NO_ACCEPTANCE_WARNING_DRAFTS = 1000


@dataclass(frozen=True)
class TreeStep:
    """The draft trees verified in one step. R requests, N nodes (padded); node 0 = root."""

    rows: list[int]  # batch rows of the requests verifying drafts, increasing
    root_rows: torch.Tensor  # [R] int64: token row of each root in the step's batch
    tokens: torch.Tensor  # [R, N] int64, padding 0
    parent_idx: torch.Tensor  # [R, N] int64, -1 at roots and in padding
    num_nodes: torch.Tensor  # [R] int64
    prefix_lens: torch.Tensor  # [R] int64: tokens in the KV cache before each root
    block_table: torch.Tensor  # [R, nblk] int32: each request's KV blocks
    attention: TreeAttentionBatch | None  # the trees that are not chains


@dataclass(frozen=True)
class PendingTree:
    """A drafted tree waiting for its drafts to be scheduled."""

    drafts: list[int]  # the draft tokens, in tree order (the root excluded)
    parent_idx: list[int]  # for nodes 0..len(drafts): -1 for the root
    # for nodes 0..len(drafts): the draft's path probability (0 for the root), with the auto budget
    values: list[float] | None
    # when calibrating: gate statistics by depth [D-1][S], and each node's score rank
    calibration: tuple[list[list[float]], list[int]] | None = None


def predicted_by_depth(parent_idx: list[int], values: list[float]) -> list[float]:
    """A tree's node values (path probabilities) summed by depth 1, 2, ...; parents come
    before their children, node 0 is the root (parent -1, depth 0, value 0).

    Worked example: parents [-1, 0, 0, 1], values [0, .6, .2, .3] -> [.8, .3].
    """
    depth = [0] * len(parent_idx)
    sums: list[float] = []
    for node in range(1, len(parent_idx)):
        depth[node] = depth[parent_idx[node]] + 1
        if depth[node] > len(sums):
            sums.append(0.0)
        sums[depth[node] - 1] += values[node]
    return sums


class EchoRunnerMixin:
    """Put echo's proposer and tree verification into vLLM's V1 runner."""

    def __init__(self, vllm_config: VllmConfig, device, echo_config):
        super().__init__(vllm_config, device)
        self.echo_config = echo_config
        self.echo_counters = EchoCounters()
        # every timing behind the cost model waits for the device first (CUDA is asynchronous)
        self._echo_clock = synchronizing_clock(torch.device(device))
        self.echo_policy = BatchPolicy(echo_config, self.echo_counters, share=same_on_every_rank,
                                       clock=self._echo_clock)
        self.echo_calibration = GateCalibration(echo_config, self.echo_policy)
        if hasattr(self, "drafter"):  # only the last pipeline stage drafts
            self.drafter = EchoProposer(vllm_config, device, echo_config, runner=self,
                                        policy=self.echo_policy, counters=self.echo_counters)
        self._echo_trees: dict[str, PendingTree] = {}
        self._echo_step: TreeStep | None = None
        # token rows (source, destination) of accepted nodes, for the drafter's inputs (None: none moved)
        self._echo_row_moves: tuple[torch.Tensor, torch.Tensor] | None = None
        self._echo_target_kv_caches: list[torch.Tensor] | None = None
        self._echo_kv_layout = kv_layout_of(device)
        # (start time, tokens) of the target pass in flight, timed for the auto budget
        self._echo_pass_start: tuple[float, int] | None = None

    # ---- scheduling state -------------------------------------------------------------

    def _update_states(self, scheduler_output):
        for req_id in scheduler_output.finished_req_ids:
            self._echo_trees.pop(req_id, None)
            self.echo_calibration.forget(req_id)
        return super()._update_states(scheduler_output)

    def _tree_parents(self, req_id: str, drafts: list[int]) -> list[int]:
        """Parents of the request's scheduled drafts, root included: its pending tree cut where
        the scheduler cut it, or a chain (core.commit.scheduled_parents)."""
        pending = self._echo_trees.get(req_id)
        if pending is None:
            return scheduled_parents(None, None, drafts)
        return scheduled_parents(pending.drafts, pending.parent_idx, drafts)

    # ---- inputs -----------------------------------------------------------------------

    def _prepare_inputs(self, scheduler_output, num_scheduled_tokens: np.ndarray):
        result = super()._prepare_inputs(scheduler_output, num_scheduled_tokens)
        self._echo_step = self._build_tree_step(scheduler_output, num_scheduled_tokens)
        self._echo_row_moves = None
        if self._echo_step is not None:
            step = self._echo_step
            rows, positions = node_positions(step.root_rows, step.num_nodes, step.parent_idx, step.prefix_lens)
            self.positions[rows.to(self.device)] = positions.to(self.positions)
        return result

    def _build_tree_step(self, scheduler_output, num_scheduled_tokens) -> TreeStep | None:
        drafted = sorted(
            (self.input_batch.req_id_to_index[req_id], req_id, drafts)
            for req_id, drafts in scheduler_output.scheduled_spec_decode_tokens.items()
            if drafts
        )
        if not drafted:
            return None
        rows = [row for row, _, _ in drafted]
        tokens, parent_idx, num_nodes = pad_trees(
            [drafts for _, _, drafts in drafted],
            [self._tree_parents(req_id, drafts) for _, req_id, drafts in drafted],
        )

        def at_rows(array: np.ndarray) -> torch.Tensor:  # the drafting requests' entries
            return torch.as_tensor(array[rows], dtype=torch.int64)

        root_rows, prefix_lens = locate_roots(
            at_rows(self.query_start_loc.np[1:]), at_rows(self.input_batch.num_computed_tokens_cpu),
            at_rows(num_scheduled_tokens), num_nodes,
        )
        block_table = self.input_batch.block_table[0].get_cpu_tensor()[rows]
        step = TreeStep(rows, root_rows, tokens, parent_idx, num_nodes, prefix_lens, block_table, None)
        return dataclasses.replace(step, attention=self._tree_attention(step))

    def _tree_attention(self, step: TreeStep) -> TreeAttentionBatch | None:
        """Attention inputs for the trees that are not chains (the causal kernel is right
        for chains), on the model's device."""
        trees = branching_trees(step.parent_idx)
        if len(trees) == 0:
            return None
        rows, is_node = node_rows(step.root_rows, step.num_nodes, step.parent_idx.shape[1])
        return tree_attention_batch(
            rows[trees], is_node[trees], ancestor_mask(step.parent_idx[trees]), step.block_table[trees],
            step.prefix_lens[trees], self.input_batch.block_table[0].block_size, self.device,
        )

    def _build_attention_metadata(self, *args, **kwargs):
        attn_metadata, spec_common = super()._build_attention_metadata(*args, **kwargs)
        step = self._echo_step
        if step is not None and step.attention is not None and isinstance(attn_metadata, dict):
            draft_layers = getattr(self.drafter, "_draft_attn_layer_names", set())
            for name, metadata in attn_metadata.items():
                if name not in draft_layers:
                    setattr(metadata, METADATA_ATTRIBUTE, step.attention)
        return attn_metadata, spec_common

    def echo_stats(self) -> dict:
        """What echo decided so far (counters since start-up; callers take differences), its
        gate and budget as they stand, and the inputs of those decisions."""
        return {**self.echo_counters.to_dict(), **self.echo_policy.stats(),
                "calibrating": self.echo_calibration.online_steps is not None}

    # ---- the cost model behind echo's automatic budget --------------------------------

    def measure_target_cost(self, repeats: int = 5) -> CostModel:
        """The cost model of target passes, logits included (verification computes them at
        every token it verifies): read from the cache when this model, machine and vLLM
        measured it before (cost_cache.py), else measured and cached. The auto budget starts
        from it and refines it online. Rank 0 decides and its model holds on every rank
        (ranks must run the same passes: they all-reduce)."""
        max_tokens = min(self.scheduler_config.max_num_batched_tokens,
                         self.scheduler_config.max_num_seqs * self.echo_config.num_draft_tokens)
        sizes = measurement_sizes(max_tokens)
        key = self._cost_key(sizes)
        path = cost_path(key)
        cached = read_cost(path, key) if self._is_first_rank() else None
        tokens, seconds = self._rank0_points(cached, len(sizes))
        if tokens:
            logger.info("echo-vllm: target pass cost model from cache %s", path)
        else:
            tokens, seconds = self._measure_cost(sizes, repeats, path)
            if self._is_first_rank():
                write_cost(path, key, tokens, seconds)
        cost = CostModel(tokens, seconds)
        self.echo_policy.cost_model = cost
        logger.info("echo-vllm: target pass cost model (tokens -> seconds): %s",
                    ", ".join(f"{t}: {s:.4f}" for t, s in zip(cost.to_dict()["tokens"], cost.to_dict()["seconds"])))
        return cost

    def _measure_cost(self, sizes: list[int], repeats: int, path) -> tuple[list[int], list[float]]:
        """Time passes of increasing size until they are compute-bound (beyond, the model
        extends linearly), then `repeats` rounds over those sizes taking turns, so a burst of
        other work on the machine slows one pass of each size rather than every pass of one
        size (the model keeps each size's fastest pass). Attention over the KV cache is left
        out (no metadata), as in vLLM's own profiling passes; the online refinement adds it."""
        logger.info("echo-vllm: measuring the target pass cost model (passes of 1 to at most %d tokens, "
                    "%d rounds); cached at %s", sizes[-1], repeats, path)
        start = time.perf_counter()
        self._time_target_pass(sizes[0])  # first pass: allocation, not cost
        tokens: list[int] = []
        seconds: list[float] = []
        for n in sizes:
            tokens.append(n)
            seconds.append(self._time_target_pass(n))
            (stop,) = same_on_every_rank([float(compute_bound(tokens, seconds))])
            if stop:
                break
        logger.info("echo-vllm: cost model sizes %s; %d more passes, ~%.0f s", tokens,
                    (repeats - 1) * len(tokens), (repeats - 1) * sum(seconds))
        sizes = list(tokens)
        for _ in range(repeats - 1):
            tokens += sizes
            seconds += [self._time_target_pass(n) for n in sizes]
        logger.info("echo-vllm: cost model measured in %.1f s", time.perf_counter() - start)
        return tokens, seconds

    def _cost_key(self, sizes: list[int]) -> dict:
        """What the measured times depend on (cost_cache.py)."""
        model_config = self.model_config
        device = (torch.cuda.get_device_name(self.device) if self.device.type == "cuda"
                  else f"{cpu_name()} ({cpu_isa()})")
        return cost_key(
            model=model_config.model,
            config_sha256=hashlib.sha256(model_config.hf_config.to_json_string().encode()).hexdigest(),
            dtype=str(model_config.dtype), device=device, cpus=len(os.sched_getaffinity(0)),
            threads=torch.get_num_threads(), vllm=vllm.__version__, eager=model_config.enforce_eager,
            tensor_parallel=self.parallel_config.tensor_parallel_size, sizes=sizes,
        )

    def _is_first_rank(self) -> bool:
        return get_tensor_model_parallel_rank() == 0

    def _rank0_points(self, cached, num_sizes: int) -> tuple[list[int], list[float]]:
        """Rank 0's cached (tokens, seconds) on every rank; ([], []) when it has none."""
        tokens, seconds = cached or ([], [])
        # one point per size: each size's fastest pass is all the model keeps
        best = {t: min(s for u, s in zip(tokens, seconds) if u == t) for t in tokens}
        padding = num_sizes - len(best)
        shared = same_on_every_rank([float(len(best)), *best, *[0.0] * padding, *best.values(), *[0.0] * padding])
        count = int(shared[0])
        return [int(t) for t in shared[1:1 + count]], shared[1 + num_sizes:1 + num_sizes + count]

    def _time_target_pass(self, num_tokens: int) -> float:
        with set_forward_context(None, self.vllm_config, num_tokens=num_tokens):
            start = self._echo_clock()
            output = self._model_forward(input_ids=self.input_ids.gpu[:num_tokens], positions=self.positions[:num_tokens])
            hidden_states = output[0] if isinstance(output, tuple) else output  # EAGLE-3: (hidden, auxiliary)
            self.model.compute_logits(hidden_states)
            end = self._echo_clock()
        return end - start

    def _model_forward(self, *args, **kwargs):
        if self.echo_policy.cost_model is not None:
            # after the step's input preparation has finished on the device
            self._echo_pass_start = (self._echo_clock(), int(kwargs["positions"].shape[-1]))
        return super()._model_forward(*args, **kwargs)

    def _observe_target_pass(self) -> None:
        """Refine the cost model with the pass that just finished, sampling or verification
        included, once the device has finished it."""
        if self._echo_pass_start is not None:
            start, tokens = self._echo_pass_start
            self._echo_pass_start = None
            self.echo_policy.observe_pass(tokens, self._echo_clock() - start)

    # ---- verification -----------------------------------------------------------------

    def _sample(self, logits, spec_decode_metadata):
        step = self._echo_step
        if step is None:
            # No drafts this step: vLLM's plain sampler. (vLLM builds spec-decode metadata
            # for every step; its rejection sampler would copy the logits only to sample
            # the same tokens.)
            output = super()._sample(logits, None)
            self._observe_target_pass()
            return output
        self._echo_step = None
        tokens, parents, num_nodes = flatten_trees(
            step.tokens, step.parent_idx, step.num_nodes, torch.tensor(step.rows),
            torch.tensor(spec_decode_metadata.num_draft_tokens),
        )
        output, verdicts = sample_trees(
            self.sampler, logits, tokens, parents, num_nodes, self.input_batch.sampling_metadata
        )
        self._record_calibration(step, verdicts)
        branching_trees = 0 if step.attention is None else step.attention.token_rows.shape[0]
        self._count_verified(int((num_nodes > 1).sum()), branching_trees, int(num_nodes.sum()) - len(num_nodes),
                             sum(len(v.accepted_nodes) for v in verdicts))
        if self.echo_policy.auto_budget():
            self._observe_acceptance(step, verdicts)
        self.echo_calibration.step_verified(len(step.rows))
        tree, src, dst = accepted_moves([verdicts[row].accepted_nodes for row in step.rows])
        if len(tree):
            # KV first: it must be in place even when the drafter does not run this step
            block_size = self.input_batch.block_table[0].block_size
            positions = moved_positions(step.prefix_lens, tree, src, dst)
            slots = slots_of(step.block_table[tree], positions, block_size).to(self.device)
            move_kv(self._echo_kv_layout, self._target_kv_caches(), slots[:, 0], slots[:, 1])
            src_rows, dst_rows = moved_rows(step.root_rows, tree, src, dst)
            self._echo_row_moves = (src_rows.to(self.device), dst_rows.to(self.device))
        self._observe_target_pass()
        return output

    def _observe_acceptance(self, step: TreeStep, verdicts: list[Verdict]) -> None:
        """How many verified draft tokens the target accepted, against how many the draft's
        path probabilities predicted at each depth (trees echo drafted, as far as they were
        scheduled)."""
        verified = {}
        for row, num_nodes in zip(step.rows, step.num_nodes.tolist()):
            req_id = self.input_batch.req_ids[row]
            pending = self._echo_trees.get(req_id)
            if pending is not None and pending.values is not None:
                verified[req_id] = (predicted_by_depth(pending.parent_idx[:num_nodes], pending.values[:num_nodes]),
                                    len(verdicts[row].accepted_nodes))
        self.echo_policy.observe_acceptance(verified)

    def _count_verified(self, trees: int, branching_trees: int, drafts: int, accepted: int) -> None:
        """One verification step: trees with drafts, those that branched (their rows took the
        tree attention path, a chain's the causal kernel), their draft tokens, those accepted. Warns
        (once) when the target has rejected every one of the first NO_ACCEPTANCE_WARNING_DRAFTS
        (a head of another target?)."""
        counters = self.echo_counters
        before = counters.num_verified_drafts
        counters.num_verified_steps += trees > 0
        counters.num_verified_trees += trees
        counters.num_branching_trees += branching_trees
        counters.num_verified_drafts += drafts
        counters.num_accepted_drafts += accepted
        if counters.num_accepted_drafts == 0 and before < NO_ACCEPTANCE_WARNING_DRAFTS <= counters.num_verified_drafts:
            logger.warning(
                "echo-vllm: the target rejected all of the head's first %d draft tokens: is it a head for this "
                "target? Decoding stays exact; %s", counters.num_verified_drafts,
                "echo's auto budget drafts only where it pays (now almost never)" if self.echo_policy.auto_budget()
                else "with this policy every step still drafts and verifies (budget 'auto' would stop it)")

    def _record_calibration(self, step: TreeStep, verdicts: list[Verdict]) -> None:
        """When recording: pair each request's drafted-tree statistics with how deep the
        target accepted (scheduler_patches/gate_calibration.py)."""
        if not self.echo_policy.recording:
            return
        for row, num_nodes, prefix_len in zip(step.rows, step.num_nodes.tolist(), step.prefix_lens.tolist()):
            req_id = self.input_batch.req_ids[row]
            pending = self._echo_trees.get(req_id)
            # a tree the scheduler cut is not the tree the statistics describe
            whole = pending is not None and len(pending.drafts) + 1 == num_nodes
            accepted_nodes = verdicts[row].accepted_nodes
            self.echo_calibration.record(req_id, len(accepted_nodes), pending.calibration if whole else None,
                                         accepted_nodes, prefix_len)

    def _target_kv_caches(self) -> list[torch.Tensor]:
        if self._echo_target_kv_caches is None:
            draft_layers = getattr(self.drafter, "_draft_attn_layer_names", set())
            layers = get_layers_from_vllm_config(self.vllm_config, AttentionLayerBase)
            target = [layer for name, layer in layers.items() if name not in draft_layers]
            for layer in target:
                if hasattr(layer, "isa"):  # the CPU backend's packing of this layer's cache
                    check_isa(layer.isa)
            self._echo_target_kv_caches = [layer.kv_cache for layer in target]
        return self._echo_target_kv_caches

    # ---- drafting ---------------------------------------------------------------------

    def propose_draft_token_ids(self, scheduler_output, sampled_token_ids, sampling_metadata,
                                hidden_states, sample_hidden_states, aux_hidden_states,
                                spec_decode_metadata, common_attn_metadata, slot_mappings):
        if self._echo_row_moves is not None:
            src, dst = self._echo_row_moves
            self._echo_row_moves = None
            for tensor in (self.input_ids.gpu, self.positions, *(aux_hidden_states or ())):
                tensor[dst] = tensor[src]
        result: DraftResult = super().propose_draft_token_ids(
            scheduler_output, sampled_token_ids, sampling_metadata, hidden_states,
            sample_hidden_states, aux_hidden_states, spec_decode_metadata,
            common_attn_metadata, slot_mappings,
        )
        drafts, drafted = result.drafts, result.trees
        if drafted is None:  # a step not worth drafting: no request drafted
            for req_id in self.input_batch.req_ids:
                self._echo_trees.pop(req_id, None)
            return drafts
        # each tensor read to the host once (they are device tensors on a GPU)
        tree, calibration = drafted.tree, drafted.calibration
        num_nodes, parent_idx = tree.num_nodes.tolist(), tree.parent_idx.tolist()
        values = None if drafted.node_values is None else drafted.node_values.tolist()
        statistics, ranks = (None, None) if calibration is None else (calibration[0].tolist(), calibration[1].tolist())
        for row, req_id in enumerate(self.input_batch.req_ids):
            n = num_nodes[row]
            recorded = None if calibration is None else (statistics[row], ranks[row][:n])
            self._echo_trees[req_id] = PendingTree(drafts[row], parent_idx[row][:n],
                                                   None if values is None else values[row][:n], recorded)
        return drafts

    def take_draft_token_ids(self):
        """The drafts the scheduler schedules next. When the batch's longest request would not
        fit the drafter (near max_model_len), vLLM skips drafting and fills every request's
        drafts with num_spec_tokens zeros; the scheduler would schedule those and the target
        verify them, all rejected, for the whole batch, as long as one request sits near
        the limit. Echo's drafts are always lists, so a tensor here is that filler: the
        step's requests get no drafts instead."""
        if torch.is_tensor(self._draft_token_ids) and self._draft_token_req_ids:
            return DraftTokenIds(list(self._draft_token_req_ids), [[] for _ in self._draft_token_req_ids])
        return super().take_draft_token_ids()
