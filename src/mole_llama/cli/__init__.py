"""The `mole-llama` command: one subcommand per step, each printing where its result is.

Each module of this package holds a group of commands, their handlers beside their parsers (`add_commands`).
"""

import argparse
import sys

from safetensors import SafetensorError

from . import data, evaluation, models, speaking, training


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mole-llama", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for group in (training, data, evaluation, models, speaking):
        group.add_commands(commands)
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, RuntimeError, OSError, SafetensorError) as error:
        print(f"mole-llama {args.command}: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None


__all__ = ["build_parser", "main"]
