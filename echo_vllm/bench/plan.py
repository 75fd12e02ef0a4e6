"""What one `echo-vllm bench` run measures, checked before any model loads.

Methods are named as the tables print them: `eagle3 K=2` (vLLM's chain), `dynamic_sd` (vLLM's
Dynamic SD: eagle3 with a chain length per batch-size range), `static`, `ddd`, `opt_tree`,
`echo` (echo's policies through the same tree machinery). No speculation (`plain`) is always
measured: every ratio is against it, from runs interleaved with it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from echo_vllm.assets.prompts import DATASETS
from echo_vllm.config import parse_echo_config

POLICY_METHODS = ("static", "ddd", "opt_tree", "echo")
METHODS = ("eagle3", "dynamic_sd", *POLICY_METHODS)
TABLES = ("latency", "throughput")
# SGLang's EAGLE-3 tree (steps, topk, num_draft_tokens): the seed's static configuration
STATIC_TREE = {"steps": 5, "topk": 8, "num_draft_tokens": 32}
# vLLM Dynamic SD's (first batch size, last batch size, eagle3 chain length) ranges: the best
# hand table found for SmolLM2-135M and the committed head on the 2-core AMD EPYC (AVX2) this
# project measures on since 2026-12-07. At one request eagle3 K=1 is the better chain on two
# sets of three and on average (Table 1, docs/results/elastic-depth/table1: K=1 1.05, 1.02,
# 1.18x no speculation on MT-Bench, HumanEval, GSM8K-style, K=2 1.09, 0.94, 1.15x; served,
# docs/results/changing-load-per-depth: K=1 1.18 and 1.14x, K=2 1.14 and 1.19x), and from 4
# requests on no speculation is best (K=1 0.97x at 4 served, 0.90x at 8 offline). On an AVX-512
# EPYC, where a pass over 3-6 tokens costs less than one over 1-2, the best chain at one request
# is K=2 or K=3 (docs/results/avx512/table1: K=1 1.07, 0.93, 1.09x, K=2 1.43, 1.16, 1.42x, K=3
# 1.45, 1.14, 1.49x): pass --dynamic-sd-table '[[1,2,3],[3,1024,0]]' there.
DYNAMIC_SD_TABLE = ((1, 2, 1), (3, 1024, 0))


@dataclasses.dataclass(frozen=True)
class BenchPlan:
    target: str  # model directory
    head: str | None  # EAGLE-3 head directory (None against servers: each was started with its method)
    calibration: str | None  # echo's calibration file; None: echo calibrates online
    methods: tuple[str, ...]  # from METHODS
    eagle3_ks: tuple[int, ...]
    tables: tuple[str, ...]  # from TABLES
    datasets: tuple[str, ...]  # latency table
    latency_prompts: int  # prompts per dataset, run one at a time
    batch_sizes: tuple[int, ...]  # throughput table
    input_tokens: int  # throughput table: prompts chosen near this length
    max_tokens: int
    repetitions: int
    ddd_threshold: float
    opt_tree_gain: float
    out: str  # directory: report.md, results.json, *.png
    dynamic_sd_table: tuple[tuple[int, int, int], ...] = DYNAMIC_SD_TABLE

    def method_configs(self) -> dict[str, dict]:
        """Each speculative method's `speculative_config`, by table name."""
        configs: dict[str, dict] = {}
        echo = {"method": "echo", "model": self.head}
        for method in self.methods:
            if method == "eagle3":
                for k in self.eagle3_ks:
                    configs[f"eagle3 K={k}"] = {"method": "eagle3", "model": self.head, "num_speculative_tokens": k}
            elif method == "dynamic_sd":
                configs["dynamic_sd"] = dynamic_sd_config(self.head, self.dynamic_sd_table)
            elif method == "static":
                configs["static"] = {**echo, **STATIC_TREE, "policy": "static"}
            elif method == "ddd":
                configs["ddd"] = {**echo, **STATIC_TREE, "policy": "ddd", "threshold": self.ddd_threshold}
            elif method == "opt_tree":
                configs["opt_tree"] = {**echo, **STATIC_TREE, "policy": "opt_tree", "threshold": self.opt_tree_gain}
            else:  # echo: its gate from the calibration file, else calibrated over its first steps
                configs["echo"] = ({**echo, "calibration_file": self.calibration} if self.calibration
                                   else {**echo, **STATIC_TREE, "policy": "echo"})
        return configs


