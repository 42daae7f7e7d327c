"""`memrun token create --name NAME`: a new API token for the appliance on this machine.

Runs through Django against the local database (like `memrun up`), so it works whether
or not the web server is running; the secret is printed once, as the last word.
"""

from __future__ import annotations

import argparse
from typing import Any

from memrun.cli.up import command_error, manage
from memrun.errors import MemrunError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("token", help="manage API tokens of this appliance")
    actions = parser.add_subparsers(dest="token_action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="create a token and print its secret once")
    create.add_argument("--name", required=True, help="what the token is for, e.g. ci")
    create.add_argument("--user", default="admin", help="its owner (default: admin)")
    create.set_defaults(handler=create_token)


def create_token(args: argparse.Namespace) -> int:
    result = manage("memrun_token", "--name", args.name, "--user", args.user, capture=True)
    if result.returncode != 0:
        raise MemrunError(command_error(result.stderr))
    print(result.stdout.strip())
    return 0
