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
import io
import json
import logging
import sys
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, BinaryIO, TextIO

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


def own_lines(stream: BinaryIO | None = None) -> BinaryIO:
    """Where the worker's own lines go: `stream` (default sys.stdout's bytes), or its
    `own_lines` side when it is a log capture's tee (worker_daemon/logcapture.py). Only
    lines written there ship as events; anything else written to the stream (a handler's
    print, however it is shaped) ships as a printed line, so it cannot pose as one."""
    stream = stream if stream is not None else sys.stdout.buffer
    own: BinaryIO | None = getattr(stream, "own_lines", None)
    return own if own is not None else stream


class EventLog:
    """`event("request", request_id=..., duration_ms=...)` writes
    `{"ts":..., "event":"request", "worker":..., "request_id":..., ...}`."""

    def __init__(self, stream: BinaryIO | None = None, **static: Any) -> None:
        self._stream = own_lines(stream)
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


def own_text_lines() -> TextIO:
    """sys.stdout for the worker's own formatted lines (a log handler's), as `own_lines`."""
    own = own_lines()
    if own is sys.stdout.buffer:
        return sys.stdout
    return io.TextIOWrapper(own, encoding="utf-8", errors="replace", write_through=True)


def configure_stdlib_logging(level: int = logging.INFO, **static: Any) -> None:
    # Records are the worker's own lines: the formatter puts a message in a field, so
    # whatever a handler logs cannot pose as another event.
    handler = logging.StreamHandler(own_text_lines())
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
