"""The `memrun` command: one subcommand per module in this package, each thin over a library.

A subcommand module exposes `register(subparsers)`, which adds its parser and sets
`handler=fn(args) -> int`. Modules import their heavy dependencies inside the handler so
`memrun --help` stays fast. Other installed packages add subcommands through the
`memrun.commands` entry point group, each entry a `register` function: the worker daemon
adds `memrun worker` that way (worker_daemon/cli.py), so the SDK never imports it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from memrun.errors import MemrunError

ENTRY_POINT_GROUP = "memrun.commands"
SUBCOMMANDS = [
    "memrun.cli.up",
    "memrun.cli.token",
    "memrun.cli.secret",
    "memrun.cli.deploy",
    "memrun.cli.invoke",
    "memrun.cli.status",
    "memrun.cli.rollback",
    "memrun.cli.rotate",
    "memrun.cli.scale",
    "memrun.cli.autoscale",
    "memrun.cli.workers",
    "memrun.cli.warmth",
    "memrun.cli.logs",
    "memrun.cli.dlq",
    "memrun.cli.gc",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memrun", description="Serverless warm memory: deploy, run and call services."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in SUBCOMMANDS:
        importlib.import_module(module_name).register(subparsers)
    for entry_point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        entry_point.load()(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        return 130
    except MemrunError as exc:
        if args.debug:
            raise
        print(f"memrun: error: {exc.message}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
