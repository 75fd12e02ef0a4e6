"""Echo's vLLM worker and model runner classes, selected through `ParallelConfig.worker_cls`.

Both vLLM workers build the V1 model runner echo extends: the GPU worker through its
`_make_model_runner` factory, the CPU worker inline in `init_device` (no factory there), so
the CPU worker replaces the runner it just built.
"""

from __future__ import annotations

from vllm.config import VllmConfig
from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend
from vllm.v1.worker.cpu_model_runner import CPUModelRunner
from vllm.v1.worker.cpu_worker import CPUWorker
from vllm.v1.worker.gpu_model_runner import GPUModelRunner
from vllm.v1.worker.gpu_worker import Worker

from echo_vllm.config import EchoConfig, parse_echo_config
from echo_vllm.runner import EchoRunnerMixin
from echo_vllm.scheduler_patches.overrides import CPU_ATTENTION, FLASH_ATTENTION
from echo_vllm.scheduler_patches.patch_arg_utils import ADDITIONAL_CONFIG_KEY
from echo_vllm.scheduler_patches.registry import check_all_overrides


def echo_config_of(vllm_config: VllmConfig) -> EchoConfig:
    """The echo options that travelled inside the vLLM config (validated again here)."""
    options = (vllm_config.additional_config or {}).get(ADDITIONAL_CONFIG_KEY)
    if options is None:
        raise RuntimeError(
            "echo-vllm: echo's worker was started without echo options in "
            "additional_config; select echo with speculative_config={'method': 'echo', ...}"
        )
    return parse_echo_config(options)


def measure_cost_if_needed(runner: EchoRunnerMixin) -> None:
    """Echo's automatic budget and its online calibration start from a measured cost model
    of the target pass."""
    config = runner.echo_config
    if (config.budget == "auto" or config.calibration_steps is not None) and hasattr(runner, "drafter"):
        runner.measure_target_cost()


class EchoRPC:
    """What echo's tools ask every worker, by method name through `LLM.collective_rpc` (a
    name needs no pickled function, so no insecure serialization)."""

    def echo_stats(self) -> dict:
        """Echo's decisions so far (`EchoRunnerMixin.echo_stats`); `echo-vllm bench` reports them."""
        return self.model_runner.echo_stats()

    def echo_start_calibration(self) -> dict:
        """Record every verification step from now on; returns the measured cost model."""
        runner = self.model_runner
        runner.echo_calibration.start()
        return runner.measure_target_cost().to_dict()

    def echo_calibration_records(self, batch_size: int) -> tuple[list, float]:
        """The recorded steps and the drafter's expected seconds per step at batch_size."""
        runner = self.model_runner
        return list(runner.echo_calibration.records), runner.echo_policy.draft_seconds(batch_size)


class EchoCPUModelRunner(EchoRunnerMixin, CPUModelRunner):
    pass


class EchoGPUModelRunner(EchoRunnerMixin, GPUModelRunner):
    pass


class EchoCPUWorker(EchoRPC, CPUWorker):
    def __init__(self, vllm_config: VllmConfig, *args, **kwargs):
        check_all_overrides()
        super().__init__(vllm_config, *args, **kwargs)
        self.use_v2_model_runner = False  # declared: overrides.V1_RUNNER_ON_CPU
        # Tree rows need masks the C++ kernel lacks; echo's backend keeps vLLM's name
        # (the CPU platform selects CPU_ATTN whatever is configured).
        register_backend(AttentionBackendEnum[CPU_ATTENTION.entry], CPU_ATTENTION.replacement)

    def init_device(self) -> None:
        super().init_device()
        self.model_runner = EchoCPUModelRunner(self.vllm_config, self.device, echo_config_of(self.vllm_config))

    def compile_or_warm_up_model(self):
        times = super().compile_or_warm_up_model()
        measure_cost_if_needed(self.model_runner)
        return times


class EchoGPUWorker(EchoRPC, Worker):
    """Not run on a GPU yet: this project's GPU machine cannot hold a full vLLM install."""

    def __init__(self, vllm_config: VllmConfig, *args, **kwargs):
        check_all_overrides()
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
        times = super().compile_or_warm_up_model()
        measure_cost_if_needed(self.model_runner)
        return times
