"""Everything echo relies on in vLLM 0.32 besides the attributes it patches (the patches are
the `PATCH` of each patch_<module>.py), as data: the methods echo's worker, runner, proposer,
sampler and attention backends override, call or construct through, the attributes they
read, overwrite or add, the registry entries they swap, the upstream bodies they copy and the
ops they call (record kinds: records.py). Those of vLLM's CPU platform are in overrides_cpu.py,
those only the GPU worker needs carry device_type="cuda". registry.py lists them with the
patches; echo's worker checks those of its platform at start-up (`registry.check_all_overrides`), and
tests/scheduler_patches/test_registry.py checks every one, with the copied bodies' sources.
"""

from echo_vllm.kernels.tree_attention import METADATA_ATTRIBUTE
from echo_vllm.scheduler_patches.records import BackendSwap, CopiedBody, VllmAttribute, VllmMethod, VllmOp

_RUNNER = "vllm.v1.worker.gpu_model_runner.GPUModelRunner"
_PROPOSER = "vllm.v1.spec_decode.llm_base_proposer.SpecDecodeBaseProposer"
_EAGLE3_LAYER = "vllm.model_executor.models.llama_eagle3.LlamaDecoderLayer"
_GPU_WORKER = "vllm.v1.worker.gpu_worker.Worker"
_FLASH_ATTN = "vllm.v1.attention.backends.flash_attn"
_ATTN_PARAMS = ("layer", "query", "key", "value", "kv_cache", "attn_metadata", "output", "output_scale",
                "output_block_scale")

# What upstream offers, and when echo can drop the dependence, by what it serves.
_NO_TREE_VERIFY = "none: vLLM 0.32 verifies chains of drafts, no token trees"
_TREE_VERIFY_UPSTREAM = "vLLM verifies token trees itself (tree positions, ancestor masks, tree acceptance)"
_NO_TREE_DRAFT = "none: vLLM 0.32's EAGLE proposer drafts chains"
_TREE_DRAFT_UPSTREAM = "vLLM's EAGLE proposer drafts trees with a pluggable per-step growth policy"
_NO_TREE_ATTN = "none: vLLM 0.32's attention backends take causal masks only"
_TREE_ATTN_UPSTREAM = "vLLM's attention backends take a per-request tree mask"
_NO_RUNNER_SEAM = "none: vLLM 0.32's workers build the V1 runner class they import, no factory option"
_RUNNER_SEAM_UPSTREAM = "vLLM lets a speculative method supply its model-runner extension (or verifies trees itself)"
_NO_COST_HOOK = "none: vLLM exposes no per-pass timing or warm-up hook to a speculative method"
_COST_HOOK_UPSTREAM = "vLLM reports target-pass times to the proposer"
_NO_FEATURE_QUERY = "none: vLLM 0.32's attention backends declare what they support, not what a tree path lacks"
_FEATURES_UPSTREAM = "echo's tree attention implements the feature, or vLLM verifies token trees itself"

