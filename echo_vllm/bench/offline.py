"""`echo-vllm bench` through `LLM()`: every method beside one plain engine, taking turns.

Memory holds two engines with room, not one per method, so the plain engine stays up and
each speculative engine starts in turn. For every workload (a dataset at bs 1, or a batch
size) the two run alternately, plain then method, `repetitions` times after a warm-up: drift
on a shared machine hits both alike, and each ratio compares medians of the same turns. The
warm-up runs the whole workload (a full batch) with WARM_UP_TOKENS output tokens, so that what
an engine does once per batch size lands before the measured runs: new pass shapes (the CPU's
GEMM library builds a kernel per shape), and echo's first measurements there.

One run of a workload:
  tokens/s      output tokens / wall time (bs 1: the prompts one after another; bs B: B
                prompts submitted at once)
  MAT           tokens committed per request per verification step, bonus included
                (1 + accepted / drafts, vLLM's spec-decode counters)
  utilization   accepted draft tokens / verified draft tokens
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from tqdm import tqdm

from echo_vllm.assets.models import context_length
from echo_vllm.assets.prompts import chat_messages, load_prompts
from echo_vllm.bench.plan import BenchPlan
from echo_vllm.device import tool_dtype

KV_CACHE_BYTES = 1 << 30
WARM_UP_TOKENS = 32
SPEC_COUNTERS = ("vllm:spec_decode_num_drafts", "vllm:spec_decode_num_draft_tokens",
                 "vllm:spec_decode_num_accepted_tokens")
ECHO_COUNTERS = ("budget_sum", "num_budgeted_steps", "num_drafted_steps", "num_undrafted_steps",
                 "num_exploration_steps", "num_gate_checks", "num_gate_stops", "num_verified_trees",
                 "num_branching_trees")


@dataclass(frozen=True)
class Workload:
    table: str  # "latency" or "throughput"
    key: str  # the dataset (latency) or the batch size (throughput)
    batch_size: int
    chats: list[list[dict]]
    input_tokens: list[int]  # each chat's prompt length in tokens


def workloads(plan: BenchPlan) -> list[Workload]:
    """Every workload of the plan, prompts tokenized once (no engine needed)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(plan.target)

    def length(chat):
        text = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    out = []
    if "latency" in plan.tables:
        for dataset in plan.datasets:
            chats = [chat_messages(p) for p in load_prompts(dataset, limit=plan.latency_prompts)]
            out.append(Workload("latency", dataset, 1, chats, [length(c) for c in chats]))
    if "throughput" in plan.tables:
        # MT-Bench prompts nearest the requested input length, cycled to fill a batch
        chats = [chat_messages(p) for p in load_prompts("mt_bench")]
        by_distance = sorted(zip(chats, map(length, chats)), key=lambda c: abs(c[1] - plan.input_tokens))
        for batch_size in plan.batch_sizes:
            count = plan.latency_prompts if batch_size == 1 else batch_size
            chosen = [by_distance[i % len(by_distance)] for i in range(count)]
            out.append(Workload("throughput", str(batch_size), batch_size, [c for c, _ in chosen],
                                [n for _, n in chosen]))
    return out


