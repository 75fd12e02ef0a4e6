"""The examples run as written (examples/offline_batch.py end to end; serve.sh's command line)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_offline_batch_writes_every_answer_in_order(smollm2, tmp_path):
    prompts = ["Name a primary colour.", "What is 3 + 4?", "Say hello in French.", "Name a planet."]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    out = tmp_path / "answers.jsonl"
    subprocess.run([sys.executable, str(ROOT / "examples" / "offline_batch.py"), "--prompts",
                    str(tmp_path / "prompts.txt"), "--out", str(out), "--max-tokens", "16"],
                   check=True, cwd=tmp_path, timeout=600)
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["prompt"] for a in answers] == prompts
    assert all(a["answer"].strip() for a in answers)


def test_ray_data_batch_inference_returns_every_answer_in_order(smollm2, tmp_path):
    """Two actors, each an echo engine, on a local Ray instance started by the example."""
    from echo_vllm.assets.prompts import load_prompts

    out = tmp_path / "answers.jsonl"
    subprocess.run([sys.executable, str(ROOT / "examples" / "ray" / "batch_inference.py"), "--actors", "2",
                    "--limit", "8", "--max-tokens", "16", "--out", str(out)], check=True, cwd=tmp_path, timeout=900)
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["id"] for a in answers] == list(range(8))
    assert [a["prompt"] for a in answers] == [p.text for p in load_prompts("mt_bench", 8)]
    assert all(a["answer"].strip() for a in answers)


def test_serve_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(ROOT / "examples" / "serve.sh")], check=True)