RUNNER = [
    VllmMethod(
        target=f"{_RUNNER}.__init__", kind="construct", params=("vllm_config", "device"), vllm="0.32.*",
        why="echo's runner mixin calls super().__init__(vllm_config, device), then replaces self.drafter: "
        "the EagleProposer vLLM builds there is discarded (GPU)",
        upstream="partial: method 'custom_class' builds a proposer from vllm_config alone and drafts from "
        "token ids only, without the target hidden states and runner EAGLE-3 trees need",
        remove_when="vLLM lets a speculative method supply its proposer class to the runner",
    ),
    VllmAttribute(
        target=f"{_RUNNER}.drafter", kind="overwritten", set_in=f"{_RUNNER}.__init__", vllm="0.32.*",
        why="echo's runner puts its EchoProposer here, in place of vLLM's EagleProposer",
        upstream="partial: method 'custom_class' (see GPUModelRunner.__init__)",
        remove_when="vLLM lets a speculative method supply its proposer class to the runner",
    ),
    VllmMethod(
        target=f"{_RUNNER}._update_states", kind="override", params=("scheduler_output",), vllm="0.32.*",
        why="drop the pending trees of finished requests",
        upstream=_NO_TREE_VERIFY, remove_when=_TREE_VERIFY_UPSTREAM,
    ),
    VllmMethod(
        target=f"{_RUNNER}._prepare_inputs", kind="override", params=("scheduler_output", "num_scheduled_tokens"),
        vllm="0.32.*", why="tree rows get RoPE positions prefix + depth after vLLM derived their KV slots",
        upstream=_NO_TREE_VERIFY, remove_when=_TREE_VERIFY_UPSTREAM,
    ),
    VllmMethod(
        target=f"{_RUNNER}._build_attention_metadata", kind="override",
        params=("num_tokens", "num_reqs", "max_query_len", "num_tokens_padded", "num_reqs_padded",
                "ubatch_slices", "logits_indices", "max_num_sampled_tokens", "use_spec_decode",
                "for_cudagraph_capture", "num_scheduled_tokens", "slot_mappings"),
        vllm="0.32.*", why="ancestor masks ride on the target layers' attention metadata",
        upstream=_NO_TREE_ATTN, remove_when=_TREE_ATTN_UPSTREAM,
    ),
    VllmMethod(
        target=f"{_RUNNER}._model_forward", kind="override",
        params=("input_ids", "positions", "intermediate_tensors", "inputs_embeds", "model_kwargs"), vllm="0.32.*",
        why="clock each target pass for the auto budget's cost model (echo's start-up measurement calls it too)",
        upstream=_NO_COST_HOOK, remove_when=_COST_HOOK_UPSTREAM,
    ),
    VllmMethod(
        target=f"{_RUNNER}._sample", kind="override", params=("logits", "spec_decode_metadata"), vllm="0.32.*",
        why="tree verification and KV compaction replace chain rejection sampling",
        upstream=_NO_TREE_VERIFY, remove_when=_TREE_VERIFY_UPSTREAM,
    ),
    VllmMethod(
        target=f"{_RUNNER}.propose_draft_token_ids", kind="override",
        params=("scheduler_output", "sampled_token_ids", "sampling_metadata", "hidden_states",
                "sample_hidden_states", "aux_hidden_states", "spec_decode_metadata",
                "common_attn_metadata", "slot_mappings"),
        vllm="0.32.*", why="accepted nodes' rows moved into chain order for vLLM's EAGLE input prep",
        upstream=_NO_TREE_VERIFY, remove_when=_TREE_VERIFY_UPSTREAM,
    ),
    VllmMethod(
        target=f"{_RUNNER}.take_draft_token_ids", kind="override", params=(), vllm="0.32.*",
        why="no drafts, instead of vLLM's zero-filled ones, when a request nears max_model_len",
        upstream="none: vLLM 0.32 fills skipped drafts with zeros the target then rejects",
        remove_when="vLLM schedules no drafts for a step whose drafting was skipped",
    ),
    VllmAttribute(
        target=f"{_RUNNER}._draft_token_ids", kind="read", set_in=f"{_RUNNER}.__init__", vllm="0.32.*",
        why="take_draft_token_ids tells vLLM's zero filler (a tensor) from echo's drafts (lists)",
        upstream="none: private state of the runner",
        remove_when="vLLM schedules no drafts for a step whose drafting was skipped",
    ),
    VllmAttribute(
        target=f"{_RUNNER}._draft_token_req_ids", kind="read", set_in=f"{_RUNNER}.__init__", vllm="0.32.*",
        why="the requests of the zero filler take_draft_token_ids answers with no drafts",
        upstream="none: private state of the runner",
        remove_when="vLLM schedules no drafts for a step whose drafting was skipped",
    ),
]

