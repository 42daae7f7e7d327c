"""Request numbers for heartbeats: handled and failed requests, and handler latency.

Durations are counted into the fixed buckets of `memrun.wire.stats` (no samples kept):
totals since the worker started, for Prometheus' counters and histogram, and the last
minute in one-second slots, for the dashboard's requests per minute and p50/p99. Memory
is constant: 60 slots of 16 counts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from memrun.wire.stats import LATENCY_BUCKETS, latency_bucket

WINDOW_S = 60


class _Slot:
    __slots__ = ("counts", "errors", "second")

    def __init__(self) -> None:
        self.second = -1
        self.counts = [0] * LATENCY_BUCKETS
        self.errors = 0


class RequestMetrics:
    """`observe` from any thread (one short lock); `snapshot` for the heartbeat."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._total = 0
        self._errors = 0
        self._counts = [0] * LATENCY_BUCKETS
        self._sum_ms = 0.0
        self._slots = [_Slot() for _ in range(WINDOW_S)]

    def observe(self, *, duration_ms: float, ok: bool) -> None:
        bucket = latency_bucket(duration_ms)
        second = int(self._clock())
        with self._lock:
            self._total += 1
            self._counts[bucket] += 1
            self._sum_ms += duration_ms
            slot = self._slots[second % WINDOW_S]
            if slot.second != second:
                slot.second = second
                slot.counts = [0] * LATENCY_BUCKETS
                slot.errors = 0
            slot.counts[bucket] += 1
            if not ok:
                self._errors += 1
                slot.errors += 1

    def snapshot(self) -> dict[str, Any]:
        """Totals since start (`total`, `errors`, `latency_counts` per bucket,
        `latency_sum_ms`) and the same over the last minute (`last_minute`)."""
        oldest = int(self._clock()) - WINDOW_S + 1
        with self._lock:
            recent = [slot for slot in self._slots if slot.second >= oldest]
            window = [sum(column) for column in zip(*(s.counts for s in recent), strict=True)]
            return {
                "total": self._total,
                "errors": self._errors,
                "latency_counts": list(self._counts),
                "latency_sum_ms": round(self._sum_ms, 3),
                "last_minute": {
                    "requests": sum(window),
                    "errors": sum(s.errors for s in recent),
                    "latency_counts": window or [0] * LATENCY_BUCKETS,
                },
            }
