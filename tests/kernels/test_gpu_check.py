"""scripts/gpu_check.py runs end to end on CPU at small sizes (the Triton kernel under
Triton's interpreter) and writes one JSON whose checks all pass."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"


def test_gpu_check_cpu_smoke(tmp_path):
    out = tmp_path / "smoke.json"
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "cpu-smoke" and report["all_ok"] and report["triton_skipped"] is None
    assert {r["kernel"] for r in report["parity"]} == {"cascade", "triton"}
    assert {r["dtype"] for r in report["parity"]} == {"bfloat16", "float16"}
    assert [t["requests"] for t in report["timing"]] == [1, 2]
    assert set(report["timing"][0]["ms"]) == {"cascade", "triton", "floor_prefix_part", "floor_dense_sdpa"}
    assert len(report["core"]) >= 10 and all(r["ok"] for r in report["core"])