PROPOSER = [
    VllmMethod(
        target="vllm.v1.spec_decode.eagle.EagleProposer.__init__", kind="construct",
        params=("vllm_config", "device", "runner"), vllm="0.32.*",
        why="EchoProposer subclasses EagleProposer: super().__init__(vllm_config, device, runner=runner)",
        upstream=_NO_TREE_DRAFT, remove_when=_TREE_DRAFT_UPSTREAM,
    ),
    VllmMethod(
        target=f"{_PROPOSER}.__init__", kind="construct",
        params=("vllm_config", "device", "pass_hidden_states_to_model", "runner"), vllm="0.32.*",
        why="reached through EagleProposer.__init__: the buffers and model EchoProposer drafts with",
        upstream=_NO_TREE_DRAFT, remove_when=_TREE_DRAFT_UPSTREAM,
    ),
    VllmMethod(
        target=f"{_PROPOSER}.propose", kind="override",
        params=("num_speculative_tokens", "target_token_ids", "target_positions",
                "target_hidden_states", "next_token_ids", "token_indices_to_sample",
                "common_attn_metadata", "sampling_metadata", "mm_embed_inputs",
                "num_rejected_tokens_gpu", "slot_mappings"),
        vllm="0.32.*", why="tree drafting replaces chain drafting",
        upstream=_NO_TREE_DRAFT, remove_when=_TREE_DRAFT_UPSTREAM,
    ),
    VllmMethod(
        target=f"{_PROPOSER}.set_inputs_first_pass", kind="call",
        params=("target_token_ids", "next_token_ids", "target_positions", "target_hidden_states",
                "token_indices_to_sample", "cad", "num_rejected_tokens_gpu"),
        vllm="0.32.*", why="vLLM's EAGLE first pass (and the inputs of steps not drafted)",
        upstream=_NO_TREE_DRAFT, remove_when=_TREE_DRAFT_UPSTREAM,
    ),
    VllmMethod(
        target=f"{_PROPOSER}.build_per_group_and_layer_attn_metadata", kind="call",
        params=("common_attn_metadata", "draft_index"), vllm="0.32.*", why="first-pass attention metadata",
        upstream=_NO_TREE_DRAFT, remove_when=_TREE_DRAFT_UPSTREAM,
    ),
    VllmMethod(
        target=f"{_PROPOSER}._determine_batch_execution_and_padding", kind="call",
        params=("num_tokens", "use_cudagraphs"), vllm="0.32.*", why="first-pass padding and CUDA-graph mode",
        upstream=_NO_TREE_DRAFT, remove_when=_TREE_DRAFT_UPSTREAM,
    ),
    VllmMethod(
        target=f"{_PROPOSER}.build_model_inputs_first_pass", kind="call",
        params=("num_tokens", "num_input_tokens", "mm_embed_inputs"), vllm="0.32.*",
        why="first-pass model inputs", upstream=_NO_TREE_DRAFT, remove_when=_TREE_DRAFT_UPSTREAM,
    ),
    VllmMethod(
        target=f"{_PROPOSER}._get_slot_mapping", kind="call", params=("num_tokens", "slot_mapping"),
        vllm="0.32.*", why="first-pass slot mapping", upstream=_NO_TREE_DRAFT, remove_when=_TREE_DRAFT_UPSTREAM,
    ),
    VllmAttribute(
        target=f"{_PROPOSER}._draft_attn_layer_names", kind="read", set_in=f"{_PROPOSER}.load_model",
        vllm="0.32.*", why="which attention layers are the draft's: tree masks go to the target layers only, "
        "and the drafter reads its own layer's KV cache",
        upstream="none: private state of the proposer",
        remove_when="vLLM's proposer exposes its attention layer names",
    ),
    VllmAttribute(
        target=f"{_EAGLE3_LAYER}._residual_norm", kind="read", set_in=f"{_EAGLE3_LAYER}.__init__", vllm="0.32.*",
        why="the draft step normalises the parent hidden state as the EAGLE-3 layer does "
        "(norm before or after the residual, by checkpoint)",
        upstream=_NO_TREE_DRAFT, remove_when=_TREE_DRAFT_UPSTREAM,
    ),
    VllmMethod(
        target=f"{_EAGLE3_LAYER}._norm_before_residual", kind="call", params=("hidden_states",), vllm="0.32.*",
        why="called through _residual_norm(hidden_states=...)",
        upstream=_NO_TREE_DRAFT, remove_when=_TREE_DRAFT_UPSTREAM,
    ),
    VllmMethod(
        target=f"{_EAGLE3_LAYER}._norm_after_residual", kind="call", params=("hidden_states",), vllm="0.32.*",
        why="called through _residual_norm(hidden_states=...)",
        upstream=_NO_TREE_DRAFT, remove_when=_TREE_DRAFT_UPSTREAM,
    ),
    CopiedBody(
        target=f"{_EAGLE3_LAYER}.forward", vllm="0.32.*",
        source_sha256="b5d84225016959f47287edd62dd5a55d023defba2617434606ab918d8298786f",
        copied_into="echo_vllm.proposers.eagle_tree.EchoProposer._draft_step",
        recheck="the first-layer path (input_layernorm on embeds, _residual_norm on the hidden state, "
        "concatenation, attention, post_attention_layernorm, mlp) is computed step by step so that "
        "attention can be tree attention",
        why="frontier nodes attend to the draft-KV prefix plus their ancestors, which vLLM's layer "
        "cannot express", upstream=_NO_TREE_DRAFT, remove_when=_TREE_DRAFT_UPSTREAM,
    ),
    CopiedBody(
        target="vllm.model_executor.models.llama.LlamaAttention.forward", vllm="0.32.*",
        source_sha256="a0f9f508aa380b8b43ea22ebbe884dbc58f5aea33b4bc2d1406f6935846b61ef",
        copied_into="echo_vllm.proposers.eagle_tree.EchoProposer._draft_step",
        recheck="qkv_proj, the q/k/v split, rotary_emb and o_proj around attention, which echo replaces "
        "by tree attention",
        why="the draft layer's attention, with a tree mask", upstream=_NO_TREE_DRAFT,
        remove_when=_TREE_DRAFT_UPSTREAM,
    ),
    CopiedBody(
        target="vllm.model_executor.models.llama_eagle3.LlamaModel.forward", vllm="0.32.*",
        source_sha256="504d2a14ea271ce67628a0f088ed6acf61b5984628d2a81900ad9ae2965e016d",
        copied_into="echo_vllm.proposers.eagle_tree.EchoProposer._draft_step",
        recheck="the final norm, and norm_output choosing which hidden state the next depth takes",
        why="the draft model's output around the one layer echo computes", upstream=_NO_TREE_DRAFT,
        remove_when=_TREE_DRAFT_UPSTREAM,
    ),
    CopiedBody(
        target="vllm.model_executor.models.llama_eagle3.Eagle3LlamaForCausalLM.compute_logits", vllm="0.32.*",
        source_sha256="0af3f208eb38b6ef255272e053f9e3d434c6b643bff314a2bd672f06668e3436",
        copied_into="echo_vllm.proposers.eagle_tree.EchoProposer._topk_children",
        recheck="logits over the draft vocabulary, mapped to target ids through draft_id_to_target_id "
        "(echo takes the top-k before mapping instead of scattering into the target vocabulary)",
        why="top-k children from the draft vocabulary without a [rows, target vocab] copy",
        upstream=_NO_TREE_DRAFT, remove_when=_TREE_DRAFT_UPSTREAM,
    ),
    CopiedBody(
        target=f"{_PROPOSER}.propose", vllm="0.32.*",
        source_sha256="00017c139f27a3e7baa4a284b30c1d3782806b91f8adbe85bd7f58551a1eb1b3",
        copied_into="echo_vllm.proposers.eagle_tree.EchoProposer._first_pass",
        recheck="the first pass: combine_hidden_states, set_inputs_first_pass, attention metadata, "
        "padding, model inputs, the forward context and the model call (inputs also in _write_draft_kv)",
        why="echo runs vLLM's EAGLE-3 first pass, then grows trees instead of chains",
        upstream=_NO_TREE_DRAFT, remove_when=_TREE_DRAFT_UPSTREAM,
    ),
]

