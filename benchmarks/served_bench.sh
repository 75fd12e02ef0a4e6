#!/usr/bin/env bash
# The throughput table through the OpenAI server: three servers started by examples/serve.sh on
# loopback (no speculation :8000, vLLM eagle3 K=2 with the same head :8001, echo :8002), measured
# in turns by `echo-vllm bench --serve`, then stopped.
#
#   benchmarks/served_bench.sh OUT [more echo-vllm bench options, e.g. --batch-sizes 1,8,32]
#
# The servers share the machine but only one is busy at a time (the bench runs them in turns).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: benchmarks/served_bench.sh OUT [echo-vllm bench options]}"
shift
LOGS="$(mktemp -d)"
echo "served_bench: server logs in $LOGS"
HEAD=heads/smollm2-135m-eagle3
SERVERS=()
trap 'kill "${SERVERS[@]}" 2>/dev/null; wait' EXIT
start() {  # name port [speculative-config; without it, serve.sh's own: echo]
  (
    if [ $# -ge 3 ]; then export SPECULATIVE_CONFIG="$3"; else unset SPECULATIVE_CONFIG; fi
    PORT="$2" exec examples/serve.sh > "$LOGS/$1.log" 2>&1
  ) &
  SERVERS+=($!)
}
start plain 8000 ""
start eagle3 8001 "{\"method\": \"eagle3\", \"model\": \"$HEAD\", \"num_speculative_tokens\": 2}"
start echo 8002
for port in 8000 8001 8002; do
  for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$port/v1/models" > /dev/null && continue 2
    sleep 1
  done
  echo "served_bench: the server on :$port did not start; see $LOGS" >&2
  exit 1
done
HF_HUB_OFFLINE=1 .venv/bin/echo-vllm bench --serve plain=http://127.0.0.1:8000 \
  --serve eagle3=http://127.0.0.1:8001 --serve echo=http://127.0.0.1:8002 --tables throughput \
  --out "$OUT" "$@"
