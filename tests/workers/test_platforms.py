"""Echo's GPU worker imports nothing of vLLM's CPU worker: `vllm/v1/worker/cpu/shm.py`, which
`cpu_worker` imports, replaces torch's CUDA events, streams, memory queries and
`Tensor.pin_memory` for the whole process, and a GPU worker would then size its KV cache from
host memory. Checked in a fresh process, on this CPU machine (vLLM's CPU wheel holds the GPU
modules too)."""

import json
import subprocess
import sys

# Import the GPU side of echo, run the GPU worker's start-up check of vLLM's internals, then
# report what was loaded; then the CPU side, to show the probe sees the trap when it is sprung.
PROBE = """
import json, sys
import torch
event, pin_memory = torch.cuda.Event, torch.Tensor.pin_memory

def state():
    return {"cpu_modules": sorted(m for m in sys.modules if m.startswith("vllm.v1.worker.cpu")),
            "torch_cuda_event": torch.cuda.Event is event,
            "tensor_pin_memory": torch.Tensor.pin_memory is pin_memory}

import echo_vllm.workers.gpu
from echo_vllm.scheduler_patches.registry import check_all_overrides
check_all_overrides("cuda")
gpu = state()
import echo_vllm.workers.cpu
print(json.dumps({"gpu": gpu, "cpu": state()}))
"""


def test_gpu_worker_leaves_vllm_cpu_worker_and_torch_alone():
    run = subprocess.run([sys.executable, "-c", PROBE], check=True, capture_output=True, text=True)
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["gpu"] == {"cpu_modules": [], "torch_cuda_event": True, "tensor_pin_memory": True}
    # the control: the CPU worker module does load them and replace torch's own
    assert "vllm.v1.worker.cpu_worker" in seen["cpu"]["cpu_modules"]
    assert seen["cpu"]["torch_cuda_event"] is False
    assert seen["cpu"]["tensor_pin_memory"] is False
