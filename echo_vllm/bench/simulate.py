"""`echo-vllm bench --simulate RESULTS --profile P`: a projection, not a measurement.

Takes the acceptance a real bench run measured (each method's MAT and draft tokens verified
per request per step from the throughput table; echo's learned acceptance curve) and
projects throughput for a target and batch sizes this machine cannot run, with step times
from a GPU roofline:

  target pass of n tokens   max(weights read / bandwidth, 2 * active params * n / flops)
                            + KV read (B requests * context * KV bytes per token) / bandwidth
  draft pass of r rows      the same roofline for the head's parameters (no KV term)
  step                      target pass + draft passes + a fixed step overhead

Bandwidth and flops are the GPUs' peaks times efficiency factors; tensor-parallel
communication and scheduling beyond the fixed overhead are left out. A method drafts its
measured depth (eagle3: K passes of 1 row; trees: `steps` passes of `topk` rows per request).
Echo picks, at each batch size, the budget on its acceptance curve with the best projected
goodput, or no drafting, as it does online (core.budget.step_goodputs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from echo_vllm.bench.plan import STATIC_TREE
from echo_vllm.core.budget import CostModel, piecewise_linear, step_goodputs

H100 = {"gpu_bandwidth_tb_s": 3.35, "gpu_tflops": 989.0}


@dataclass(frozen=True)
class Profile:
    """A target on GPUs, as the roofline sees it (assumptions, printed with the projection)."""

    name: str
    gpus: int
    gpu_bandwidth_tb_s: float  # HBM per GPU
    gpu_tflops: float  # dense bf16 per GPU
    params_b: float  # all weights, billions
    active_params_b: float  # weights a token passes through (MoE: shared + active experts)
    expert_params_b: float  # MoE expert weights (0 for dense); read as far as tokens route to them
    experts_per_token_share: float  # active experts / experts (MoE), 1 for dense
    kv_bytes_per_token: int  # all layers, K and V
    head_params_b: float  # the EAGLE-3 head (one layer, fc, draft lm_head)
    bytes_per_param: float = 2.0
    bandwidth_efficiency: float = 0.75
    flops_efficiency: float = 0.6
    step_overhead_ms: float = 3.0
    context_tokens: int = 400  # mean context while decoding (input + half the output)


PROFILES = {
    "llama-8b-1xh100": Profile("llama-8b-1xh100", 1, **H100, params_b=8.0, active_params_b=8.0,
                               expert_params_b=0.0, experts_per_token_share=1.0,
                               kv_bytes_per_token=32 * 2 * 8 * 128 * 2, head_params_b=0.4),
    "llama-70b-4xh100": Profile("llama-70b-4xh100", 4, **H100, params_b=70.0, active_params_b=70.0,
                                expert_params_b=0.0, experts_per_token_share=1.0,
                                kv_bytes_per_token=80 * 2 * 8 * 128 * 2, head_params_b=1.3),
    "qwen3-235b-a22b-8xh100": Profile("qwen3-235b-a22b-8xh100", 8, **H100, params_b=235.0, active_params_b=22.0,
                                      expert_params_b=227.0, experts_per_token_share=8 / 128,
                                      kv_bytes_per_token=94 * 2 * 4 * 128 * 2, head_params_b=1.0),
}


def load_profile(name_or_path: str) -> Profile:
    if name_or_path in PROFILES:
        return PROFILES[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise ValueError(f"echo-vllm bench: --profile {name_or_path!r} is neither a built-in profile "
                         f"({sorted(PROFILES)}) nor a JSON file")
    values = json.loads(path.read_text())
    known = {f.name for f in fields(Profile)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"echo-vllm bench: profile {name_or_path!r} has unknown key(s) {unknown}; known: {sorted(known)}")
    try:
        return Profile(**values)
    except TypeError as error:
        raise ValueError(f"echo-vllm bench: profile {name_or_path!r}: {error}") from None


def pass_seconds(profile: Profile, tokens: float, params_b: float, active_b: float, expert_b: float,
                 kv_tokens: float) -> float:
    """Roofline time of one forward pass over `tokens` rows."""
    bandwidth = profile.gpus * profile.gpu_bandwidth_tb_s * 1e12 * profile.bandwidth_efficiency
    flops = profile.gpus * profile.gpu_tflops * 1e12 * profile.flops_efficiency
    expert_read = expert_b * min(1.0, tokens * profile.experts_per_token_share)
    weights = (params_b - expert_b + expert_read) * 1e9 * profile.bytes_per_param
    compute = 2 * active_b * 1e9 * tokens
    return max(weights / bandwidth, compute / flops) + kv_tokens * profile.kv_bytes_per_token / bandwidth


def target_seconds(profile: Profile, batch: int, tokens: float) -> float:
    return pass_seconds(profile, tokens, profile.params_b, profile.active_params_b, profile.expert_params_b,
                        batch * profile.context_tokens)


def draft_seconds(profile: Profile, batch: int, passes: int, rows_per_request: int) -> float:
    head = profile.head_params_b
    return passes * pass_seconds(profile, batch * rows_per_request, head, head, 0.0, 0.0)


def draft_shape(name: str) -> tuple[int, int]:
    """(draft passes, rows per request per pass) of a method as the bench ran it (eagle3 K=k:
    k chain passes; echo's policies: the static tree's depth and width)."""
    if name.startswith("eagle3 K="):
        return int(name.split("=")[1]), 1
    return STATIC_TREE["steps"], STATIC_TREE["topk"]


def project_method(profile: Profile, batch: int, measured: dict, name: str) -> dict:
    """A fixed-shape method: its measured acceptance at this profile's step time."""
    overhead = profile.step_overhead_ms / 1e3
    if measured["mat"] is None:  # it drafted nothing: a plain step
        seconds = target_seconds(profile, batch, batch) + overhead
        return {"tokens_per_s": batch / seconds}
    passes, rows = draft_shape(name)
    verified = batch * (1 + measured["verified_drafts_per_step"])
    seconds = target_seconds(profile, batch, verified) + draft_seconds(profile, batch, passes, rows) + overhead
    return {"tokens_per_s": batch * measured["mat"] / seconds}