def _fail(message: str) -> ValueError:
    return ValueError(f"echo-vllm bench: {message}")


def _names(value: str, option: str, known: tuple[str, ...]) -> tuple[str, ...]:
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [n for n in names if n not in known]
    if not names or unknown:
        raise _fail(f"{option} {value!r}: unknown {unknown or 'empty'}; known: {list(known)}")
    return names


def positive_ints(value: str, option: str) -> tuple[int, ...]:
    try:
        numbers = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise _fail(f"{option} must be comma-separated integers, got {value!r}") from None
    if not numbers or min(numbers) < 1 or len(set(numbers)) != len(numbers):
        raise _fail(f"{option} must list distinct integers >= 1, got {value!r}")
    return numbers


def dynamic_sd_table(value: str) -> tuple[tuple[int, int, int], ...]:
    """`--dynamic-sd-table`: JSON [[first bs, last bs, K], ...] that vLLM's own check takes
    (num_speculative_tokens_per_batch_size), with some K >= 1."""
    from vllm.v1.spec_decode.dynamic.utils import validate_and_normalize_dynamic_sd_schedule

    try:
        table = tuple(validate_and_normalize_dynamic_sd_schedule(json.loads(value)))
    except (ValueError, TypeError) as error:  # json's errors are ValueErrors too
        raise _fail(f"--dynamic-sd-table {value!r} is not a table vLLM takes: {error}") from None
    if max(k for _, _, k in table) < 1:
        raise _fail(f"--dynamic-sd-table {value!r} drafts at no batch size: give some range a K >= 1")
    return table


def dynamic_sd_config(head: str, table: tuple[tuple[int, int, int], ...]) -> dict:
    """vLLM's Dynamic SD: eagle3 with a chain length per batch-size range. vLLM drafts at most
    num_speculative_tokens whatever the table says: the table's largest K."""
    return {"method": "eagle3", "model": head, "num_speculative_tokens": max(k for _, _, k in table),
            "num_speculative_tokens_per_batch_size": [list(r) for r in table]}


def _model_dir(path: str, option: str) -> str:
    if not (Path(path) / "config.json").is_file():
        raise _fail(f"{option} {path!r} is not a model directory (no config.json)")
    return path


def build_plan(target: str, head: str, calibration: str | None, methods: str, eagle3_k: str, tables: str,
               datasets: str, latency_prompts: int, batch_sizes: str, input_tokens: int, max_tokens: int,
               repetitions: int, ddd_threshold: float, opt_tree_gain: float, out: str,
               dynamic_sd: str = json.dumps(DYNAMIC_SD_TABLE)) -> BenchPlan:
    """The plan from command-line values; a ValueError naming the option for anything it
    cannot run (every echo config is validated as the engine would, calibration file included).
    Without a head (servers measured as they were started), no method config is built."""
    for option, value, low in (("--latency-prompts", latency_prompts, 1), ("--input-tokens", input_tokens, 8),
                               ("--max-tokens", max_tokens, 1), ("--repetitions", repetitions, 1)):
        if value < low:
            raise _fail(f"{option} must be >= {low}, got {value}")
    if os.path.exists(out) and not os.path.isdir(out):
        raise _fail(f"--out {out!r} exists and is not a directory")
    plan = BenchPlan(
        target=_model_dir(target, "--target"), head=None if head is None else _model_dir(head, "--head"),
        calibration=calibration,
        methods=_names(methods, "--methods", METHODS), eagle3_ks=positive_ints(eagle3_k, "--eagle3-k"),
        tables=_names(tables, "--tables", TABLES), datasets=_names(datasets, "--datasets", DATASETS),
        latency_prompts=latency_prompts, batch_sizes=positive_ints(batch_sizes, "--batch-sizes"),
        input_tokens=input_tokens, max_tokens=max_tokens, repetitions=repetitions,
        ddd_threshold=ddd_threshold, opt_tree_gain=opt_tree_gain, out=out,
        dynamic_sd_table=dynamic_sd_table(dynamic_sd),
    )
    for name, config in (plan.method_configs() if head is not None else {}).items():
        if config["method"] == "echo":
            try:
                parse_echo_config(config)
            except ValueError as error:
                raise _fail(f"method {name!r}: {error}") from None
    return plan
