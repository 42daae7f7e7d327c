"""`memrun gc [--dry-run]`: free what the control plane stores and no longer needs."""

from __future__ import annotations

import argparse
from typing import Any

from memrun._client import Client
from memrun.cli.deploy import human_bytes


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "gc",
        help="free old packages, stopped workers' folders and half-built venvs",
        description=(
            "Free what memrun stores and no longer needs: packages of deleted services and "
            "of versions beyond the retention count (MEMRUN_GC_KEEP_VERSIONS; never the "
            "live or rolling version, nor one a worker runs), stopped local workers' "
            "folders and logs, and half-built venvs. Prints the count and bytes per kind."
        ),
    )
    parser.add_argument("--dry-run", action="store_true", help="only print what would be freed")
    parser.add_argument("-v", "--verbose", action="store_true", help="list every item too")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    result = Client().gc(dry_run=args.dry_run)
    verb = "would free" if result["dry_run"] else "freed"
    for kind in result["kinds"]:
        size = kind["size_bytes"]
        print(f"{kind['kind']:<15} {kind['count']:>6}  {human_bytes(size)} ({size} bytes)")
    if args.verbose:
        for item in result["items"]:
            print(f"  {item['kind']}: {item['location']} ({human_bytes(item['size_bytes'])})")
    print(f"{verb} {human_bytes(result['size_bytes'])} ({result['size_bytes']} bytes)")
    return 0
