"""Start-up time of `vllm serve` with echo against the same server without speculation:
seconds from launch until the server answers (polled every second), one server at a time.

  plain        no speculation
  echo first   echo with its calibration file (policy echo, auto budget): the target's cost
               model is measured (with --fresh the cached one is deleted first) and cached
  echo again   the same server started again: the cost model comes from the cache

    .venv/bin/python benchmarks/start_time.py [--fresh] [--out bench-out/start_time]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from echo_vllm.assets.models import cache_dir, prepare_model  # noqa: E402
from echo_vllm.serving import vllm_server  # noqa: E402

HEAD = Path(__file__).resolve().parents[1] / "heads" / "smollm2-135m-eagle3"
ECHO = {"method": "echo", "model": str(HEAD), "calibration_file": str(HEAD / "calibration.json")}


def start_seconds(model: str, options: list[str], log: Path) -> tuple[float, list[str]]:
    """Seconds until the server is healthy, and echo's cost-model lines from its log."""
    start = time.monotonic()
    with vllm_server(model, options, log, timeout_s=900) as server:
        seconds = time.monotonic() - start
        lines = [line for line in server.log_tail(10**7).splitlines() if "cost model" in line]
    return seconds, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", action="store_true", help="delete cached cost models first")
    parser.add_argument("--out", default="bench-out/start_time", help="server logs and start_time.json")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.fresh:
        for path in (cache_dir() / "cost_models").glob("*.json"):
            path.unlink()
    model = str(prepare_model("smollm2-135m"))
    echo = ["--speculative-config", json.dumps(ECHO)]
    results = {}
    for name, options in (("plain", []), ("echo first", echo), ("echo again", echo)):
        seconds, lines = start_seconds(model, options, out / f"{name.replace(' ', '_')}.log")
        results[name] = seconds
        print(f"{name:10s} {seconds:6.1f} s", *(f"\n    {line.strip()[-160:]}" for line in lines))
    print(f"echo again - plain: {results['echo again'] - results['plain']:+.1f} s")
    (out / "start_time.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
