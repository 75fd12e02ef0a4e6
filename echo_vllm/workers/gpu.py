"""Echo's worker on vLLM's GPU platforms (CUDA, ROCm): vLLM's GPU worker with echo's runner,
built through the worker's `_make_model_runner` factory. Imports nothing of vLLM's CPU worker
(tests/test_workers.py checks it in a fresh process).

Not run on a GPU yet: this project's GPU machine cannot hold a full vLLM install.
"""

from __future__ import annotations

from vllm.config import VllmConfig
from vllm.platforms import current_platform
from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend
from vllm.v1.worker.gpu_model_runner import GPUModelRunner
from vllm.v1.worker.gpu_worker import Worker

from echo_vllm.runner import EchoRunnerMixin
from echo_vllm.scheduler_patches.registry import check_all_overrides
from echo_vllm.scheduler_patches.overrides import FLASH_ATTENTION
from echo_vllm.workers.common import (
    EchoRPC,
    check_attention_support,
    echo_config_of,
    measure_cost_if_needed,
)


class EchoGPUModelRunner(EchoRunnerMixin, GPUModelRunner):
    pass


class EchoGPUWorker(EchoRPC, Worker):
    def __init__(self, vllm_config: VllmConfig, *args, **kwargs):
        check_all_overrides(current_platform.device_type)
        super().__init__(vllm_config, *args, **kwargs)
        # FlashAttention takes no mask; echo's subclass rewrites tree rows after it
        register_backend(AttentionBackendEnum[FLASH_ATTENTION.entry], FLASH_ATTENTION.replacement)

    def _make_model_runner(self) -> GPUModelRunner:
        if self.use_v2_model_runner:
            raise RuntimeError(
                "echo-vllm: method 'echo' extends vLLM's V1 model runner, but V2 was forced "
                "(VLLM_USE_V2_MODEL_RUNNER=1); unset it"
            )
        return EchoGPUModelRunner(self.vllm_config, self.device, echo_config_of(self.vllm_config))

    def compile_or_warm_up_model(self):
        check_attention_support(self.model_runner)
        times = super().compile_or_warm_up_model()
        measure_cost_if_needed(self.model_runner)
        return times
