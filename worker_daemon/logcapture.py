"""What a worker ships: every line the process writes to stdout and stderr, teed (still
written to the real streams). A JSON line of the worker's own (an `EventLog` event, or a
stdlib record from `configure_stdlib_logging`, worker_daemon/logs.py) is shipped with its
event, level, request id, message and fields; any other line (what handler code prints)
as a `stdout` or `stderr` line.

So capture starts first thing in the process: event logs and log handlers made later
write through the tee, and each line is shipped exactly once. `LogShipping.from_env`
turns it on for a provisioned worker (MEMRUN_URL, MEMRUN_WORKER_ID, MEMRUN_WORKER_TOKEN
set); a worker run by hand logs to stdout only.
"""

from __future__ import annotations

import contextlib
import io
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, TextIO

from worker_daemon.logs import EventLog, current_request_id, parse_line
from worker_daemon.logship import HttpLogTransport, LogShipper, LogTransport, ShipSettings

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

ENV_URL = "MEMRUN_URL"
ENV_WORKER_ID = "MEMRUN_WORKER_ID"
ENV_TOKEN = "MEMRUN_WORKER_TOKEN"
# The names (never the values) of the env vars that hold the service's secrets.
ENV_SECRET_KEYS = "MEMRUN_SECRET_KEYS"
LEVELS = ("debug", "info", "warning", "error", "critical")
# A printed line without its end is shipped once it is this long.
MAX_PARTIAL_LINE_BYTES = 8192
# Fields every line of an EventLog repeats; the control plane knows who sent the line.
_STATIC_FIELDS = ("worker", "service")


class LineSink(Protocol):
    def put(
        self,
        *,
        ts: float,
        level: str,
        event: str,
        message: str = "",
        request_id: str = "",
        fields: Mapping[str, Any] | None = None,
    ) -> None:
        """Take one line; never block on I/O, never raise."""


def event_level(name: str, fields: Mapping[str, Any]) -> str:
    """A line's own `level` field if it names one, else error for a failure (an `error`
    field, or an event name ending in error/failed/fatal), else info."""
    level = fields.get("level")
    if isinstance(level, str) and level in LEVELS:
        return level
    if "error" in fields or name.endswith(("error", "failed", "fatal")):
        return "error"
    return "info"


def line_router(sink: LineSink, *, event: str, level: str) -> Callable[[str, bool], None]:
    """`on_line` for a tee: the worker's JSON lines with their own fields, any other line
    as `event` (stdout, stderr) at `level`. A line without a request id of its own gets
    the one of the handler writing it (`current_request_id`: the tee calls this on the
    writing thread, in its context)."""

    def route(line: str, own: bool) -> None:
        # Only the worker's own lines (`own`: written to the tee's `own_lines`) are read as
        # events; a printed line that looks like one is still a printed line.
        record = parse_line(line) if own and line.startswith("{") else None
        if record is None:
            sink.put(
                ts=time.time(),
                level=level,
                event=event,
                message=line,
                request_id=current_request_id.get(),
            )
            return
        name = str(record.pop("event"))
        ts = record.pop("ts", None)
        for key in _STATIC_FIELDS:
            record.pop(key, None)
        line_level = event_level(name, record)
        record.pop("level", None)
        request_id = record.pop("request_id", None)
        message = record.pop("message", "")
        sink.put(
            ts=ts if isinstance(ts, int | float) else time.time(),
            level=line_level,
            event=name,
            message=message if isinstance(message, str) else str(message),
            request_id=current_request_id.get() if request_id is None else str(request_id),
            fields=record,
        )

    return route


class _LineTee(io.RawIOBase):
    """Writes through to `real`, and hands each complete line (assembled per thread, so
    threads printing at once do not mix) to `on_line`, with whether it came through
    `own_lines`: the side the worker's event logs and log handlers write to."""

    def __init__(self, real: BinaryIO, on_line: Callable[[str, bool], None]) -> None:
        super().__init__()
        self._real = real
        self._on_line = on_line
        self._partial = threading.local()
        self.own_lines = _OwnLines(self)

    @property
    def name(self) -> Any:
        return getattr(self._real, "name", "<tee>")

    def writable(self) -> bool:
        return True

    def read(self, size: int = -1, /) -> bytes:
        raise io.UnsupportedOperation("a log tee is not readable")

    def write(self, b: ReadableBuffer, /) -> int:
        return self.write_line_data(bytes(b), own=False)

    def write_line_data(self, data: bytes, *, own: bool) -> int:
        self._real.write(data)
        slot = "own" if own else "printed"
        *lines, partial = (getattr(self._partial, slot, b"") + data).split(b"\n")
        if len(partial) > MAX_PARTIAL_LINE_BYTES:
            lines.append(partial)
            partial = b""
        setattr(self._partial, slot, partial)
        for line in lines:
            self._on_line(line.decode(errors="replace").rstrip("\r"), own)
        return len(data)

    def flush(self) -> None:
        self._real.flush()

    def fileno(self) -> int:
        return self._real.fileno()

    def isatty(self) -> bool:
        return self._real.isatty()


