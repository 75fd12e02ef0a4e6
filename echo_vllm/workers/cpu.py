"""Echo's worker on vLLM's CPU platform: the only echo module that imports vLLM's CPU worker
(whose import replaces torch's CUDA events, streams and memory queries process-wide).

vLLM's CPU worker builds the V1 model runner inline in `init_device` (no factory there), so
echo's worker replaces the runner it just built.
"""

from __future__ import annotations

from vllm.config import VllmConfig
from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend
from vllm.v1.worker.cpu_model_runner import CPUModelRunner
from vllm.v1.worker.cpu_worker import CPUWorker

from echo_vllm.runner import EchoRunnerMixin
from echo_vllm.scheduler_patches.registry import check_all_overrides
from echo_vllm.scheduler_patches.overrides_cpu import CPU_ATTENTION
from echo_vllm.workers.common import (
    EchoRPC,
    check_attention_support,
    echo_config_of,
    measure_cost_if_needed,
)


class EchoCPUModelRunner(EchoRunnerMixin, CPUModelRunner):
    pass


class EchoCPUWorker(EchoRPC, CPUWorker):
    def __init__(self, vllm_config: VllmConfig, *args, **kwargs):
        check_all_overrides("cpu")
        super().__init__(vllm_config, *args, **kwargs)
        self.use_v2_model_runner = False  # declared: overrides_cpu.V1_RUNNER_ON_CPU
        # Tree rows need masks the C++ kernel lacks; echo's backend keeps vLLM's name
        # (the CPU platform selects CPU_ATTN whatever is configured).
        register_backend(AttentionBackendEnum[CPU_ATTENTION.entry], CPU_ATTENTION.replacement)

    def init_device(self) -> None:
        super().init_device()
        self.model_runner = EchoCPUModelRunner(self.vllm_config, self.device, echo_config_of(self.vllm_config))

    def compile_or_warm_up_model(self):
        check_attention_support(self.model_runner)
        times = super().compile_or_warm_up_model()
        measure_cost_if_needed(self.model_runner)
        return times