SAMPLER = [
    VllmMethod(
        target="vllm.v1.sample.sampler.Sampler.gather_logprobs", kind="call",
        params=("logprobs", "num_logprobs", "token_ids"), vllm="0.32.*", why="tree logprobs",
        upstream=_NO_TREE_VERIFY, remove_when=_TREE_VERIFY_UPSTREAM,
    ),
    VllmMethod(
        target="vllm.v1.sample.sampler.Sampler.compute_logprobs", kind="call", params=("logits",),
        vllm="0.32.*", why="tree logprobs, in the sampler's logprobs mode",
        upstream=_NO_TREE_VERIFY, remove_when=_TREE_VERIFY_UPSTREAM,
    ),
    VllmMethod(
        target="vllm.v1.sample.ops.topk_topp_sampler.apply_top_k_top_p", kind="call", params=("logits", "k", "p"),
        vllm="0.32.*", why="per-node top-k / top-p", upstream=_NO_TREE_VERIFY, remove_when=_TREE_VERIFY_UPSTREAM,
    ),
    VllmOp(
        target="torch.ops._C.fused_gumbel_argmax", device_type="cpu", loaded_by="vllm._custom_ops",
        vllm="0.32.*", why="a node's target token drawn as vLLM's CPU sampler draws one (same seeds, same draws)",
        upstream=_NO_TREE_VERIFY, remove_when=_TREE_VERIFY_UPSTREAM,
    ),
    CopiedBody(
        target="vllm.v1.sample.ops.topk_topp_sampler.TopKTopPSampler.forward_cpu", vllm="0.32.*",
        source_sha256="6d05adf47d121861134e81ca044c18e304f5c497a3349374e7824df57010bb48",
        copied_into="echo_vllm.tree_sampler._sampler_draw",
        recheck="one seed per token from the request's generator (the global one without), then "
        "fused_gumbel_argmax over float32 logits: a seeded request must see the draws it would "
        "without speculation",
        why="verification draws each node's target token as vLLM's CPU sampler would",
        upstream=_NO_TREE_VERIFY, remove_when=_TREE_VERIFY_UPSTREAM,
    ),
]

