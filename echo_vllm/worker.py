"""Echo's vLLM worker and model runner classes, selected through `ParallelConfig.worker_cls`.

Both vLLM workers build the V1 model runner echo extends: the GPU worker through its
`_make_model_runner` factory, the CPU worker inline in `init_device` (no factory there), so
the CPU worker replaces the runner it just built. The runner swaps in echo's proposer.
"""

from __future__ import annotations

from vllm.config import VllmConfig
from vllm.v1.worker.cpu_model_runner import CPUModelRunner
from vllm.v1.worker.cpu_worker import CPUWorker
from vllm.v1.worker.gpu_model_runner import GPUModelRunner
from vllm.v1.worker.gpu_worker import Worker

from echo_vllm.config import EchoConfig, parse_echo_config
from echo_vllm.proposers.eagle_tree import EchoProposer
from echo_vllm.scheduler_patches.patch_arg_utils import ADDITIONAL_CONFIG_KEY


def echo_config_of(vllm_config: VllmConfig) -> EchoConfig:
    """The echo options that travelled inside the vLLM config (validated again here)."""
    options = (vllm_config.additional_config or {}).get(ADDITIONAL_CONFIG_KEY)
    if options is None:
        raise RuntimeError(
            "echo-vllm: echo's worker was started without echo options in "
            "additional_config; select echo with speculative_config={'method': 'echo', ...}"
        )
    return parse_echo_config(options)


class EchoRunnerMixin:
    """Put echo's proposer where vLLM's V1 runner put its EAGLE proposer."""

    def __init__(self, vllm_config: VllmConfig, device):
        super().__init__(vllm_config, device)
        self.echo_config = echo_config_of(vllm_config)
        if hasattr(self, "drafter"):  # only the last pipeline stage drafts
            self.drafter = EchoProposer(vllm_config, device, self.echo_config, runner=self)


class EchoCPUModelRunner(EchoRunnerMixin, CPUModelRunner):
    pass


class EchoGPUModelRunner(EchoRunnerMixin, GPUModelRunner):
    pass


class EchoCPUWorker(CPUWorker):
    def init_device(self) -> None:
        super().init_device()
        self.model_runner = EchoCPUModelRunner(self.vllm_config, self.device)


class EchoGPUWorker(Worker):
    def _make_model_runner(self) -> GPUModelRunner:
        if self.use_v2_model_runner:
            raise RuntimeError(
                "echo-vllm: method 'echo' extends vLLM's V1 model runner; on GPU start vLLM "
                "with VLLM_USE_V2_MODEL_RUNNER=0"
            )
        return EchoGPUModelRunner(self.vllm_config, self.device)
