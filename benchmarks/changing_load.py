"""Served servers under a load that changes (echo_vllm/bench/changing_load.py): every server runs
the same phases, each CONCURRENCYxREQUESTS (`1x8,16x32,64x128,4x16,1x8`: one request at a
time, then 16 in flight, 64, 4, one again), in turns through `vllm bench serve`; the report
asks whether echo beats each fixed configuration over the whole sequence (>= 1.05x) without
falling below 0.95x of any phase's best server.

Start the servers here (examples/serve.sh on 127.0.0.1, ports 8000 and up, in this order),
measure, stop them (also on an error or Ctrl-C); their logs go to a temporary directory whose
path is printed:

    .venv/bin/python benchmarks/changing_load.py --start
    .venv/bin/python benchmarks/changing_load.py --start --servers plain,echo --phases 1x2,4x4,1x2 \\
        --rounds 1 --max-tokens 16 --out bench-out/changing-load-smoke

  plain          no speculation
  eagle3 K=1..3  vLLM's EAGLE-3 chain of K drafts with the committed head (heads/smollm2-135m-eagle3)
  dynamic_sd     vLLM's dynamic speculative decoding, the same head with K by batch size:
                 --dynamic-sd-table (vLLM's num_speculative_tokens_per_batch_size, inclusive
                 ranges [first, last, K]), by default echo_vllm.bench.plan.DYNAMIC_SD_TABLE
  echo           echo with the committed head (its calibration file beside it)

Every EAGLE-3 server keeps the last block of a prefix-cache hit, as echo does
(`disable_eagle_block_drop`; vLLM's default drops it and computes it again): served, where
prompts share a chat template's system prompt, the dropped block cost every speculative server
about a tenth of a prefill-heavy phase against no speculation.

The servers start with VLLM_LOG_STATS_INTERVAL=1, so that echo's counters (updated once per
stats interval) reach /metrics every second for the plot's budget panel. A server takes about
3.7 GiB on a CPU (float32, a 1 GiB KV cache; two took 7.5 GiB on the 2-core, 24 GiB machine):
the six need about 22 GiB, more than such a machine has beside anything else; start fewer
there (--servers) or measure on a larger one.

Or measure servers already running, one of them named `plain` (start them with
VLLM_LOG_STATS_INTERVAL=1 for the budget panel):

    .venv/bin/python benchmarks/changing_load.py --serve plain=http://127.0.0.1:8000 \\
        --serve echo=http://127.0.0.1:8002

After every round: OUT/report.md (tokens/s and TPOT per phase, overall tokens/s and every
ratio, echo's goal), OUT/results.json (those, every turn's row and /metrics readings),
OUT/changing_load.png (requests running, echo's budget per step and tokens/s over each
server's own busy time); OUT/vllm-bench/ keeps the datasets and vllm bench serve's output.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from echo_vllm.assets.models import model_dir  # noqa: E402
from echo_vllm.bench import online  # noqa: E402
from echo_vllm.bench.plan import DYNAMIC_SD_TABLE, dynamic_sd_config, dynamic_sd_table  # noqa: E402
from echo_vllm.bench.changing_load import (  # noqa: E402
    ChangingLoadPlan, file_stem, parse_phases, run_changing_load, write_outputs)
from echo_vllm.serving import stop  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SERVE = REPO / "examples" / "serve.sh"
TARGET = "smollm2-135m"  # what examples/serve.sh serves; vllm bench serve counts tokens with its tokenizer
HEAD = "heads/smollm2-135m-eagle3"  # relative: examples/serve.sh runs in the repository root
FIRST_PORT = 8000
DEFAULT_SERVERS = ("plain", "eagle3 K=1", "eagle3 K=2", "eagle3 K=3", "dynamic_sd", "echo")
START_TIMEOUT_S = 900  # six servers starting at once on two cores take minutes


def speculative_configs(dynamic_sd_table: tuple) -> dict[str, str]:
    """Each default server's SPECULATIVE_CONFIG for examples/serve.sh ("": no speculation)."""
    configs = {"plain": ""}
    keep_block = {"disable_eagle_block_drop": True}
    for k in (1, 2, 3):
        configs[f"eagle3 K={k}"] = json.dumps({"method": "eagle3", "model": HEAD, "num_speculative_tokens": k,
                                                **keep_block})
    configs["dynamic_sd"] = json.dumps({**dynamic_sd_config(HEAD, dynamic_sd_table), **keep_block})
    configs["echo"] = json.dumps({"method": "echo", "model": HEAD})
    return configs


