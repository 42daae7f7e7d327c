"""`memrun logs NAME [--worker W] [--since 10m|ISO] [--request-id ID] [--level L] [-f]`:
a service's log lines, merged across its workers, one line each:
`ts worker level event message`. With `-f`, keep printing new lines until Ctrl-C."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

from memrun._client import Client
from memrun.errors import MemrunError

POLL_INTERVAL_S = 1.0
_AGO = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
LEVELS = ("debug", "info", "warning", "error", "critical")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "logs",
        help="show a service's worker logs; -f follows them",
        description=(
            "Print a service's log lines, merged across its workers, oldest first: the "
            "newest --limit lines, or every line since --since. -f keeps printing new "
            "lines as workers ship them, until Ctrl-C."
        ),
    )
    parser.add_argument("name", help="the service")
    parser.add_argument("--worker", help="only this worker's lines")
    parser.add_argument(
        "--since", help="from this time: 30s, 10m, 2h, 1d ago, or ISO 8601 (2024-05-01T12:00Z)"
    )
    parser.add_argument("--request-id", help="only the lines of this request")
    parser.add_argument("--level", choices=LEVELS, help="only this level and above")
    parser.add_argument(
        "-n", "--limit", type=int, default=100, help="without --since, this many (default 100)"
    )
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, *, wait: Callable[[float], None] = time.sleep) -> int:
    lines = log_lines(
        Client(),
        args.name,
        worker=args.worker,
        since=parse_since(args.since) if args.since else None,
        request_id=args.request_id,
        level=args.level,
        limit=args.limit,
        follow=args.follow,
        wait=wait,
    )
    try:
        for line in lines:
            print_line(line, sys.stdout)
    except KeyboardInterrupt:
        if not args.follow:
            raise
    return 0


def log_lines(
    client: Client,
    service: str,
    *,
    worker: str | None = None,
    since: str | None = None,
    request_id: str | None = None,
    level: str | None = None,
    limit: int = 100,
    follow: bool = False,
    wait: Callable[[float], None] = time.sleep,
    poll_interval_s: float = POLL_INTERVAL_S,
) -> Iterator[dict[str, Any]]:
    """The lines, page by page: without `since` the newest `limit`, else all since then;
    with `follow`, then every new line as it arrives, forever (`wait` between polls)."""
    filters = {"worker": worker, "request_id": request_id, "level": level}
    page = client.logs(service, since=since, limit=limit, **filters)
    yield from page["lines"]
    while page["more"] or follow:
        if not page["more"]:
            wait(poll_interval_s)
        page = client.logs(service, since=page["next_since"], limit=1000, **filters)
        yield from page["lines"]


def parse_since(raw: str, *, now: float | None = None) -> str:
    """`10m` (30s, 2h, 1d) ago as epoch seconds; anything else is passed on as a time."""
    match = _AGO.fullmatch(raw.strip())
    if match is None:
        if not raw.strip():
            raise MemrunError("--since is empty: use 10m, 2h, 1d, or an ISO 8601 time")
        return raw.strip()
    ago_s = float(match[1]) * _SECONDS[match[2]]
    return f"{(time.time() if now is None else now) - ago_s:.6f}"


def format_line(line: dict[str, Any]) -> str:
    """`ts worker level event message`, then `key=value` for the request id and (when
    there is no message) the fields; a traceback follows on its own lines."""
    ts = datetime.fromisoformat(line["ts"]).astimezone(UTC)
    fields = dict(line.get("fields") or {})
    traceback = fields.pop("traceback", None)
    extras = {"request_id": line["request_id"]} if line.get("request_id") else {}
    if not line["message"]:
        extras.update(fields)
    words = [
        f"{ts:%Y-%m-%dT%H:%M:%S}.{ts.microsecond // 1000:03d}Z",
        line["worker"],
        f"{line['level']:<7}",
        line["event"],
        line["message"],
        *(f"{key}={_value(value)}" for key, value in extras.items()),
    ]
    text = " ".join(word for word in words if word)
    if traceback:
        text += "\n" + "\n".join(f"    {row}" for row in str(traceback).splitlines())
    return text


def print_line(line: dict[str, Any], out: TextIO) -> None:
    print(format_line(line), file=out, flush=True)


def _value(value: Any) -> str:
    return value if isinstance(value, str) and " " not in value else json.dumps(value)
