"""Log shipping: a worker's lines go in batches to its control plane, at
`POST {MEMRUN_URL}/api/v1/workers/{MEMRUN_WORKER_ID}/logs` with MEMRUN_WORKER_TOKEN.

The hot path never waits on shipping: a line is encoded on the caller's thread and
appended to a bounded queue under a short lock. One background thread sends a batch
every `interval_s`, or at once when `batch_lines` are queued, and retries with backoff
while the control plane is unreachable. When the queue is full the oldest lines are
dropped and counted; the count travels as a `logship.dropped` line in the next batch.
A batch the control plane refuses (4xx) is dropped and reported, never retried; a
refused credential (401/403) turns shipping off.

What is shipped, and when shipping is on, is worker_daemon/logcapture.py's business.
"""

from __future__ import annotations

import collections
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from memrun.errors import ApiError
from memrun.httpclient import NO_RETRY, HttpClient

# The control plane stores at most this much of a message, and takes at most 1000 lines
# and 1 MiB per batch: the defaults below stay under both.
MESSAGE_MAX_CHARS = 8192
REQUEST_ID_MAX_CHARS = 100
_RETRYABLE_STATUSES = frozenset({408, 425, 429})
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode
MASK = "***"
# Shorter secret values are not masked: replacing every "1" or "yes" would wreck the log
# and hide little.
MASK_MIN_CHARS = 4


def secret_masker(values: Iterable[str]) -> Callable[[str], str]:
    """`text` with each of `values` (the service's secret values, the longest first so a
    value containing another is masked whole) replaced by `***`, as written and as JSON
    escapes it."""
    plain = sorted({v for v in values if len(v) >= MASK_MIN_CHARS}, key=len, reverse=True)
    forms = [form for v in plain for form in dict.fromkeys((v, _dumps(v)[1:-1]))]

    def mask(text: str) -> str:
        for form in forms:
            if form in text:
                text = text.replace(form, MASK)
        return text

    return mask


Report = Callable[..., None]


@dataclass(frozen=True)
class ShipSettings:
    """Bounds of the shipper, with their units."""

    batch_lines: int = 500
    batch_bytes: int = 512 * 1024
    interval_s: float = 1.0
    max_queue_lines: int = 10_000
    max_queue_bytes: int = 16 * 1024 * 1024
    # A longer encoded line loses its `fields` (the message is already cut).
    max_line_bytes: int = 64 * 1024
    backoff_min_s: float = 0.5
    backoff_max_s: float = 30.0
    request_timeout_s: float = 10.0
    close_timeout_s: float = 5.0


class ShipUnavailable(Exception):
    """The control plane could not take the batch now (unreachable, 5xx, 429): retry."""


