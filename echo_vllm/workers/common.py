"""What echo's CPU and GPU workers share: reading echo's options from the vLLM config, the
attention-support check after load, the cost measurement after warm-up, and the RPCs echo's
tools call. Imports nothing platform-specific."""

from __future__ import annotations

from vllm.config import VllmConfig
from vllm.config.vllm import get_layers_from_vllm_config
from vllm.model_executor.layers.attention_layer_base import AttentionLayerBase

from echo_vllm.attention_support import refuse, unsupported_attention_features
from echo_vllm.config import EchoConfig, parse_echo_config
from echo_vllm.runner import EchoRunnerMixin
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


def measure_cost_if_needed(runner: EchoRunnerMixin) -> None:
    """Echo's automatic budget and its online calibration start from a measured cost model
    of the target pass."""
    config = runner.echo_config
    if (config.budget == "auto" or config.calibration_steps is not None) and hasattr(runner, "drafter"):
        runner.measure_target_cost()


def check_attention_support(runner: EchoRunnerMixin) -> None:
    """Once the model is loaded and its KV cache laid out (before vLLM's warm-up): refuse the
    attention features echo's tree path does not implement (attention_support.py)."""
    layers = get_layers_from_vllm_config(runner.vllm_config, AttentionLayerBase)
    found = unsupported_attention_features(runner.vllm_config, layers, runner.kv_cache_config,
                                           runner._kernel_block_sizes)
    refuse(found, RuntimeError)


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
