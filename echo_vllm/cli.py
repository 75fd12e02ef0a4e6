"""The `echo-vllm` command."""

from __future__ import annotations

import argparse
import sys


def _prepare_model(args: argparse.Namespace) -> None:
    from echo_vllm.assets.models import is_prepared, prepare_model

    already = is_prepared(args.name)
    path = prepare_model(args.name)
    print(f"{args.name}: {'already prepared' if already else 'prepared'} at {path}")


def _train_draft(args: argparse.Namespace) -> None:
    from echo_vllm.training.pipeline import train_draft
    from echo_vllm.training.train import TrainConfig

    target = _target_dir(args.target)
    config = TrainConfig(epochs=args.epochs, ttt_steps=args.ttt_steps, lr=args.lr,
                         batch_tokens=args.batch_tokens, seed=args.seed, loss=args.loss, precision=args.precision)
    summary = train_draft(target, args.out, args.prompts, args.max_new_tokens,
                          args.draft_vocab_size, config, args.work_dir, args.answered, args.capture_precision)
    print(f"head written to {args.out}: validation top-1 by depth "
          f"{summary['history'][-1]['val_top1_by_depth']}, {summary['wall_time_s']} s, "
          f"peak RSS {summary['peak_rss_gib']} GiB")


def _calibrate(args: argparse.Namespace) -> None:
    from echo_vllm.calibrate import calibrate

    calibrate(_target_dir(args.target), args.draft, args.out, args.prompts, args.num_prompts,
              args.batch_size, args.max_tokens, args.steps, args.topk, args.num_draft_tokens,
              args.remaining_num_draft_tokens, args.records, args.run_batch_size)


def _bench(args: argparse.Namespace) -> None:
    import os
    import platform
    import shlex
    import time

    from echo_vllm.bench.offline import run_offline
    from echo_vllm.bench.online import parse_servers, run_online
    from echo_vllm.bench.plan import build_plan
    from echo_vllm.bench.report import write_outputs
    from echo_vllm.cost_cache import cpu_isa, cpu_name

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.render:
        from echo_vllm.bench.report import render

        for path in render(args.render):
            print(f"wrote {path}")
        return
    if args.simulate:
        _bench_projection(args)
        return
    servers = parse_servers(args.serve) if args.serve else None
    if servers is None and args.head is None:
        raise ValueError("echo-vllm bench: --head is required (or --serve NAME=URL to measure running servers)")
    plan = build_plan(_target_dir(args.target), args.head, args.calibration, args.methods, args.eagle3_k,
                      args.tables, args.datasets, args.latency_prompts, args.batch_sizes, args.input_tokens,
                      args.max_tokens, args.repetitions, args.ddd_threshold, args.opt_tree_gain, args.out,
                      args.dynamic_sd_table)
    import vllm

    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "plan": dict(vars(args)),  # target as given: no local paths
            "command": "echo-vllm " + shlex.join(args.argv), "vllm": vllm.__version__,
            # the CPU model and its vector extensions too: a pass's cost, and so what
            # speculation buys, changes with them
            "machine": f"{platform.machine()} {cpu_name()} ({cpu_isa()}), {os.cpu_count()} CPUs, "
                       f"{platform.platform()}"}
    for key in ("run", "argv"):
        meta["plan"].pop(key)
    previous = _previous_results(args, meta)

    def save(partial):
        write_outputs(partial, meta, plan.out, with_plots=False)
    results = run_online(plan, servers, save) if servers else run_offline(plan, save, previous)
    for path in write_outputs(results, meta, plan.out):
        print(f"wrote {path}")


# What must match for a resumed bench run to add to the results it finds in --out.
RESUME_KEYS = ("target", "head", "calibration", "serve", "input_tokens", "max_tokens", "repetitions",
               "latency_prompts", "ddd_threshold", "opt_tree_gain", "dynamic_sd_table")


def _previous_results(args: argparse.Namespace, meta: dict) -> dict | None:
    """The results already in --out when resuming; refuses to overwrite them otherwise."""
    import json
    from pathlib import Path

    path = Path(args.out) / "results.json"
    if not path.is_file():
        return None
    if not args.resume:
        raise ValueError(f"echo-vllm bench: --out {args.out!r} already holds results.json; pass --resume "
                         "to add to it, or choose another --out")
    saved = json.loads(path.read_text())
    if args.serve:
        raise ValueError("echo-vllm bench: --resume is for offline runs (servers may have changed)")
    differing = [k for k in RESUME_KEYS if saved["meta"]["plan"].get(k) != meta["plan"].get(k)]
    if differing:
        raise ValueError(f"echo-vllm bench: --resume: {path} was measured with other {differing}")
    # every invocation that measured into these results, oldest first
    meta["invocations"] = saved["meta"].get("invocations", [{"date": saved["meta"]["date"],
                                                             "command": saved["meta"]["command"]}])
    meta["invocations"].append({"date": meta["date"], "command": meta["command"]})
    return saved["results"]


