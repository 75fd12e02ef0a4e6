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
                         batch_tokens=args.batch_tokens, seed=args.seed)
    summary = train_draft(target, args.out, args.prompts, args.max_new_tokens,
                          args.draft_vocab_size, config, args.work_dir)
    print(f"head written to {args.out}: validation top-1 by depth "
          f"{summary['history'][-1]['val_top1_by_depth']}, {summary['wall_time_s']} s, "
          f"peak RSS {summary['peak_rss_gib']} GiB")


def _calibrate(args: argparse.Namespace) -> None:
    from echo_vllm.calibrate import calibrate

    calibrate(_target_dir(args.target), args.draft, args.out, args.prompts, args.num_prompts,
              args.batch_size, args.max_tokens, args.steps, args.topk, args.num_draft_tokens,
              args.remaining_num_draft_tokens, args.records)


def _target_dir(target: str) -> str:
    from echo_vllm.assets.models import MODELS, model_dir

    return str(model_dir(target)) if target in MODELS else target


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    from echo_vllm.assets.models import MODELS
    from echo_vllm.assets.prompts import DATASETS
    from echo_vllm.training.train import TrainConfig

    parser = argparse.ArgumentParser(prog="echo-vllm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser(
        "prepare-model",
        help="convert a packaged target model into the cache dir ($ECHO_VLLM_CACHE, "
        "default ~/.cache/echo-vllm); a no-op when already done",
    )
    prepare.add_argument("name", choices=sorted(MODELS))
    prepare.set_defaults(run=_prepare_model)

    train = commands.add_parser(
        "train-draft",
        help="train an EAGLE-3 head on the target's own responses (resumes an interrupted run)",
    )
    train.add_argument("--target", required=True, help=f"a model directory or one of {sorted(MODELS)}")
    train.add_argument("--out", required=True, help="directory to write the head to")
    train.add_argument("--prompts", type=_positive, default=1500, help="training prompts (default 1500)")
    train.add_argument("--max-new-tokens", type=_positive, default=256)
    train.add_argument("--draft-vocab-size", type=_positive, default=4096)
    defaults = TrainConfig()
    train.add_argument("--epochs", type=_positive, default=defaults.epochs)
    train.add_argument("--ttt-steps", type=_positive, default=defaults.ttt_steps,
                       help="training-time-test unroll depth")
    train.add_argument("--lr", type=float, default=defaults.lr)
    train.add_argument("--batch-tokens", type=_positive, default=defaults.batch_tokens,
                       help="padded tokens per optimizer step")
    train.add_argument("--seed", type=int, default=defaults.seed)
    train.add_argument("--work-dir", help="where data and checkpoints go "
                       "(default $ECHO_VLLM_CACHE/training/<out name>)")
    train.set_defaults(run=_train_draft)

    calibrate = commands.add_parser(
        "calibrate",
        help="find the gate's judge depth and threshold (the Sweet Spot) for a target and draft; "
        "writes the file speculative_config's calibration_file loads",
    )
    calibrate.add_argument("--target", required=True, help=f"a model directory or one of {sorted(MODELS)}")
    calibrate.add_argument("--draft", required=True, help="the EAGLE-3 head directory")
    calibrate.add_argument("--out", required=True, help="calibration file to write (JSON)")
    calibrate.add_argument("--prompts", default="training", choices=["training", *DATASETS],
                           help="prompt source (default: the draft-training pool, no benchmark set)")
    calibrate.add_argument("--num-prompts", type=_positive, default=128)
    calibrate.add_argument("--batch-size", type=_positive, default=16, help="the serving batch size to calibrate for")
    calibrate.add_argument("--max-tokens", type=_positive, default=128)
    calibrate.add_argument("--steps", type=_positive, default=5)
    calibrate.add_argument("--topk", type=_positive, default=8)
    calibrate.add_argument("--num-draft-tokens", type=_positive, default=32)
    calibrate.add_argument("--remaining-num-draft-tokens", type=_positive,
                           help="verified nodes a gated request keeps (default: judge depth + 1)")
    calibrate.add_argument("--records", help="also save the raw records here (torch.save), for offline studies")
    calibrate.set_defaults(run=_calibrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
