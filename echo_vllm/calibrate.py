"""`echo-vllm calibrate`: find the Sweet Spot of a (target, draft) pair and write it down.

Runs the target with echo's static tree (gating off) over a prompt set, greedy, in batches
of the serving batch size; records per request-step the gate statistics by depth and how
deep the target accepted (echo_vllm.runner); times the target pass (cost model) and the
drafter at that batch size; then picks the tree (depth and nodes, within the recorded one),
the judge depth, statistic and threshold with the best expected goodput
(echo_vllm.core.calibration) and writes the calibration file the engine loads with
`"calibration_file": PATH` (and finds beside the head as HEAD/calibration.json).
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from echo_vllm.assets.models import context_length
from echo_vllm.calibration_file import model_fingerprint, write_calibration
from echo_vllm.core.budget import CostModel
from echo_vllm.core.calibration import choose_gate, choose_tree, step_costs, tree_ranks
from echo_vllm.core.gating import STATISTICS
from echo_vllm.device import tool_dtype

ENGINE = dict(enforce_eager=True, gpu_memory_utilization=0.3)


def calibration_prompts(source: str, count: int) -> list[list[dict]]:
    """Chats to calibrate on: the draft-training pool (default: not a benchmark set) or a
    named prompt set."""
    from echo_vllm.assets.prompts import chat_messages, load_prompts
    from echo_vllm.training.prompt_pool import training_prompts

    if source == "training":
        # seed 1: other prompts than a default training run's (seed 0)
        return [[{"role": "user", "content": text}] for text in training_prompts(count, seed=1)]
    return [chat_messages(p) for p in load_prompts(source, limit=count)]


def calibrate(target: str, draft: str, out: str, source: str = "training", num_prompts: int = 128,
              batch_size: int = 16, max_tokens: int = 128, steps: int = 5, topk: int = 8,
              num_draft_tokens: int = 32, remaining_num_draft_tokens: int | None = None,
              records_out: str | None = None, run_batch_size: int | None = None) -> dict:
    """Measure, choose, write `out` (and the raw records to `records_out`, torch.save, for
    offline studies); returns the file's content. The gate is chosen for `batch_size`
    (its costs: the pass's share and the drafting time of a request at that batch size); the
    prompts run `run_batch_size` at a time (default: batch_size), which changes how long the
    run takes, not what it records (greedy, gating off)."""
    from vllm import LLM, SamplingParams

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # a fixed tree, gating off: every request-step records its whole tree
    tree = {"policy": "static", "steps": steps, "topk": topk, "num_draft_tokens": num_draft_tokens}
    chats = calibration_prompts(source, num_prompts)
    run_batch_size = run_batch_size or batch_size
    llm = LLM(model=target, max_num_seqs=run_batch_size, max_model_len=context_length(target, 2048),
              dtype=tool_dtype(), **ENGINE, speculative_config={"method": "echo", "model": draft, **tree})
    (cost_points,) = llm.collective_rpc("echo_start_calibration")
    sampling = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    for start in tqdm(range(0, len(chats), run_batch_size), desc="calibrate", unit="batch"):
        llm.chat(chats[start:start + run_batch_size], sampling, use_tqdm=False)
    ((records, draft_seconds),) = llm.collective_rpc("echo_calibration_records", args=(batch_size,))
    if not records:
        raise RuntimeError("echo-vllm: calibration recorded no verification steps; give more prompts or tokens")
    statistics = torch.tensor([r[0] for r in records])  # [R, D-1, S]
    path_ranks = torch.tensor([r[1] for r in records])  # [R, D]
    cost = CostModel(**cost_points)
    costs = step_costs(cost, draft_seconds / steps, batch_size, num_draft_tokens)
    chosen = choose_tree(path_ranks, costs, num_draft_tokens)
    if records_out:
        torch.save({"statistics": statistics, "path_ranks": path_ranks, "statistic_names": list(STATISTICS),
                    "contexts": torch.tensor([r[2] for r in records]), "context_names": ["acceptance_ema", "prefix_len"],
                    "step_costs": asdict(costs), "num_draft_tokens": num_draft_tokens}, records_out)
    statistic, best, tables = choose_gate(statistics[:, :chosen.steps - 1],
                                          tree_ranks(path_ranks, chosen.steps, chosen.num_draft_tokens),
                                          chosen.num_draft_tokens, remaining_num_draft_tokens, costs)
    content = {
        "steps": chosen.steps, "topk": topk, "num_draft_tokens": chosen.num_draft_tokens,
        "tree_choice": {"expected_committed": chosen.expected_committed,
                        "goodput_vs_recorded_tree": chosen.goodput_gain},
        "judge_depth": [best.depth], "threshold": [best.threshold], "gate_statistic": statistic,
        "remaining_num_draft_tokens": best.remaining_num_draft_tokens,
        # names for messages only (the fingerprints identify the models); no machine paths in a shared file
        "models": {"target": Path(target).name, "draft": Path(draft).name},
        "fingerprints": {"target": model_fingerprint(target), "draft": model_fingerprint(draft)},
        "measured_with": {"prompts": source, "num_prompts": len(chats), "batch_size": batch_size,
                          "run_batch_size": run_batch_size, "max_tokens": max_tokens, "records": len(records),
                          "tree": tree},
        "step_costs": asdict(costs), "cost_model": cost_points,
        "table": {name: [asdict(row) for row in table] for name, table in tables.items()},
    }
    write_calibration(out, content)
    print_table(content, out)
    return content


def print_table(content: dict, out: str) -> None:
    measured = content["measured_with"]
    print(f"\nSweet-Spot calibration, {measured['records']} request-steps recorded on tree steps "
          f"{measured['tree']['steps']} x topk {measured['tree']['topk']}, {measured['tree']['num_draft_tokens']} "
          f"nodes; for batch size {measured['batch_size']}")
    print(f"tree: steps {content['steps']}, {content['num_draft_tokens']} nodes, expected "
          f"{content['tree_choice']['expected_committed']:.2f} tokens per request-step, goodput "
          f"{content['tree_choice']['goodput_vs_recorded_tree']:.3f}x the recorded tree's")
    print("| statistic | depth | remaining | AUC | threshold | gated | E[committed] | goodput vs no gate |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rows in content["table"].items():
        for row in rows:
            print(f"| {name} | {row['depth']} | {row['remaining_num_draft_tokens']} | {row['auc']:.3f} | {row['threshold']:.4f} | "
                  f"{row['gated_fraction']:.0%} | {row['expected_committed']:.2f} | {row['goodput_gain']:.3f}x |")
    print(f"\nchosen: {content['gate_statistic']} at depth {content['judge_depth'][0]}, threshold "
          f"{content['threshold'][0]:.4f}, remaining_num_draft_tokens {content['remaining_num_draft_tokens']}")
    print(f"written to {Path(out)}; use it with \"calibration_file\": \"{out}\"")