FLASH_ATTENTION = BackendSwap(
    device_type="cuda",
    target="vllm.v1.attention.backends.registry.AttentionBackendEnum.FLASH_ATTN", vllm="0.32.*",
    replaces=f"{_FLASH_ATTN}.FlashAttentionBackend",
    replacement="echo_vllm.kernels.gpu_backend.EchoFlashAttentionBackend",
    why="FlashAttention takes no mask; echo's subclass rewrites tree rows after it (GPU)",
    upstream=_NO_TREE_ATTN, remove_when=_TREE_ATTN_UPSTREAM,
)

ATTENTION = [
    FLASH_ATTENTION,
    VllmMethod(
        target="vllm.v1.attention.backends.registry.register_backend", kind="call",
        params=("backend", "class_path", "is_mamba"), vllm="0.32.*",
        why="echo's workers point CPU_ATTN / FLASH_ATTN at echo's backends",
        upstream="a seam: vLLM's backend registry", remove_when=_TREE_ATTN_UPSTREAM,
    ),
    VllmMethod(
        device_type="cuda",
        target=f"{_FLASH_ATTN}.FlashAttentionBackend.get_impl_cls", kind="override", params=(), vllm="0.32.*",
        why="echo's GPU backend returns its implementation class", upstream=_NO_TREE_ATTN,
        remove_when=_TREE_ATTN_UPSTREAM,
    ),
    VllmMethod(
        device_type="cuda",
        target=f"{_FLASH_ATTN}.FlashAttentionImpl.forward", kind="override", params=_ATTN_PARAMS,
        vllm="0.32.*", why="tree rows recomputed after FlashAttention (GPU)", upstream=_NO_TREE_ATTN,
        remove_when=_TREE_ATTN_UPSTREAM,
    ),
    VllmMethod(
        device_type="cuda",
        target="vllm.v1.attention.backends.fa_utils.flash_attn_varlen_func", kind="call", cuda_build_only=True,
        params=("q", "k", "v", "max_seqlen_q", "cu_seqlens_q", "max_seqlen_k", "cu_seqlens_k", "seqused_k",
                "q_v", "dropout_p", "softmax_scale", "causal", "window_size", "softcap", "alibi_slopes",
                "deterministic", "return_attn_probs", "block_table", "return_softmax_lse", "out",
                "scheduler_metadata", "q_descale", "k_descale", "v_descale", "num_splits", "output_scale",
                "fa_version", "s_aux", "cp_world_size", "cp_rank", "cp_tot_seqused_k", "mask_mod",
                "block_sparse_tensors", "aux_tensors", "aux_tensor_leading_dims", "dynamic_causal"),
        vllm="0.32.*",
        why="cascade tree attention: the prefix part, every tree node over its request's whole paged prefix "
        "(non-causal), with its softmax LSE (kernels/gpu_backend.py, the drafter's PagedPrefix)",
        upstream="a seam: vLLM's own cascade path calls it the same way", remove_when=_TREE_ATTN_UPSTREAM,
    ),
    VllmMethod(
        target="vllm.v1.attention.ops.merge_attn_states.merge_attn_states", kind="call",
        params=("output", "prefix_output", "prefix_lse", "suffix_output", "suffix_lse", "output_lse",
                "prefill_tokens_with_context", "output_scale"),
        vllm="0.32.*", why="cascade tree attention: merges the prefix part and the masked tree part by their LSEs",
        upstream="a seam: vLLM's cascade attention merges the same way", remove_when=_TREE_ATTN_UPSTREAM,
    ),
    *(VllmAttribute(
        device_type="cuda", target=f"{_FLASH_ATTN}.FlashAttentionImpl.{name}", kind="read",
        set_in=f"{_FLASH_ATTN}.FlashAttentionImpl.__init__", vllm="0.32.*",
        why=f"cascade tree attention reads the layer's {why}", upstream=_NO_TREE_ATTN, remove_when=_TREE_ATTN_UPSTREAM,
    ) for name, why in (("vllm_flash_attn_version", "FlashAttention version"), ("head_size", "head size"))),
    VllmAttribute(
        target="vllm.v1.attention.backend.CommonAttentionMetadata.max_seq_len", kind="config", vllm="0.32.*",
        why="the drafter bounds the longest prefix its tree steps read (no device sync for it)",
        upstream=_NO_TREE_DRAFT, remove_when=_TREE_DRAFT_UPSTREAM,
    ),
    VllmAttribute(
        device_type="cuda",
        target=f"{_FLASH_ATTN}.FlashAttentionMetadata.{METADATA_ATTRIBUTE}", kind="added", vllm="0.32.*",
        why="echo's runner hangs the step's trees on the target layers' metadata; echo's GPU backend reads them",
        upstream=_NO_TREE_ATTN, remove_when=_TREE_ATTN_UPSTREAM,
    ),
]