def project_echo(profile: Profile, batch: int, curve: dict) -> dict:
    """Echo's best budget at this batch size on its acceptance curve, or no drafting."""
    grid = torch.tensor(curve["drafts_per_request"], dtype=torch.float64)
    per_request = torch.tensor(curve["accepted_per_request"], dtype=torch.float64)
    budgets = torch.arange(int(grid[-1] * batch) + 1, dtype=torch.float64)
    gains = batch * piecewise_linear(budgets / batch, grid, per_request)
    sizes = torch.unique(torch.cat([torch.tensor([1.0, 2.0]), batch + budgets]))
    cost = CostModel(sizes.tolist(), [target_seconds(profile, batch, float(n)) for n in sizes])
    overhead = profile.step_overhead_ms / 1e3
    plain = batch / (target_seconds(profile, batch, batch) + overhead)
    drafting = step_goodputs(batch, gains, cost, overhead + draft_seconds(profile, batch, STATIC_TREE["steps"],
                                                                        STATIC_TREE["topk"]))
    best = int(drafting.argmax())
    if float(drafting[best]) <= plain:
        return {"tokens_per_s": plain, "drafts_per_request": 0.0}
    return {"tokens_per_s": float(drafting[best]), "drafts_per_request": best / batch}


def project(results: dict, profile: Profile, batch_sizes: list[int]) -> dict:
    """Projected tokens/s and x plain per batch size and method."""
    measured = results["throughput"]
    if not measured:
        raise ValueError("echo-vllm bench: --simulate needs a run with the throughput table")
    measured_sizes = sorted(int(b) for b in measured)
    out = {}
    for batch in batch_sizes:
        nearest = str(min(measured_sizes, key=lambda b: abs(b - batch)))
        plain = batch / (target_seconds(profile, batch, batch) + profile.step_overhead_ms / 1e3)
        rows = {}
        for name, r in measured[nearest].items():
            if name == "echo" and (r.get("echo") or {}).get("acceptance_curve"):
                rows[name] = project_echo(profile, batch, r["echo"]["acceptance_curve"])
            elif "verified_drafts_per_step" in r:
                rows[name] = project_method(profile, batch, r, name)
            else:
                continue
            rows[name]["x_plain"] = rows[name]["tokens_per_s"] / plain
        out[str(batch)] = {"plain_tokens_per_s": plain, "acceptance_from_bs": int(nearest), "methods": rows}
    return out


def _curve_at(curve: dict, drafts_per_request: float) -> float:
    grid = torch.tensor(curve["drafts_per_request"], dtype=torch.float64)
    accepted = torch.tensor(curve["accepted_per_request"], dtype=torch.float64)
    return float(piecewise_linear(torch.tensor([drafts_per_request], dtype=torch.float64), grid, accepted)[0])