class _OwnLines(io.RawIOBase):
    """The tee's side for the worker's own lines (see `worker_daemon.logs.own_lines`)."""

    def __init__(self, tee: _LineTee) -> None:
        super().__init__()
        self._tee = tee

    def writable(self) -> bool:
        return True

    def write(self, b: ReadableBuffer, /) -> int:
        return self._tee.write_line_data(bytes(b), own=True)

    def flush(self) -> None:
        self._tee.flush()

    def fileno(self) -> int:
        return self._tee.fileno()

    def close(self) -> None:
        # The tee outlives any text wrapper made around this side, which closes it when
        # collected: stay open.
        self.flush()


def tee_stream(real: TextIO, on_line: Callable[[str, bool], None]) -> TextIO:
    """A text stream that writes to `real`'s bytes and also hands every line written to
    `on_line`. `real` must have a binary `buffer` (sys.stdout and sys.stderr do)."""
    real.flush()  # what `real` still holds goes out before anything written through us
    return io.TextIOWrapper(
        _LineTee(real.buffer, on_line),
        encoding=real.encoding,
        errors=real.errors,
        line_buffering=bool(real.line_buffering),
        write_through=True,
    )


class LogShipping:
    """Shipping as a worker process runs it: `capture()` tees sys.stdout and sys.stderr
    into the shipper, `close()` puts them back and sends
    what is queued, within `close_timeout_s`. The shipper's own trouble is reported as
    event lines on stdout, so they are shipped too once it recovers.

        with LogShipping.from_env(os.environ) or contextlib.nullcontext():
            ...  # the whole worker, from its first line
    """

    def __init__(
        self,
        transport: LogTransport,
        settings: ShipSettings | None = None,
        *,
        masked: Iterable[str] = (),
        **static: Any,
    ) -> None:
        self.shipper = LogShipper(transport, settings, report=self._report, masked=masked)
        self._static = static
        self._events = EventLog(**static)
        self._streams: tuple[TextIO, TextIO] | None = None
        self._tees: tuple[TextIO, TextIO] | None = None

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], settings: ShipSettings | None = None
    ) -> LogShipping | None:
        """Shipping, started and capturing, when MEMRUN_URL, MEMRUN_WORKER_ID and
        MEMRUN_WORKER_TOKEN are all set (a provisioned worker); else None (a worker run
        by hand logs to stdout only)."""
        url, worker_id, token = (env.get(name, "") for name in (ENV_URL, ENV_WORKER_ID, ENV_TOKEN))
        if not (url and worker_id and token):
            return None
        transport = HttpLogTransport(url=url, worker_id=worker_id, token=token)
        # The worker's own credential is masked too: a handler printing its env leaks neither.
        secret_keys = [k for k in env.get(ENV_SECRET_KEYS, "").split(",") if k]
        masked = [env.get(key, "") for key in secret_keys] + [token]
        shipping = cls(transport, settings, masked=masked, worker=worker_id)
        shipping.shipper.start()
        shipping.capture()
        return shipping

    def capture(self) -> None:
        """Tee sys.stdout and sys.stderr into the shipper. Event logs and log handlers
        made before this write to the real streams and are not shipped."""
        self._streams = (sys.stdout, sys.stderr)
        self._tees = (
            tee_stream(sys.stdout, line_router(self.shipper, event="stdout", level="info")),
            tee_stream(sys.stderr, line_router(self.shipper, event="stderr", level="warning")),
        )
        sys.stdout, sys.stderr = self._tees
        self._events = EventLog(**self._static)

    def close(self, timeout_s: float | None = None) -> bool:
        """Stop capturing, send what is queued; True if nothing was left behind.

        SIGTERM is ignored meanwhile: a supervisor stopping a worker that has drained
        sends it again, and the default action would lose the last lines. The close is
        bounded by the shipper's close timeout, and SIGKILL still ends it."""
        with _sigterm_ignored():
            if self._streams is not None:
                sys.stdout.flush()
                sys.stderr.flush()
                sys.stdout, sys.stderr = self._streams
                self._streams = None
            return self.shipper.close(timeout_s)

    def __enter__(self) -> LogShipping:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _report(self, event: str, /, **fields: Any) -> None:
        self._events.event(event, **fields)
        self._events.flush()


@contextlib.contextmanager
def _sigterm_ignored() -> Iterator[None]:
    """SIGTERM ignored within, if this is the main thread (only it may set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
