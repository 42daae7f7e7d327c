"""`memrun invoke NAME 'JSON'`: run one payload through a service and print its result."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from memrun._client import Client
from memrun.errors import ConfigError, RequestTimeout

EXIT_TIMEOUT = 3


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "invoke",
        help="send a JSON payload to a service and print the result",
        description=(
            "Print the handler's result as JSON. With --async, or when no answer comes "
            f"within --wait seconds (exit {EXIT_TIMEOUT}), print the request id instead: "
            "the request stays queued and its outcome can be fetched later."
        ),
    )
    parser.add_argument("name", help="the service")
    parser.add_argument("payload", help="the request as JSON, e.g. '{\"user_id\": 42}'")
    parser.add_argument(
        "--wait", type=float, default=30.0, metavar="S", help="seconds to wait (default 30)"
    )
    parser.add_argument("--async", dest="is_async", action="store_true", help="do not wait")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        payload = json.loads(args.payload)
    except ValueError as exc:
        raise ConfigError(f"the payload is not valid JSON: {exc}") from None
    client = Client()
    if args.is_async:
        print(client.submit(args.name, payload))
        return 0
    try:
        result = client.invoke(args.name, payload, wait=args.wait)
    except RequestTimeout as exc:
        print(exc.details["request_id"])
        print(f"memrun: {exc.message}", file=sys.stderr)
        return EXIT_TIMEOUT
    print(json.dumps(result, indent=2))
    return 0
