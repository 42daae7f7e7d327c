"""`memrun rotate-credentials NAME`: a new Kafka password for a service, and its workers
rolled onto it."""

from __future__ import annotations

import argparse
from typing import Any

from memrun._client import Client
from memrun.cli.deploy import follow_rollout


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "rotate-credentials",
        help="give a service's Kafka principal a new password",
        description=(
            "Give NAME's Kafka principal a new password and replace its workers with ones "
            "that log in with it (a new version of the live package), following the rollout."
        ),
    )
    parser.add_argument("name", help="the service")
    parser.add_argument("--no-wait", action="store_true", help="return once recorded")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    client = Client()
    rotated = client.rotate_credentials(args.name)
    version = rotated.get("version")
    print(f"{args.name}: Kafka credentials rotated (generation {rotated['generation']})")
    if version is None:
        print("no deployment yet: its first workers get the new password")
        return 0
    if args.no_wait:
        print(f"version {version} rolls the workers; follow it with `memrun status {args.name}`")
        return 0
    return follow_rollout(client, args.name, int(version))