def why_echo_below_static(batch: str, p: dict, measured: dict) -> str:
    """One line on the numbers behind echo below static at this batch size: the measured
    acceptance each stands on (echo: its own acceptance curve; static: its whole tree)."""
    source = measured["throughput"][str(p["acceptance_from_bs"])]
    echo, static = p["methods"]["echo"], p["methods"]["static"]
    static_row = source["static"]
    static_says = (f"static's whole tree ({static_row['verified_drafts_per_step']:.0f} drafts per request) "
                   f"accepted {static_row['mat'] - 1:.2f} there")
    head = f"- bs {batch}: echo {echo['x_plain']:.2f}x, static {static['x_plain']:.2f}x:"
    decisions = (source.get("echo") or {}).get("echo") or {}
    curve = decisions.get("acceptance_curve")
    if not curve or "drafts_per_request" not in echo:
        return f"{head} echo's measured MAT {_rounded(source.get('echo', {}).get('mat'))}; {static_says}."
    top = max(curve["accepted_per_request"])
    knee = next(d for d, a in zip(curve["drafts_per_request"], curve["accepted_per_request"]) if a >= 0.99 * top)
    gate = ("" if decisions.get("gate_pass_rate") is None else
            f", its gate passing {decisions['gate_pass_rate']:.0%} of trees and a stopped tree keeping "
            f"{decisions['remaining_num_draft_tokens']} nodes")
    return (f"{head} echo's curve (measured at bs {p['acceptance_from_bs']}{gate}) levels off at {top:.2f} accepted "
            f"tokens per request from {knee:g} drafts per request on, so its {echo['drafts_per_request']:.1f} drafts "
            f"per request buy {_curve_at(curve, echo['drafts_per_request']):.2f}; {static_says}.")


WHY_ECHO_BELOW_STATIC = (
    "Echo projects from its own acceptance curve, which holds only the nodes its gate let grow in the "
    "measured run; static's figure is its whole tree, verified on every step. Where verifying a whole tree "
    "costs little more than a plain step (memory-bound steps at small batches on this profile), static's "
    "deeper measured acceptance wins. The projection credits each method only with what it was seen to "
    "accept: echo's gate, calibrated for the measuring machine's step costs, stopped the trees that would "
    "pay here. On this profile's GPUs echo would calibrate its gate for their step costs.")


def _rounded(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def echo_below_static(projection: dict) -> list[str]:
    """The batch sizes where echo projects below static."""
    return [b for b, p in projection.items() if "echo" in p["methods"] and "static" in p["methods"]
            and p["methods"]["echo"]["x_plain"] < p["methods"]["static"]["x_plain"]]


def projection_markdown(projection: dict, profile: Profile, source: str, measured: dict | None = None) -> str:
    """The projection table; where echo projects below static, its row says so and a note
    below the table says why (from the measured results, when given)."""
    lines = [f"# PROJECTION (not a measurement): profile {profile.name}", "",
             f"Acceptance measured in `{source}`; step times from a roofline with these assumptions: "
             f"`{json.dumps(profile.__dict__)}`. See `echo_vllm/bench/simulate.py` for the model.", "",
             "| bs | acceptance from bs | method | projected tok/s | x plain | echo drafts/request | note |",
             "|---|---|---|---|---|---|---|"]
    below = echo_below_static(projection)
    for batch, p in projection.items():
        lines.append(f"| {batch} | {p['acceptance_from_bs']} | no speculation | {p['plain_tokens_per_s']:.0f} | 1.00 "
                     "| | |")
        for name, r in p["methods"].items():
            drafts = f"{r['drafts_per_request']:.2f}" if "drafts_per_request" in r else ""
            note = "below static: why under the table" if name == "echo" and batch in below else ""
            lines.append(f"| {batch} | {p['acceptance_from_bs']} | {name} | {r['tokens_per_s']:.0f} | "
                         f"{r['x_plain']:.2f} | {drafts} | {note} |")
    if below and measured is not None:
        lines += ["", "## Where echo projects below static, and why", "", WHY_ECHO_BELOW_STATIC, "",
                  *(why_echo_below_static(b, projection[b], measured) for b in below)]
    elif below:
        lines += ["", f"Echo projects below static at bs {', '.join(below)}; `{source}` (the measured results "
                  "that would say why) was not found."]
    lines += ["", "![projected speedup by batch size](projection.png)"]
    return "\n".join(lines) + "\n"


def write_projection(projection: dict, profile: Profile | dict, source: str, out_dir: Path) -> list[Path]:
    """projection.md (with the notes on echo below static when `source` can be read) and
    projection.png in `out_dir`; the paths written."""
    from echo_vllm.bench.plots import write_projection_plot

    profile = profile if isinstance(profile, Profile) else Profile(**profile)
    measured = json.loads(Path(source).read_text())["results"] if Path(source).is_file() else None
    (out_dir / "projection.md").write_text(projection_markdown(projection, profile, source, measured))
    return [out_dir / "projection.md", write_projection_plot(projection, profile.name, source, out_dir)]
