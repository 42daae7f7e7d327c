"""`memrun invoke NAME 'JSON'`: run one payload through a service and print its result;
`memrun invoke NAME --batch FILE.jsonl`: run one payload per line, print one outcome per line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
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
    parser.add_argument("payload", nargs="?", help="the request as JSON, e.g. '{\"user_id\": 42}'")
    parser.add_argument(
        "--batch",
        metavar="FILE",
        help="a JSON Lines file (- for stdin): one payload per line, sent through "
        "invoke-batch; prints one outcome per line, in order",
    )
    parser.add_argument(
        "--queue",
        action="store_true",
        help="queue even when the service cannot serve now (never deployed, no ready worker)",
    )
    parser.add_argument(
        "--wait", type=float, default=30.0, metavar="S", help="seconds to wait (default 30)"
    )
    parser.add_argument("--async", dest="is_async", action="store_true", help="do not wait")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if (args.payload is None) == (args.batch is None):
        raise ConfigError("give either a JSON payload or --batch FILE.jsonl")
    client = Client()
    if args.batch is not None:
        return run_batch(client, args)
    try:
        payload = json.loads(args.payload)
    except ValueError as exc:
        raise ConfigError(f"the payload is not valid JSON: {exc}") from None
    if args.is_async:
        print(client.submit(args.name, payload, queue=args.queue))
        return 0
    try:
        result = client.invoke(args.name, payload, wait=args.wait, queue=args.queue)
    except RequestTimeout as exc:
        print(exc.details["request_id"])
        print(f"memrun: {exc.message}", file=sys.stderr)
        return EXIT_TIMEOUT
    print(json.dumps(result, indent=2))
    return 0


def run_batch(client: Client, args: argparse.Namespace) -> int:
    """One outcome per input line, in order: {"request_id", "status", "ok", "result" or
    "error"}; exit 3 when any is still queued after --wait, 1 when any failed."""
    payloads = read_jsonl(args.batch)
    outcomes = client.map_requests(
        args.name, payloads, wait=0 if args.is_async else args.wait, queue=args.queue
    )
    for outcome in outcomes:
        line: dict[str, Any] = {"request_id": outcome.request_id, "status": outcome.status}
        if outcome.done:
            line |= {"ok": outcome.ok, "result": outcome.result, "error": outcome.error}
        print(json.dumps(line))
    if not all(outcome.done for outcome in outcomes):
        return 0 if args.is_async else EXIT_TIMEOUT
    return 0 if all(outcome.ok for outcome in outcomes) else 1


def read_jsonl(path: str) -> list[Any]:
    """The payloads of a JSON Lines file (blank lines skipped); `-` reads stdin."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    payloads = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            payloads.append(json.loads(line))
        except ValueError as exc:
            raise ConfigError(f"{path}, line {number}: not valid JSON: {exc}") from None
    if not payloads:
        raise ConfigError(f"{path} holds no payloads")
    return payloads
