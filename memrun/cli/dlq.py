"""`memrun dlq NAME [--show ID] [--replay ID ...] [--wait S] [-n N]`: a service's dead
letters (failed and timed-out requests), newest first; inspect one; replay some."""

from __future__ import annotations

import argparse
import json
from typing import Any

from memrun._client import Client
from memrun.cli.workers import print_table


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "dlq",
        help="list a service's dead letters (failed requests); inspect or replay them",
        description=(
            "Without options, the newest dead letters of NAME: id, when, key, attempt and "
            "error. --show ID prints one with its payload and traceback. --replay ID... "
            "runs them again (same key and payload, attempt + 1) as new requests, e.g. "
            "after deploying a fix; --wait waits for their outcomes."
        ),
    )
    parser.add_argument("name", help="the service")
    parser.add_argument("-n", "--limit", type=int, default=20, help="how many (default 20)")
    parser.add_argument("--show", metavar="ID", help="print one dead letter in full")
    parser.add_argument("--replay", metavar="ID", nargs="+", help="replay these dead letters")
    parser.add_argument(
        "--wait", type=float, default=0.0, help="with --replay: wait this long for outcomes"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    client = Client()
    if args.replay:
        return replay(client, args.name, args.replay, wait=args.wait)
    if args.show:
        print_letter(client.dead_letter(args.name, args.show))
        return 0
    page = client.dead_letters(args.name, limit=args.limit)
    if not page["items"]:
        print(f"{args.name} has no dead letters")
        return 0
    print_table(letter_rows(page["items"]))
    if page.get("next_cursor"):
        print(f"(newest {len(page['items'])} shown; -n for more)")
    return 0


def letter_rows(items: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [("ID", "FAILED AT", "KEY", "ATTEMPT", "ERROR")]
    for item in items:
        error = f"{item['error_type']}: {item['error_message']}".replace("\n", " ")
        rows.append(
            (
                item["id"],
                item["failed_at"],
                item["key"] if item["key"] is not None else "-",
                str(item["attempt"]),
                error if len(error) <= 80 else error[:77] + "...",
            )
        )
    return rows


def print_letter(letter: dict[str, Any]) -> None:
    for field in ("id", "request_id", "key", "attempt", "worker", "failed_at", "timed_out"):
        print(f"{field}: {letter[field]}")
    print(f"error: {letter['error_type']}: {letter['error_message']}")
    print(f"payload: {letter['payload']}")
    if letter["traceback"]:
        print(letter["traceback"].rstrip())
    for replayed in letter["replays"]:
        print(
            f"replayed {replayed['at']} by {replayed['actor']} as request "
            f"{replayed['request_id']} (attempt {replayed['attempt']})"
        )


def replay(client: Client, service: str, ids: list[str], *, wait: float) -> int:
    failed = 0
    for replayed in client.replay(service, ids):
        line = (
            f"replayed {replayed['dead_letter_id']} as request {replayed['request_id']} "
            f"(attempt {replayed['attempt']})"
        )
        if wait > 0:
            outcome = client.result(replayed["request_id"], wait=wait)
            if not outcome.done:
                line += ": still queued"
            elif outcome.ok:
                line += f": ok {json.dumps(outcome.result)}"
            else:
                failed += 1
                line += f": failed again ({(outcome.error or {}).get('message', '')})"
        print(line)
    return 1 if failed else 0
