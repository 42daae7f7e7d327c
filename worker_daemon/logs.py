"""Worker logs: one JSON object per line on stdout, one line per event.

Lines go to the binary layer of the stream, whose own lock keeps concurrent lines whole,
so pool threads log without a lock of ours; the poll thread flushes about every
`flush_interval_s` and after lifecycle events.

`current_request_id` names the request whose handler runs in this thread or task (the
pipeline sets it with `request_scope` around each call): log records and printed lines
made meanwhile carry its id (see worker_daemon/logcapture.py). A context variable, not a
thread-local, so that it follows a sync handler on its pool thread, an async one into the
tasks it starts, and `asyncio.to_thread`; a plain thread a handler starts does not copy it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, BinaryIO

_dumps = json.JSONEncoder(separators=(",", ":"), default=str).encode

current_request_id: ContextVar[str] = ContextVar("memrun_request_id", default="")


@contextlib.contextmanager
def request_scope(request_id: str) -> Iterator[None]:
    """Within: `current_request_id` is `request_id` in this context (and tasks and
    `to_thread` calls started from it)."""
    token = current_request_id.set(request_id)
    try:
        yield
    finally:
        current_request_id.reset(token)


class EventLog:
    """`event("request", request_id=..., duration_ms=...)` writes
    `{"ts":..., "event":"request", "worker":..., "request_id":..., ...}`."""

    def __init__(self, stream: BinaryIO | None = None, **static: Any) -> None:
        self._stream = stream if stream is not None else sys.stdout.buffer
        self._static = static

    def event(self, name: str, /, **fields: Any) -> None:
        record = {"ts": round(time.time(), 3), "event": name, **self._static, **fields}
        self._stream.write((_dumps(record) + "\n").encode())

    def flush(self) -> None:
        self._stream.flush()


class JsonLogFormatter(logging.Formatter):
    """Formats stdlib records (the handler's `ctx.log`, libraries) as the same JSON lines."""

    def __init__(self, **static: Any) -> None:
        super().__init__()
        self._static = static

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": round(record.created, 3),
            "event": "log",
            **self._static,
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for extra in ("request_id", "key"):
            if extra in record.__dict__:
                fields[extra] = record.__dict__[extra]
        if "request_id" not in fields and (request_id := current_request_id.get()):
            fields["request_id"] = request_id  # a library's record, made within a request
        if record.exc_info:
            fields["traceback"] = self.formatException(record.exc_info)
        return _dumps(fields)


def configure_stdlib_logging(level: int = logging.INFO, **static: Any) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonLogFormatter(**static))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request at INFO: a line per heartbeat and per shipped batch (each
    # shipped in turn) would bury what a person reads. Its warnings still come through.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


def parse_line(line: str | bytes) -> dict[str, Any] | None:
    """One log line back to its fields, or None if it is not one of ours."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "event" in record else None
