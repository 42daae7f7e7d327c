"""Heartbeats: a background thread that tells the control plane how the worker is.

It sends one at once (booting), one whenever the state changes (ready as soon as the
worker consumes, draining), and one every `interval_s` (10 s, jittered by ±10% so that
workers started together do not beat together); `stop(final=...)` sends the last one
(stopped, with the exit code). The stats come from a callable (`Worker.stats` once the
runtime exists), sent as `worker_daemon.report.heartbeat_report` shapes them; the
answer "drain" calls `on_drain` once, and a refused credential calls `on_refused` and
ends the heartbeats. A control plane that cannot be reached is
logged and retried at the next beat: the worker keeps serving.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from worker_daemon.control_plane import ACTION_DRAIN, ControlPlaneError, CredentialRefused
from worker_daemon.logs import EventLog
from worker_daemon.report import REPORTED_STATE, heartbeat_report

# A worker reporting these is stopping already: a drain answer only acknowledges it, and
# is not logged (else it would follow the worker's summary as its last line).
_STOPPING_STATES = ("draining", "stopped")

Send = Callable[[Mapping[str, Any]], str]
Stats = Callable[[], Mapping[str, Any]]


class Heartbeat:
    def __init__(
        self,
        *,
        send: Send,
        stats: Stats,
        log: EventLog,
        interval_s: float = 10.0,
        jitter: float = 0.1,
        check_interval_s: float = 0.25,
        extra: Mapping[str, Any] | None = None,
        on_refused: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._send = send
        self._stats = stats
        self._log = log
        self._interval_s = interval_s
        self._jitter = jitter
        self._check_interval_s = check_interval_s
        self._extra = dict(extra or {})
        self._on_refused = on_refused
        self._on_drain: Callable[[], None] | None = None
        self._clock = clock
        self._rng = rng
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._drain = threading.Event()
        self._refused = threading.Event()
        self._last_state: str | None = None
        self._next_due = 0.0
        self.sent = 0
        self._thread = threading.Thread(target=self._run, name="memrun-heartbeat", daemon=True)

    @property
    def drain_requested(self) -> bool:
        return self._drain.is_set()

    @property
    def refused(self) -> bool:
        return self._refused.is_set()

    def start(self) -> None:
        self._thread.start()

    def attach(self, *, stats: Stats, on_drain: Callable[[], None]) -> None:
        """Report `stats` from now on; call `on_drain` when asked to drain (at once if
        that was asked already)."""
        with self._lock:
            self._stats = stats
            self._on_drain = on_drain
        if self._drain.is_set():
            on_drain()

    def soon(self) -> None:
        """Send the next heartbeat at the next check (within `check_interval_s`), not at
        its due time: partitions moved, and their next owner asks the control plane for
        the hot sets this one reports. Safe from any thread (one float assignment)."""
        self._next_due = 0.0

    def beat(self) -> None:
        """Send one heartbeat now, if the credential is still accepted."""
        if self._refused.is_set():
            return
        with self._lock:
            stats = self._stats
        try:
            report = heartbeat_report(stats(), **self._extra)
        except Exception as exc:  # a stats bug must not stop the heartbeats
            report = {"state": self._last_state or "booting", "stats": {"error": repr(exc)}}
            report.update(self._extra)
        self._deliver(report)

    def stop(self, *, final: Mapping[str, Any] | None = None) -> None:
        """End the thread; then send `final` (e.g. state stopped and the exit code)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()
        if final is not None and not self._refused.is_set():
            self._deliver({**final, **self._extra})

    def _run(self) -> None:
        while not self._refused.is_set():
            self._tick()
            if self._stopping.wait(self._check_interval_s):
                return

    def _tick(self) -> None:
        with self._lock:
            stats = self._stats
        state: str | None
        try:
            state = REPORTED_STATE.get(str(stats().get("state")), "booting")
        except Exception:
            state = self._last_state
        if state != self._last_state or self._clock() >= self._next_due:
            self.beat()

    def _deliver(self, report: Mapping[str, Any]) -> None:
        state = str(report.get("state"))
        spread = 1 + self._jitter * (2 * self._rng() - 1)
        self._next_due = self._clock() + self._interval_s * spread
        self._last_state = state
        try:
            action = self._send(report)
        except CredentialRefused as exc:
            self._log.event("heartbeat.refused", error=exc.message)
            self._refused.set()
            self._on_refused()
            return
        except ControlPlaneError as exc:
            self._log.event("heartbeat.failed", state=state, error=exc.message)
            return
        self.sent += 1
        if action == ACTION_DRAIN and not self._drain.is_set():
            if state not in _STOPPING_STATES:
                self._log.event("heartbeat.drain_requested")
            self._drain.set()
            with self._lock:
                on_drain = self._on_drain
            if on_drain is not None:
                on_drain()
