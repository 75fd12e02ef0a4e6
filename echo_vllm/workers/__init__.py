"""Echo's vLLM workers, one module per platform, selected through `ParallelConfig.worker_cls`
(scheduler_patches/patch_arg_utils.py): `cpu.EchoCPUWorker`, `gpu.EchoGPUWorker`; what both
share is in `common`.

vLLM's CPU worker modules (`vllm/v1/worker/cpu*`) replace torch's CUDA events, streams,
memory queries and `Tensor.pin_memory` for the whole process when imported, so only the CPU
module may import them: a GPU worker that did would size its KV cache from host memory.
"""