WORKERS = [
    VllmMethod(
        target=f"{_GPU_WORKER}.__init__", kind="construct",
        params=("vllm_config", "local_rank", "rank", "distributed_init_method", "is_driver_worker"), vllm="0.32.*",
        why="echo's GPU worker checks these declarations, then swaps FLASH_ATTN",
        upstream=_NO_RUNNER_SEAM, remove_when=_RUNNER_SEAM_UPSTREAM,
    ),
    VllmMethod(
        device_type="cuda",
        target=f"{_GPU_WORKER}._make_model_runner", kind="override", params=(), vllm="0.32.*",
        why="echo's GPU runner is built here", upstream=_NO_RUNNER_SEAM, remove_when=_RUNNER_SEAM_UPSTREAM,
    ),
    VllmMethod(
        device_type="cuda",
        target=f"{_GPU_WORKER}.compile_or_warm_up_model", kind="override", params=(), vllm="0.32.*",
        why="before vLLM's warm-up (model loaded, KV cache laid out), refuse the attention features the tree "
        "path lacks; after it, measure the target pass cost model the auto budget starts from (GPU)",
        upstream=_NO_COST_HOOK, remove_when=_COST_HOOK_UPSTREAM,
    ),
]

ENGINE = [
    VllmAttribute(
        target="vllm.config.parallel.ParallelConfig.worker_cls", kind="config", vllm="0.32.*",
        why="method 'echo' selects echo's worker class (patch_arg_utils)",
        upstream="a seam: vLLM's worker_cls option", remove_when="vLLM offers a speculative-method registry",
    ),
    VllmAttribute(
        target="vllm.config.vllm.VllmConfig.additional_config", kind="config", vllm="0.32.*",
        why="echo's options travel to every worker under additional_config['echo']",
        upstream="a seam: vLLM's additional_config", remove_when="vLLM offers a speculative-method registry",
    ),
    VllmAttribute(
        target="vllm.engine.arg_utils.EngineArgs.async_scheduling", kind="config", vllm="0.32.*",
        why="echo's GPU path needs synchronous scheduling: a step's drafts are verified in the next step",
        upstream="a seam: vLLM's async_scheduling option (asynchronous scheduling schedules a step before "
        "echo's trees of the previous one are known)",
        remove_when="echo's trees survive vLLM's asynchronous scheduling",
    ),
    VllmAttribute(
        target="vllm.engine.arg_utils.EngineArgs.attention_backend", kind="config", vllm="0.32.*",
        why="echo's GPU path extends FLASH_ATTN and selects it where the user left the choice open",
        upstream=_NO_TREE_ATTN, remove_when=_TREE_ATTN_UPSTREAM,
    ),
    VllmAttribute(
        target="vllm.config.compilation.CompilationConfig.cudagraph_mode", kind="config", vllm="0.32.*",
        why="echo's tree-row rewrite runs between CUDA-graph pieces: PIECEWISE where left open",
        upstream=_NO_TREE_ATTN, remove_when=_TREE_ATTN_UPSTREAM,
    ),
    VllmAttribute(
        target="vllm.v1.engine.async_llm.AsyncLLM.echo_metrics", kind="added", vllm="0.32.*",
        why="echo's Prometheus metrics live on the serving engine, created at the first stats interval "
        "(patch_async_llm)",
        upstream="none: vLLM's per-step stats have no field for a speculative method's own state",
        remove_when="vLLM stats carry per-method speculative-decoding state, or stat-logger plugins get "
        "the engine client",
    ),
    VllmMethod(
        target="vllm.v1.engine.async_llm.AsyncLLM.collective_rpc", kind="call",
        params=("method", "timeout", "args", "kwargs"), vllm="0.32.*",
        why="the serving engine reads echo's counters from the workers by method name (echo_stats)",
        upstream="a seam: vLLM's collective RPC",
        remove_when="vLLM stats carry per-method speculative-decoding state",
    ),
]


