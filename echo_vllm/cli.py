"""The `echo-vllm` command."""

from __future__ import annotations

import argparse
import sys


def _prepare_model(args: argparse.Namespace) -> None:
    from echo_vllm.assets.models import is_prepared, prepare_model

    already = is_prepared(args.name)
    path = prepare_model(args.name)
    print(f"{args.name}: {'already prepared' if already else 'prepared'} at {path}")


def build_parser() -> argparse.ArgumentParser:
    from echo_vllm.assets.models import MODELS

    parser = argparse.ArgumentParser(prog="echo-vllm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser(
        "prepare-model",
        help="convert a packaged target model into the cache dir ($ECHO_VLLM_CACHE, "
        "default ~/.cache/echo-vllm); a no-op when already done",
    )
    prepare.add_argument("name", choices=sorted(MODELS))
    prepare.set_defaults(run=_prepare_model)
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