def dynamic_sd_table_option(value: str) -> tuple:
    try:
        return dynamic_sd_table(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def start_server(name: str, port: int, config: str, logs: Path) -> subprocess.Popen:
    """examples/serve.sh with this speculative config on `port`, its output in LOGS/NAME.log."""
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise RuntimeError(f"changing_load: port {port} (for {name}) is in use; stop what listens there, or "
                               "start the servers yourself and pass --serve NAME=URL")
    env = {**os.environ, "PORT": str(port), "SPECULATIVE_CONFIG": config, "VLLM_LOG_STATS_INTERVAL": "1"}
    with open(logs / f"{file_stem(name)}.log", "w") as log:
        return subprocess.Popen([str(SERVE)], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v1/models", timeout=5):
            return True
    except OSError:
        return False


def wait_until_serving(name: str, url: str, process: subprocess.Popen, log: Path) -> None:
    """Returns once `url` answers /v1/models; an error naming the log if the server exits or
    does not answer within START_TIMEOUT_S."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not answers(url):
        if process.poll() is not None:
            raise RuntimeError(f"changing_load: the {name} server exited ({process.returncode}) before serving; "
                               f"see {log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"changing_load: the {name} server did not answer within {START_TIMEOUT_S} s; see {log}")
        time.sleep(1)


@contextlib.contextmanager
def started_servers(servers: dict[str, str], configs: dict[str, str]) -> Iterator[None]:
    """Every server of `servers` (name -> its loopback URL) started at once, awaited, and
    stopped when the block ends, however it ends."""
    logs = Path(tempfile.mkdtemp(prefix="changing-load-"))
    print(f"changing_load: server logs in {logs}", flush=True)
    processes = []
    try:
        for name, url in servers.items():
            processes.append(start_server(name, int(url.rsplit(":", 1)[1]), configs[name], logs))
        for (name, url), process in zip(servers.items(), processes):
            wait_until_serving(name, url, process, logs / f"{file_stem(name)}.log")
            print(f"changing_load: {name} serves at {url}", flush=True)
        yield
    finally:
        for process in processes:
            stop(process)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--serve", action="append", metavar="NAME=URL",
                       help="a running server, repeated per server; one must be named plain")
    which.add_argument("--start", action="store_true", help="start the --servers here with examples/serve.sh")
    parser.add_argument("--servers", default=",".join(DEFAULT_SERVERS),
                        help="with --start: which of the default servers, comma-separated, plain among them "
                        "(default: %(default)s)")
    parser.add_argument("--dynamic-sd-table", type=dynamic_sd_table_option, default=DYNAMIC_SD_TABLE,
                        help="with --start: dynamic_sd's [[first, last, K], ...] by batch size, as JSON "
                        "(default: %(default)s)")
    parser.add_argument("--phases", default="1x8,16x32,64x128,4x16,1x8",
                        help="CONCURRENCYxREQUESTS, in order (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="every phase on every server, this many times (default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=128,
                        help="output tokens per request, ignore_eos (default: %(default)s)")
    parser.add_argument("--out", default="bench-out/changing-load",
                        help="directory for report.md, results.json, changing_load.png (default: %(default)s)")
    return parser


def chosen_servers(args: argparse.Namespace) -> dict[str, str]:
    """Name -> URL: the --serve pairs, or the --start servers on ports FIRST_PORT and up."""
    if not args.start:
        return online.parse_servers(args.serve)
    names = [name.strip() for name in args.servers.split(",")]
    unknown = [name for name in names if name not in DEFAULT_SERVERS]
    if unknown:
        raise ValueError(f"changing_load: --servers {unknown} unknown; choose from {list(DEFAULT_SERVERS)}")
    return online.parse_servers([f"{name}=http://127.0.0.1:{port}" for port, name in enumerate(names, FIRST_PORT)])


def main() -> None:
    args = build_parser().parse_args()
    if args.rounds < 1 or args.max_tokens < 1:
        raise ValueError(f"changing_load: --rounds and --max-tokens must be >= 1, got {args.rounds} and "
                         f"{args.max_tokens}")
    # a plain kill (SIGTERM) ends the script through its finally blocks: started servers stop too
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    servers = chosen_servers(args)
    plan = ChangingLoadPlan(servers, parse_phases(args.phases), args.rounds, args.max_tokens, str(model_dir(TARGET)),
                            Path(args.out))
    starting = started_servers(servers, speculative_configs(args.dynamic_sd_table)) if args.start else None
    with starting or contextlib.nullcontext():
        run_changing_load(plan, lambda results: write_outputs(results, plan.out))
    print((plan.out / "report.md").read_text())
    print(f"changing_load: wrote {plan.out}/report.md, results.json, changing_load.png")


if __name__ == "__main__":
    main()