def engine_options(plan: BenchPlan, loads: list[Workload]) -> dict:
    """Engine settings shared by the plain and the speculative engines. No prefix caching:
    runs repeat their prompts, and a hit would depend on which engine's cache (a speculative
    one also holds draft KV) still holds the previous run's blocks, not on decoding."""
    longest = max(max(w.input_tokens) for w in loads) + plan.max_tokens
    max_model_len = -(-(longest + 64) // 256) * 256  # room for the drafts' lookahead slots
    if context_length(plan.target, max_model_len) < max_model_len:
        raise ValueError(f"echo-vllm bench: prompts of up to {longest - plan.max_tokens} tokens plus "
                         f"--max-tokens {plan.max_tokens} do not fit the target's context "
                         f"({context_length(plan.target, max_model_len)} tokens)")
    return dict(dtype=tool_dtype(), enforce_eager=True, max_model_len=max_model_len, disable_log_stats=False,
                kv_cache_memory_bytes=KV_CACHE_BYTES, max_num_seqs=max(w.batch_size for w in loads),
                enable_prefix_caching=False)


def spec_counts(llm) -> dict[str, float]:
    metrics = {m.name: m.value for m in llm.get_metrics() if hasattr(m, "value")}
    return {name: metrics.get(name, 0.0) for name in SPEC_COUNTERS}


def echo_counts(llm) -> dict:
    (stats,) = llm.collective_rpc("echo_stats")[:1]  # every rank decides the same
    return stats


def run(llm, workload: Workload, sampling) -> float:
    """One run of the workload; its output tokens per second."""
    start = time.perf_counter()
    if workload.batch_size == 1:
        outputs = [o for chat in workload.chats for o in llm.chat([chat], sampling, use_tqdm=False)]
    else:
        outputs = llm.chat(workload.chats, sampling, use_tqdm=False)
    return sum(len(o.outputs[0].token_ids) for o in outputs) / (time.perf_counter() - start)


def acceptance(before: dict[str, float], after: dict[str, float]) -> dict:
    drafts, draft_tokens, accepted = (after[n] - before[n] for n in SPEC_COUNTERS)
    return {
        "mat": 1.0 + accepted / drafts if drafts else None,
        "utilization": accepted / draft_tokens if draft_tokens else None,
        "verified_drafts_per_step": draft_tokens / drafts if drafts else None,  # per request
        "drafted_request_steps": drafts,  # a request's step with drafts counts once
    }


def echo_decisions(before: dict, after: dict) -> dict:
    """What echo chose during the runs: its gate, its mean budget, the share of steps drafted."""
    delta = {name: after[name] - before[name] for name in ECHO_COUNTERS}
    steps = delta["num_drafted_steps"] + delta["num_undrafted_steps"]
    return {
        "policy": after["policy"], "gate_statistic": after["gate_statistic"],
        "judge_depth": after["judge_depth"], "threshold": after["threshold"],
        "remaining_num_draft_tokens": after["remaining_num_draft_tokens"],
        "calibrating": after["calibrating"], "budget": after["budget"],
        "mean_budget": delta["budget_sum"] / delta["num_budgeted_steps"] if delta["num_budgeted_steps"] else None,
        "drafted_share": delta["num_drafted_steps"] / steps if steps else None,
        # of all steps, those drafted only to keep echo's estimates current (exploration)
        "explored_share": delta["num_exploration_steps"] / steps if steps else None,
        "gate_pass_rate": 1 - delta["num_gate_stops"] / delta["num_gate_checks"] if delta["num_gate_checks"] else None,
        "branching_share": branching_share(delta),
        "acceptance_curve": after["acceptance_curve"], "cost_model": after["cost_model"],
    }


def branching_share(delta: dict) -> float | None:
    """Of the draft trees verified (counter differences), the share that branched."""
    trees = delta["num_verified_trees"]
    return delta["num_branching_trees"] / trees if trees else None


def warm_up_sampling(sampling):
    """The measured runs' sampling parameters, with at most WARM_UP_TOKENS output tokens."""
    warm_up = sampling.clone()
    warm_up.max_tokens = min(WARM_UP_TOKENS, sampling.max_tokens)
    return warm_up


def paired_ratio(rates: list[float], plain_rates: list[float]) -> float:
    """A method's speed over no speculation: the median over runs of each run's tokens/s over
    the plain run taken just before it. Neighbouring runs share the machine's state; on a
    shared machine the plain runs of one workload spread by 15-30 %, and a ratio of the two
    medians can pair a slow stretch of one with a fast stretch of the other.

    Worked example: runs [16.8, 16.5, 16.1, 19.9, 19.9] beside plain [14.2, 14.9, 17.2, 17.3,
    17.4] -> ratios 1.18, 1.11, 0.94, 1.15, 1.14 -> 1.14 (the ratio of medians: 0.98)."""
    return statistics.median(rate / plain for rate, plain in zip(rates, plain_rates, strict=True))


def measure(plain, llm, workload: Workload, sampling, repetitions: int, is_echo: bool, bar) -> dict:
    """Warm-up, then plain and method runs in turns; medians, ranges and acceptance."""
    run(plain, workload, warm_up_sampling(sampling))
    run(llm, workload, warm_up_sampling(sampling))
    counts_before = spec_counts(llm)
    echo_before = echo_counts(llm) if is_echo else None
    rates, plain_rates = [], []
    for _ in range(repetitions):
        plain_rates.append(run(plain, workload, sampling))
        rates.append(run(llm, workload, sampling))
        bar.update(1)
    result = {
        "tokens_per_s": statistics.median(rates), "runs": rates,
        "plain_tokens_per_s": statistics.median(plain_rates), "plain_runs": plain_rates,
        "x_plain": paired_ratio(rates, plain_rates),
        **acceptance(counts_before, spec_counts(llm)),
    }
    if is_echo:
        result["echo"] = echo_decisions(echo_before, echo_counts(llm))
    return result


def run_offline(plan: BenchPlan, save, previous: dict | None = None) -> dict:
    """Every method against plain on every workload; `save(results)` after each workload, so
    an interrupted run keeps what it measured, and `previous` (its results) resumes it: what
    it holds is not measured again."""
    from vllm import LLM, SamplingParams

    loads = workloads(plan)
    engine = engine_options(plan, loads)
    configs = plan.method_configs()
    sampling = SamplingParams(temperature=0.0, max_tokens=plan.max_tokens, ignore_eos=True)
    results: dict = previous or {"latency": {}, "throughput": {}, "input_tokens": {}}
    for w in loads:
        results["input_tokens"][f"{w.table} {w.key}"] = statistics.mean(w.input_tokens)
    todo = {name: [w for w in loads if name not in results[w.table].get(w.key, {})] for name in configs}
    plain = LLM(model=plan.target, **engine)
    with tqdm(total=sum(map(len, todo.values())) * plan.repetitions, desc="bench", unit="run") as bar:
        for name, config in configs.items():
            if not todo[name]:
                continue
            bar.set_postfix_str(name)
            llm = LLM(model=plan.target, **engine, speculative_config=config)
            for w in todo[name]:
                results[w.table].setdefault(w.key, {})[name] = measure(
                    plain, llm, w, sampling, plan.repetitions, config["method"] == "echo", bar)
                save(results)
            llm.llm_engine.engine_core.shutdown()
            del llm
    plain.llm_engine.engine_core.shutdown()
    return results