def _feature_read(target: str, why: str, kind: str = "config", set_in: str | None = None,
                  device_type: str | None = None) -> VllmAttribute:
    """What echo reads to refuse an attention feature its tree path lacks (attention_support.py)."""
    return VllmAttribute(target=target, kind=kind, set_in=set_in, device_type=device_type, vllm="0.32.*",
                         why=f"refused at start-up: {why}", upstream=_NO_FEATURE_QUERY,
                         remove_when=_FEATURES_UPSTREAM)


_ATTENTION_LAYER = "vllm.model_executor.layers.attention.attention.Attention"
_KV_CACHE = "vllm.v1.kv_cache_interface"

ATTENTION_FEATURES = [
    _feature_read("vllm.engine.arg_utils.EngineArgs.kv_cache_dtype", "a quantized KV cache"),
    _feature_read("vllm.config.parallel.ParallelConfig.decode_context_parallel_size", "decode context parallelism"),
    _feature_read("vllm.config.model.ModelConfig.hf_text_config", "logits soft-capping "
                  "(attn_logit_softcapping)", kind="read", set_in="vllm.config.model.ModelConfig.__post_init__"),
    _feature_read("vllm.config.model.ModelConfig.uses_alibi", "ALiBi", kind="property"),
    _feature_read("vllm.config.model.ModelConfig.uses_mrope", "M-RoPE", kind="property"),
    VllmMethod(
        target="vllm.config.model.ModelConfig.get_sliding_window", kind="call", params=(), vllm="0.32.*",
        why="refused at start-up: a sliding window", upstream=_NO_FEATURE_QUERY, remove_when=_FEATURES_UPSTREAM,
    ),
    *(_feature_read(f"{_ATTENTION_LAYER}.{name}", why, kind="read", set_in=f"{_ATTENTION_LAYER}.__init__")
      for name, why in (("sliding_window", "a layer's sliding window"), ("has_sink", "attention sinks"),
                        ("kv_cache_dtype", "a layer's quantized KV cache"))),
    *(_feature_read(f"{_FLASH_ATTN}.FlashAttentionImpl.{name}", why, kind="read",
                    set_in=f"{_FLASH_ATTN}.FlashAttentionImpl.__init__", device_type="cuda")
      for name, why in (("logits_soft_cap", "a layer's logits soft-capping"), ("alibi_slopes", "a layer's ALiBi"))),
    _feature_read(f"{_RUNNER}.kv_cache_config", "more than one KV-cache group", kind="read",
                  set_in=f"{_RUNNER}.initialize_kv_cache"),
    _feature_read(f"{_RUNNER}._kernel_block_sizes", "a kernel block size other than the KV manager's", kind="read",
                  set_in=f"{_RUNNER}.initialize_kv_cache"),
    _feature_read(f"{_KV_CACHE}.KVCacheConfig.kv_cache_groups", "more than one KV-cache group"),
    _feature_read(f"{_KV_CACHE}.KVCacheGroupSpec.kv_cache_spec", "the KV manager's block size"),
    _feature_read(f"{_KV_CACHE}.KVCacheSpec.block_size", "the KV manager's block size"),
    VllmMethod(
        target="vllm.config.vllm.get_layers_from_vllm_config", kind="call",
        params=("vllm_config", "layer_type", "layer_names"), vllm="0.32.*",
        why="the model's attention layers, whose features are checked after load (and whose KV caches "
        "verification moves)", upstream=_NO_FEATURE_QUERY, remove_when=_FEATURES_UPSTREAM,
    ),
]

DEPENDENCIES = [*RUNNER, *PROPOSER, *SAMPLER, *ATTENTION, *WORKERS, *ENGINE, *ATTENTION_FEATURES]
