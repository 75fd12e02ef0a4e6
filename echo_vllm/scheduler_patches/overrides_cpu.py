"""What echo relies on in vLLM 0.32 on the CPU platform only (record kinds: records.py): vLLM's
CPU worker and runner, which echo's CPU worker (echo_vllm/workers/cpu.py) extends, and the CPU
attention backend echo swaps. Every record here carries device_type="cpu": echo's GPU worker
never resolves them, since importing vLLM's CPU worker modules replaces torch's CUDA events,
streams, memory queries and `Tensor.pin_memory` for the whole process. registry.py lists them
with the rest (overrides.py).
"""

from echo_vllm.kernels.tree_attention import METADATA_ATTRIBUTE
from echo_vllm.scheduler_patches.overrides import (
    _ATTN_PARAMS,
    _GPU_WORKER,
    _COST_HOOK_UPSTREAM,
    _FEATURES_UPSTREAM,
    _NO_COST_HOOK,
    _NO_FEATURE_QUERY,
    _NO_RUNNER_SEAM,
    _NO_TREE_ATTN,
    _RUNNER_SEAM_UPSTREAM,
    _TREE_ATTN_UPSTREAM,
)
from echo_vllm.scheduler_patches.records import BackendSwap, VllmAttribute, VllmMethod

_CPU_RUNNER = "vllm.v1.worker.cpu_model_runner.CPUModelRunner"
_CPU_WORKER = "vllm.v1.worker.cpu_worker.CPUWorker"
_CPU_ATTN = "vllm.v1.attention.backends.cpu_attn"

CPU_ATTENTION = BackendSwap(
    device_type="cpu",
    target="vllm.v1.attention.backends.registry.AttentionBackendEnum.CPU_ATTN", vllm="0.32.*",
    replaces=f"{_CPU_ATTN}.CPUAttentionBackend",
    replacement="echo_vllm.kernels.cpu_backend.EchoCPUAttentionBackend",
    why="tree rows need masks the C++ kernel lacks; echo's backend keeps vLLM's name (the CPU platform "
    "selects CPU_ATTN whatever is configured)",
    upstream=_NO_TREE_ATTN, remove_when=_TREE_ATTN_UPSTREAM,
)

V1_RUNNER_ON_CPU = VllmAttribute(
    device_type="cpu",
    target=f"{_GPU_WORKER}.use_v2_model_runner", kind="overwritten", set_in=f"{_GPU_WORKER}.__init__",
    vllm="0.32.*",
    why="echo's CPU worker sets it False so init_device builds the V1 runner echo extends (the GPU "
    "worker refuses a forced V2 instead; patch_config keeps V2 from being chosen otherwise)",
    upstream=_NO_RUNNER_SEAM, remove_when="echo's runner extension exists for Model Runner V2",
)

RUNNER = [
    VllmMethod(
        device_type="cpu",
        target=f"{_CPU_RUNNER}.__init__", kind="construct", params=("vllm_config", "device"), vllm="0.32.*",
        why="as GPUModelRunner.__init__, on CPU (echo's mixin sits over CPUModelRunner)",
        upstream="as GPUModelRunner.__init__",
        remove_when="vLLM lets a speculative method supply its proposer class to the runner",
    ),
]

ATTENTION = [
    CPU_ATTENTION,
    VllmMethod(
        device_type="cpu",
        target=f"{_CPU_ATTN}.CPUAttentionBackend.get_impl_cls", kind="override", params=(), vllm="0.32.*",
        why="echo's CPU backend returns its implementation class", upstream=_NO_TREE_ATTN,
        remove_when=_TREE_ATTN_UPSTREAM,
    ),
    VllmMethod(
        device_type="cpu",
        target=f"{_CPU_ATTN}.CPUAttentionBackendImpl.forward", kind="override", params=_ATTN_PARAMS,
        vllm="0.32.*", why="tree rows recomputed after the causal kernel", upstream=_NO_TREE_ATTN,
        remove_when=_TREE_ATTN_UPSTREAM,
    ),
    VllmAttribute(
        device_type="cpu",
        target=f"{_CPU_ATTN}.CPUAttentionMetadata.{METADATA_ATTRIBUTE}", kind="added", vllm="0.32.*",
        why="echo's runner hangs the step's trees on the target layers' metadata; echo's CPU backend reads them",
        upstream=_NO_TREE_ATTN, remove_when=_TREE_ATTN_UPSTREAM,
    ),
    VllmAttribute(
        device_type="cpu",
        target="vllm.model_executor.layers.attention.attention.Attention.isa", kind="read",
        set_in=f"{_CPU_ATTN}.CPUAttentionMetadataBuilder._set_isa_to_layers", vllm="0.32.*",
        why="how the CPU kernel packs a layer's KV cache: echo reads and moves KV in the layouts it knows",
        upstream="none: the CPU backend's cache packing is private",
        remove_when="vLLM offers KV gather/scatter by slot for each backend",
    ),
]

WORKERS = [
    VllmMethod(
        device_type="cpu",
        target=f"{_CPU_WORKER}.__init__", kind="construct",
        params=("vllm_config", "local_rank", "rank", "distributed_init_method", "is_driver_worker"), vllm="0.32.*",
        why="echo's CPU worker checks these declarations, then forces the V1 runner and swaps CPU_ATTN",
        upstream=_NO_RUNNER_SEAM, remove_when=_RUNNER_SEAM_UPSTREAM,
    ),
    V1_RUNNER_ON_CPU,
    VllmMethod(
        device_type="cpu",
        target=f"{_CPU_WORKER}.init_device", kind="override", params=(), vllm="0.32.*",
        why="echo's runner replaces the one built here (no runner factory on CPU)",
        upstream=_NO_RUNNER_SEAM, remove_when=_RUNNER_SEAM_UPSTREAM,
    ),
    VllmAttribute(
        device_type="cpu",
        target=f"{_CPU_WORKER}.model_runner", kind="overwritten", set_in=f"{_CPU_WORKER}.init_device",
        vllm="0.32.*", why="echo's CPU runner replaces the one vLLM's init_device built",
        upstream=_NO_RUNNER_SEAM, remove_when=_RUNNER_SEAM_UPSTREAM,
    ),
    VllmMethod(
        device_type="cpu",
        target=f"{_CPU_WORKER}.compile_or_warm_up_model", kind="override", params=(), vllm="0.32.*",
        why="before vLLM's warm-up (model loaded, KV cache laid out), refuse the attention features the tree "
        "path lacks; after it, measure the target pass cost model the auto budget starts from",
        upstream=_NO_COST_HOOK, remove_when=_COST_HOOK_UPSTREAM,
    ),
]

ATTENTION_FEATURES = [
    VllmAttribute(
        target=f"{_CPU_ATTN}.CPUAttentionBackendImpl.{name}", kind="read",
        set_in=f"{_CPU_ATTN}.CPUAttentionBackendImpl.__init__", device_type="cpu", vllm="0.32.*",
        why=f"refused at start-up: {why}", upstream=_NO_FEATURE_QUERY, remove_when=_FEATURES_UPSTREAM,
    )
    for name, why in (("logits_soft_cap", "a layer's logits soft-capping"), ("alibi_slopes", "a layer's ALiBi"))
]

DEPENDENCIES = [*RUNNER, *ATTENTION, *WORKERS, *ATTENTION_FEATURES]