def _bench_projection(args: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    from echo_vllm.bench.plan import positive_ints
    from echo_vllm.bench.simulate import load_profile, project, write_projection

    if not args.profile:
        raise ValueError("echo-vllm bench: --simulate needs --profile")
    profile = load_profile(args.profile)
    batch_sizes = positive_ints(args.batch_sizes, "--batch-sizes")
    if not Path(args.simulate).is_file():
        raise ValueError(f"echo-vllm bench: --simulate {args.simulate!r}: no such results.json")
    measured = json.loads(Path(args.simulate).read_text())["results"]
    projection = project(measured, profile, list(batch_sizes))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "projection.json").write_text(json.dumps({"profile": profile.__dict__, "source": args.simulate,
                                                     "projection": projection}, indent=1))
    write_projection(projection, profile, args.simulate, out)
    print((out / "projection.md").read_text())
    print(f"wrote {out / 'projection.png'}")


def _soak(args: argparse.Namespace) -> None:
    import json
    import os

    from echo_vllm.config import parse_echo_config
    from echo_vllm.soak import soak, summary

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        config = json.loads(args.speculative_config)
    except json.JSONDecodeError as e:
        raise ValueError(f"echo-vllm soak: --speculative-config is not JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError("echo-vllm soak: --speculative-config must be a JSON object")
    if config.get("method") == "echo":  # a bad echo config is refused here, before any server starts
        parse_echo_config(config)
    # vLLM's own methods (e.g. eagle3) run the same soak for comparison; vLLM checks their config
    if args.requests < 10:
        raise ValueError(f"echo-vllm soak: --requests must be at least 10 (memory is sampled as each tenth "
                         f"completes), got {args.requests}")
    if not 0.0 <= args.cancel_share <= 1.0:
        raise ValueError(f"echo-vllm soak: --cancel-share must be in [0, 1], got {args.cancel_share}")
    report = soak(_target_dir(args.target), config, args.out, args.requests, args.clients, args.cancel_share,
                  args.max_model_len, args.kv_cache_mib << 20, args.seed)
    print(summary(report))
    print(f"wrote {args.out}/soak.json")
    if report["problems"]:
        raise RuntimeError(f"echo-vllm soak: {len(report['problems'])} check(s) failed")


def _target_dir(target: str) -> str:
    from echo_vllm.assets.models import MODELS, model_dir

    return str(model_dir(target)) if target in MODELS else target


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return number


def _non_negative(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return number


class _HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default after its help, where it has one."""

    def _get_help_string(self, action):
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="echo-vllm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (_add_prepare_model, _add_train_draft, _add_calibrate, _add_bench, _add_soak):
        add(commands)
    return parser


def _add_prepare_model(commands) -> None:
    """The prepare-model command and its options."""
    from echo_vllm.assets.models import MODELS

    prepare = commands.add_parser(
        "prepare-model",
        help="convert a packaged target model into the cache dir ($ECHO_VLLM_CACHE, "
        "default ~/.cache/echo-vllm); a no-op when already done",
    )
    prepare.add_argument("name", choices=sorted(MODELS))
    prepare.set_defaults(run=_prepare_model)


def _add_train_draft(commands) -> None:
    """The train-draft command and its options."""
    from echo_vllm.assets.models import MODELS
    from echo_vllm.training.train import LOSSES, PRECISIONS, TrainConfig

    train = commands.add_parser(
        "train-draft", formatter_class=_HelpWithDefaults,
        help="train an EAGLE-3 head on the target's own responses (resumes an interrupted run)",
    )
    train.add_argument("--target", required=True, help=f"a model directory or one of {sorted(MODELS)}")
    train.add_argument("--out", required=True, help="directory to write the head to")
    train.add_argument("--prompts", type=_positive, default=2400, help="training prompts (the target answers each)")
    train.add_argument("--max-new-tokens", type=_positive, default=256, help="tokens the target writes per prompt")
    train.add_argument("--draft-vocab-size", type=_positive, default=4096,
                       help="the head's reduced vocabulary (d2t/t2d), the most frequent response tokens")
    defaults = TrainConfig()
    train.add_argument("--epochs", type=_positive, default=defaults.epochs, help="passes over the training data")
    train.add_argument("--ttt-steps", type=_positive, default=defaults.ttt_steps,
                       help="training-time-test unroll depth")
    train.add_argument("--lr", type=float, default=defaults.lr, help="AdamW peak learning rate (warm-up, cosine)")
    train.add_argument("--batch-tokens", type=_positive, default=defaults.batch_tokens,
                       help="padded tokens per optimizer step")
    train.add_argument("--answered", type=_non_negative, default=0,
                       help="ShareGPT conversations added with the dataset's own answers (no generation; the "
                       "target's distribution is still learned at each of their positions)")
    train.add_argument("--loss", choices=LOSSES, default=defaults.loss,
                       help="kl: the target's top-k next-token distribution; hard: its most likely token")
    train.add_argument("--precision", choices=PRECISIONS, default=defaults.precision,
                       help="the head's matrix products (bf16 autocast keeps float32 weights)")
    train.add_argument("--capture-precision", choices=PRECISIONS, default="bf16",
                       help="the target's dtype while its hidden states are captured")
    train.add_argument("--seed", type=int, default=defaults.seed, help="prompts, data split and initialization")
    train.add_argument("--work-dir", help="where data and checkpoints go "
                       "(default $ECHO_VLLM_CACHE/training/<out name>)")
    train.set_defaults(run=_train_draft)


def _add_calibrate(commands) -> None:
    """The calibrate command and its options."""
    from echo_vllm.assets.models import MODELS
    from echo_vllm.assets.prompts import DATASETS

    calibrate = commands.add_parser(
        "calibrate", formatter_class=_HelpWithDefaults,
        help="find the gate's judge depth and threshold (the Sweet Spot) for a target and draft; "
        "writes the file speculative_config's calibration_file loads",
    )
    calibrate.add_argument("--target", required=True, help=f"a model directory or one of {sorted(MODELS)}")
    calibrate.add_argument("--draft", required=True, help="the EAGLE-3 head directory")
    calibrate.add_argument("--out", required=True, help="calibration file to write (JSON)")
    calibrate.add_argument("--prompts", default="training", choices=["training", *DATASETS],
                           help="prompt source ('training': the draft-training pool, no benchmark set)")
    calibrate.add_argument("--num-prompts", type=_positive, default=128, help="prompts whose steps are recorded")
    calibrate.add_argument("--batch-size", type=_positive, default=16,
                           help="the serving batch size to choose the gate for (its costs per request-step)")
    calibrate.add_argument("--run-batch-size", type=_positive,
                           help="prompts run at once (default: --batch-size); the records do not depend on it, "
                           "only how long the run takes")
    calibrate.add_argument("--max-tokens", type=_positive, default=128, help="output tokens per prompt")
    calibrate.add_argument("--steps", type=_positive, default=5, help="the tree calibrated: draft depth")
    calibrate.add_argument("--topk", type=_positive, default=8, help="the tree calibrated: children per node")
    calibrate.add_argument("--num-draft-tokens", type=_positive, default=32,
                           help="the tree calibrated: verified nodes per request, root included")
    calibrate.add_argument("--remaining-num-draft-tokens", type=_positive,
                           help="verified nodes a gated request keeps (default: judge depth + 1)")
    calibrate.add_argument("--records", help="also save the raw records here (torch.save), for offline studies")
    calibrate.set_defaults(run=_calibrate)


def _add_bench(commands) -> None:
    """The bench command and its options."""
    from echo_vllm.assets.models import MODELS
    from echo_vllm.assets.prompts import DATASETS

    import json

    from echo_vllm.bench.plan import DYNAMIC_SD_TABLE, METHODS, TABLES

    bench = commands.add_parser(
        "bench", formatter_class=_HelpWithDefaults,
        help="latency (bs 1, per dataset) and throughput (by batch size) of each method against no "
        "speculation, interleaved runs; writes report.md, results.json and PNG plots",
    )
    bench.add_argument("--simulate", metavar="RESULTS_JSON",
                       help="no run: project the acceptance of an earlier run's results.json onto --profile "
                       "(a GPU roofline), at --batch-sizes; writes projection.md/json, labelled a projection")
    bench.add_argument("--render", metavar="RESULTS_JSON",
                       help="no run: re-draw report.md and the plots of an earlier run's results.json (or "
                       "projection.md/png of a projection.json) beside it, from the numbers it holds")
    bench.add_argument("--profile", help="with --simulate: llama-8b-1xh100, llama-70b-4xh100, "
                       "qwen3-235b-a22b-8xh100, or a JSON file of echo_vllm.bench.simulate.Profile fields")
    bench.add_argument("--target", default="smollm2-135m", help=f"a model directory or one of {sorted(MODELS)}")
    bench.add_argument("--head", help="the EAGLE-3 head directory (offline runs)")
    bench.add_argument("--serve", action="append", metavar="NAME=URL",
                       help="measure running `vllm serve` servers instead, each started with its own method, "
                       "through `vllm bench serve` (its JSON kept in OUT/vllm-bench/); repeat per server, one "
                       "named 'plain' (no speculation); the throughput table's batch sizes are then concurrencies")
    bench.add_argument("--calibration", help="echo's calibration file (default: echo calibrates online)")
    bench.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {list(METHODS)}")
    bench.add_argument("--eagle3-k", default="1,2,3", help="vLLM eagle3 chain lengths (each reported)")
    bench.add_argument("--tables", default=",".join(TABLES), help=f"comma-separated, from {list(TABLES)}")
    bench.add_argument("--datasets", default=",".join(DATASETS), help="latency table prompt sets")
    bench.add_argument("--latency-prompts", type=int, default=4, help="prompts per set at bs 1")
    bench.add_argument("--batch-sizes", default="1,4,8,16,32,64", help="throughput table batch sizes")
    bench.add_argument("--input-tokens", type=int, default=100, help="throughput prompts nearest this length")
    bench.add_argument("--max-tokens", type=int, default=128, help="output tokens per request")
    bench.add_argument("--repetitions", type=int, default=3,
                       help="measured turns per method (after a warm-up), alternating with no speculation")
    bench.add_argument("--dynamic-sd-table", default=json.dumps(DYNAMIC_SD_TABLE),
                       help="method dynamic_sd: vLLM's num_speculative_tokens_per_batch_size, JSON [[first bs, "
                       "last bs, eagle3 K], ...] (K 0: no speculation in that range)")
    bench.add_argument("--ddd-threshold", type=float, default=0.5, help="policy ddd's frontier-probability threshold")
    bench.add_argument("--opt-tree-gain", type=float, default=0.1,
                       help="policy opt_tree's threshold: least expected accepted tokens one more depth must add")
    bench.add_argument("--out", default="bench-out/bench", help="output directory")
    bench.add_argument("--resume", action="store_true",
                       help="add to the results.json already in --out (same plan): only what it lacks is measured")
    bench.set_defaults(run=_bench)


def _add_soak(commands) -> None:
    """The soak command and its options."""
    from echo_vllm.assets.models import MODELS

    soak = commands.add_parser(
        "soak", formatter_class=_HelpWithDefaults,
        help="many concurrent clients (mixed sampling, n, stop strings, cancellations, prompts up to the "
        "context limit) against `vllm serve` with echo and a KV cache that forces preemption; checks "
        "nothing is lost, greedy answers equal no speculation's, no crash, no memory growth",
    )
    soak.add_argument("--target", default="smollm2-135m", help=f"a model directory or one of {sorted(MODELS)}")
    soak.add_argument("--speculative-config", required=True,
                      help='the JSON given to vllm serve, e.g. \'{"method": "echo", "model": "HEAD"}\' '
                      '(one of vLLM\'s own methods, e.g. eagle3, runs the same soak for comparison)')
    soak.add_argument("--requests", type=_positive, default=500, help="requests sent in all (at least 10)")
    soak.add_argument("--clients", type=_positive, default=32, help="concurrent clients")
    soak.add_argument("--cancel-share", type=float, default=0.2, help="requests closed mid-stream")
    soak.add_argument("--max-model-len", type=_positive, default=1024,
                      help="both servers' context length (the longest prompts fill it)")
    soak.add_argument("--kv-cache-mib", type=_positive, default=96,
                      help="the echo server's KV cache (small, to force preemption)")
    soak.add_argument("--seed", type=int, default=0, help="draws the requests")
    soak.add_argument("--out", default="bench-out/soak", help="directory for soak.json and the server logs")
    soak.set_defaults(run=_soak)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