class ShipRejected(Exception):
    """The control plane refused the batch (4xx): retrying would not help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class LogTransport(Protocol):
    def send(self, body: bytes, *, timeout_s: float) -> None:
        """POST one batch; raise ShipUnavailable or ShipRejected when it was not taken."""


class HttpLogTransport:
    """The control plane's ingest route, through `memrun.httpclient`. Not retried there:
    the shipper retries whole batches itself, with backoff, keeping its queue bounded."""

    def __init__(self, *, url: str, worker_id: str, token: str) -> None:
        self.path = f"/api/v1/workers/{urllib.parse.quote(worker_id, safe='')}/logs"
        self.url = f"{url.rstrip('/')}{self.path}"
        self._http = HttpClient(url, token=token, retry=NO_RETRY)

    def send(self, body: bytes, *, timeout_s: float) -> None:
        headers = {"Content-Type": "application/json"}
        try:
            self._http.call("POST", self.path, content=body, headers=headers, timeout_s=timeout_s)
        except ApiError as exc:
            if exc.status == 0:
                raise ShipUnavailable(f"{self.url}: {exc.message}") from None
            if exc.status >= 500 or exc.status in _RETRYABLE_STATUSES:
                raise ShipUnavailable(f"HTTP {exc.status}: {exc.message}") from None
            raise ShipRejected(exc.status, exc.message) from None


@dataclass
class _Batch:
    first_seq: int
    lines: int
    body: bytes


class LogShipper:
    """A bounded queue of encoded lines and the thread that sends them.

    `put` may be called from any thread and never blocks on I/O. `report(event, **fields)`
    is told of the shipper's own trouble (unreachable, recovered, dropped, refused), from
    the sending thread.
    """

    def __init__(
        self,
        transport: LogTransport,
        settings: ShipSettings | None = None,
        *,
        report: Report | None = None,
        clock: Callable[[], float] = time.monotonic,
        masked: Iterable[str] = (),
    ) -> None:
        self._transport = transport
        # A safety net, not a guarantee: a value split across two printed chunks passes.
        self._mask = secret_masker(masked)
        self.settings = settings or ShipSettings()
        self._report = report or (lambda event, **fields: None)
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[tuple[int, bytes]] = collections.deque()
        self._queued_bytes = 0
        self._seq = 0
        self._pending: _Batch | None = None
        self._flushing = 0
        self._closing = False
        self._give_up_at = float("inf")
        self._disabled = False
        self._stopped = False
        self._retry_now = threading.Event()
        self._unreported_drops = 0
        self._counts = collections.Counter[str]()
        self._thread = threading.Thread(target=self._run, name="memrun-logship", daemon=True)

    def start(self) -> None:
        self._thread.start()

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
        """Queue one line; drops the oldest when the queue is full. Never raises."""
        try:
            data = self._encode(ts, level, event, message, request_id, dict(fields or {}))
        except Exception as exc:  # a line we cannot encode must not break the caller
            data = self._encode(ts, level, event, message, request_id, {"unencodable": repr(exc)})
        bounds = self.settings
        with self._cond:
            if self._disabled or self._stopped:
                return
            self._seq += 1
            self._queue.append((self._seq, data))
            self._queued_bytes += len(data)
            while (
                len(self._queue) > bounds.max_queue_lines
                or self._queued_bytes > bounds.max_queue_bytes
            ):
                self._queued_bytes -= len(self._queue.popleft()[1])
                self._unreported_drops += 1
                self._counts["dropped"] += 1
            if len(self._queue) >= bounds.batch_lines:
                self._cond.notify()

    def flush(self, timeout_s: float) -> bool:
        """Send now; True once every line queued before the call has left the queue
        (sent, refused, or dropped, each counted in `stats()`), False on timeout."""
        deadline = self._clock() + timeout_s
        with self._cond:
            target = self._seq
            self._flushing += 1
            self._cond.notify_all()
            self._retry_now.set()
            try:
                while self._oldest_held_seq() <= target and self._thread.is_alive():
                    remaining = deadline - self._clock()
                    if remaining <= 0:
                        return False
                    self._cond.wait(remaining)
                return self._oldest_held_seq() > target
            finally:
                self._flushing -= 1

    def close(self, timeout_s: float | None = None) -> bool:
        """Send what is queued, for at most `timeout_s`, then stop the thread; True if
        nothing was left behind."""
        timeout_s = self.settings.close_timeout_s if timeout_s is None else timeout_s
        with self._cond:
            self._closing = True
            self._give_up_at = self._clock() + timeout_s
            self._cond.notify_all()
        self._retry_now.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        with self._cond:
            left = len(self._queue) + (self._pending.lines if self._pending else 0)
        return left == 0

    def stats(self) -> dict[str, int]:
        """sent_lines, sent_batches, failures, dropped, rejected_lines, queued."""
        with self._cond:
            counts = {
                name: self._counts[name]
                for name in ("sent_lines", "sent_batches", "failures", "dropped", "rejected_lines")
            }
            counts["queued"] = len(self._queue) + (self._pending.lines if self._pending else 0)
        return counts

    def _encode(
        self, ts: float, level: str, event: str, message: str, request_id: str, fields: Any
    ) -> bytes:
        # Masked before the cut, so that no cut-off prefix of a value survives.
        line = {
            "ts": round(ts, 6),
            "level": level,
            "event": event,
            "request_id": self._mask(request_id)[:REQUEST_ID_MAX_CHARS],
            "message": self._mask(message)[:MESSAGE_MAX_CHARS],
            "fields": fields,
        }
        text = self._mask(_dumps(line))
        if len(text.encode()) > self.settings.max_line_bytes:
            line["fields"] = {"fields_dropped_bytes": len(text.encode())}
            text = self._mask(_dumps(line))
        return text.encode()

    def _oldest_held_seq(self) -> int:
        if self._pending is not None:
            return self._pending.first_seq
        return self._queue[0][0] if self._queue else self._seq + 1

    def _ready(self) -> bool:
        return self._closing or (
            bool(self._queue)
            and (self._flushing > 0 or len(self._queue) >= self.settings.batch_lines)
        )

    def _take_batch(self) -> _Batch | None:
        """The oldest queued lines, within the batch bounds, led by a drop report."""
        if not self._queue:
            return None
        bounds = self.settings
        lines: list[bytes] = []
        if self._unreported_drops:
            lines.append(self._drop_line(self._unreported_drops))
            self._unreported_drops = 0
        first_seq = self._queue[0][0]
        size = sum(map(len, lines))
        while self._queue and len(lines) < bounds.batch_lines:
            data = self._queue[0][1]
            if lines and size + len(data) + 1 > bounds.batch_bytes:
                break
            self._queue.popleft()
            self._queued_bytes -= len(data)
            lines.append(data)
            size += len(data) + 1
        return _Batch(first_seq, len(lines), b'{"lines":[' + b",".join(lines) + b"]}")

    def _drop_line(self, dropped: int) -> bytes:
        message = f"dropped {dropped} log lines: the queue was full (control plane unreachable?)"
        fields = {"dropped": dropped, "dropped_total": self._counts["dropped"]}
        return self._encode(time.time(), "warning", "logship.dropped", message, "", fields)

    def _run(self) -> None:
        try:
            self._send_until_closed()
        finally:
            with self._cond:
                self._stopped = True
                self._cond.notify_all()

    def _send_until_closed(self) -> None:
        backoff_s = self.settings.backoff_min_s
        down_since: float | None = None
        while True:
            with self._cond:
                if self._pending is None:
                    self._cond.wait_for(self._ready, timeout=self.settings.interval_s)
                    self._pending = self._take_batch()
                batch = self._pending
                if batch is None:
                    if self._closing:
                        return
                    continue
                timeout_s = min(self.settings.request_timeout_s, self._give_up_at - self._clock())
            if timeout_s <= 0:
                return
            error = self._send(batch, timeout_s)
            if error is None:
                backoff_s = self.settings.backoff_min_s
                if down_since is not None:
                    self._report(
                        "logship.recovered",
                        level="info",
                        down_s=round(self._clock() - down_since, 3),
                        dropped_total=self.stats()["dropped"],
                    )
                    down_since = None
                continue
            if down_since is None:
                down_since = self._clock()
                self._report("logship.unreachable", level="warning", error=error)
            self._retry_now.wait(min(backoff_s, max(0.0, self._give_up_at - self._clock())))
            self._retry_now.clear()
            backoff_s = min(backoff_s * 2, self.settings.backoff_max_s)
            if self._clock() >= self._give_up_at:
                return

    def _send(self, batch: _Batch, timeout_s: float) -> str | None:
        """Send `batch`; None when it left the queue (taken or refused), else the error."""
        try:
            self._transport.send(batch.body, timeout_s=timeout_s)
        except ShipUnavailable as exc:
            with self._cond:
                self._counts["failures"] += 1
            return str(exc)
        except ShipRejected as exc:
            self._settle("rejected_lines", batch.lines)
            refused_credential = exc.status in (401, 403)
            if refused_credential:
                with self._cond:
                    self._disabled = True
                    self._queue.clear()
                    self._queued_bytes = 0
                    self._cond.notify_all()
            self._report(
                "logship.disabled" if refused_credential else "logship.rejected",
                level="error",
                status=exc.status,
                error=str(exc),
                lines=batch.lines,
            )
            return None
        self._settle("sent_lines", batch.lines)
        return None

    def _settle(self, counter: str, lines: int) -> None:
        with self._cond:
            self._pending = None
            self._counts[counter] += lines
            if counter == "sent_lines":
                self._counts["sent_batches"] += 1
            self._cond.notify_all()
