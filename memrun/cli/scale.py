"""`memrun scale NAME N`: run N workers of a service (within its min and max)."""

from __future__ import annotations

import argparse
from typing import Any

from memrun._client import Client


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "scale",
        help="set how many workers a service runs",
        description=(
            "Set the service's desired worker count; the control plane starts or drains "
            "workers to match (`memrun workers NAME` shows them). N must be within the "
            "service's min_workers and max_workers. A service that is autoscaled "
            "(`memrun autoscale NAME`) refuses: change its range, or turn it --off first."
        ),
    )
    parser.add_argument("name", help="the service")
    parser.add_argument("workers", type=int, metavar="N", help="desired workers")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    service = Client().scale(args.name, args.workers)
    config = service["config"]
    print(
        f"{service['name']}: {service['desired_workers']} worker(s) desired "
        f"(min {config['min_workers']}, max {config['max_workers']})"
    )
    return 0
