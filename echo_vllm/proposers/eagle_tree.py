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

import torch
from vllm.config import VllmConfig
from vllm.forward_context import set_forward_context
from vllm.v1.spec_decode.eagle import EagleProposer

from echo_vllm.config import EchoConfig
from echo_vllm.core.tree import Frontier, Tree, expand_frontier, root_frontier, select_tree
from echo_vllm.kernels.paged_kv import CPU_PACKED, HEAD_MAJOR, KvLayout, check_isa, prefix_slots
from echo_vllm.kernels.tree_attention import tree_attention


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
        root_logits_hidden, root_hidden, root_positions, cad = self._first_pass(
            target_token_ids, target_positions, target_hidden_states, next_token_ids,
            token_indices_to_sample, common_attn_metadata,
        )
        tree = self._expand(root_logits_hidden, root_hidden, root_positions + 1, next_token_ids, cad)
        self.drafted_trees = tree
        return [row[1:n] for row, n in zip(tree.tokens.tolist(), tree.num_nodes.tolist())]

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

        first_positions [B]: position of a depth-1 node's draft step (= committed length).
        """
        topk, steps = self.echo_config.topk, self.echo_config.steps
        batch = root_hidden.shape[0]
        frontier, pool = root_frontier(*self._topk_children(root_logits_hidden, topk))
        prefix_lens = first_positions.long()  # draft KV exists for positions < first_positions
        prefix_k, prefix_v = self._draft_prefix(cad, prefix_lens) if steps > 1 else (None, None)
        parent_hidden = root_hidden.unsqueeze(1).expand(batch, topk, -1)
        tree_k = tree_v = None  # [B, M, Hkv, Dh]: frontier nodes of the depths drafted so far
        eye = torch.eye(topk, dtype=torch.bool, device=root_hidden.device).expand(batch, -1, -1)
        seen = eye[:, :, :0]  # [B, K, M]: which tree keys are ancestors of each frontier node
        for depth in range(1, steps):
            positions = (first_positions.long() + depth - 1).view(batch, 1).expand(batch, topk)
            logits_hidden, hidden, k, v = self._draft_step(
                frontier, parent_hidden, positions, tree_k, tree_v, seen, prefix_k, prefix_v, prefix_lens
            )
            tree_k = k if tree_k is None else torch.cat([tree_k, k], dim=1)
            tree_v = v if tree_v is None else torch.cat([tree_v, v], dim=1)
            seen_self = torch.cat([seen, eye], dim=2)
            top_logprobs, top_tokens = self._topk_children(logits_hidden, topk)
            frontier, pool = expand_frontier(
                frontier, top_logprobs.view(batch, topk, topk), top_tokens.view(batch, topk, topk), pool
            )
            parent = frontier.parent_pos
            seen = seen_self.gather(1, parent.unsqueeze(-1).expand(-1, -1, seen_self.shape[2]))
            parent_hidden = hidden.view(batch, topk, -1).gather(1, parent.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        return select_tree(pool, root_tokens.long(), self.tree_sizes(batch))

    def tree_sizes(self, batch: int) -> torch.Tensor:
        """Verified nodes per request [B], root included. Every request may differ; the
        static policy gives each num_draft_tokens."""
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
