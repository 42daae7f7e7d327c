"""`memrun rollback NAME [--to VERSION]`: deploy an earlier version again, as a new one."""

from __future__ import annotations

import argparse
from typing import Any

from memrun._client import Client
from memrun.cli.deploy import follow_rollout


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "rollback",
        help="deploy an earlier version's package again",
        description=(
            "Make a new version of NAME from an earlier version's package and settings, "
            "by default the one that was active before the current one, and follow its "
            "rollout."
        ),
    )
    parser.add_argument("name", help="the service")
    parser.add_argument("--to", type=int, metavar="VERSION", help="the version to go back to")
    parser.add_argument("--message", "-m", default="", help="why, for the history")
    parser.add_argument("--no-wait", action="store_true", help="return once recorded")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    client = Client()
    deployment = client.rollback(args.name, version=args.to, message=args.message)
    print(
        f"{args.name} version {deployment.version}: {deployment.message} "
        f"(sha256 {deployment.sha256[:12]})"
    )
    if args.no_wait:
        print(f"rolling out in the background; follow it with `memrun status {args.name}`")
        return 0
    return follow_rollout(client, args.name, deployment.version)
