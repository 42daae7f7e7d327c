"""Overload protection for invoke: who may wait, and when a service takes no more.

Per web process (memory only, no round trip):
- waiting callers are bounded per service and per token: past a bound the request is
  still queued but answered at once (202 with its id), so invoke load cannot pile up
  without limit in one process;
- a service's backlog (requests this process submitted that no worker has answered,
  seen through the outcome subscription) is bounded: past it invoke answers 429 with
  `Retry-After`, estimated from the rate at which the service's outcomes come back.
The bounds are per process (`memrun up --web-workers` multiplies them).
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings

from apps.common.errors import DomainError

_RATE_WINDOW_S = 10.0
_RETRY_AFTER_MAX_S = 60


class Admission:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting_by_service: Counter[str] = Counter()
        self._waiting_by_caller: Counter[str] = Counter()
        # service -> request id -> when this process stops counting it (its deadline).
        self._outstanding: dict[str, dict[str, float]] = {}
        self._answered: dict[str, deque[float]] = {}

    @contextmanager
    def waiting(self, *, service: str, caller: str) -> Iterator[bool]:
        """Yields whether the caller may wait (holding a slot until the block ends)."""
        with self._lock:
            allowed = (
                self._waiting_by_service[service] < settings.MEMRUN_INVOKE_WAITING_PER_SERVICE
                and self._waiting_by_caller[caller] < settings.MEMRUN_INVOKE_WAITING_PER_TOKEN
            )
            if allowed:
                self._waiting_by_service[service] += 1
                self._waiting_by_caller[caller] += 1
        try:
            yield allowed
        finally:
            if allowed:
                with self._lock:
                    self._waiting_by_service[service] -= 1
                    self._waiting_by_caller[caller] -= 1

    def admit(self, *, service: str, request_ids: list[str], timeout_s: float) -> None:
        """Count `request_ids` in the service's backlog, or refuse them all with 429."""
        limit = settings.MEMRUN_INVOKE_BACKLOG_PER_SERVICE
        now = time.monotonic()
        with self._lock:
            outstanding = self._outstanding.setdefault(service, {})
            if len(outstanding) + len(request_ids) > limit:
                for request_id, until in list(outstanding.items()):
                    if until <= now:
                        del outstanding[request_id]
            backlog = len(outstanding)
            if backlog + len(request_ids) > limit:
                retry_after = self._retry_after(service, backlog + len(request_ids) - limit, now)
            else:
                until = now + timeout_s
                outstanding.update(dict.fromkeys(request_ids, until))
                return
        raise DomainError(
            f"{service} has {backlog} requests waiting for a worker (the limit is {limit}); "
            f"retry in {retry_after} s, or add workers with `memrun scale {service} N`",
            status=429,
            details={"service": service, "backlog": backlog, "limit": limit},
            headers={"Retry-After": str(retry_after)},
        )

    def answered(self, service: str, request_id: str) -> None:
        """An outcome came back (any process's request: only ours are counted)."""
        with self._lock:
            outstanding = self._outstanding.get(service)
            if outstanding is not None and outstanding.pop(request_id, None) is not None:
                times = self._answered.setdefault(service, deque(maxlen=10_000))
                times.append(time.monotonic())

    def backlog(self, service: str) -> int:
        with self._lock:
            return len(self._outstanding.get(service, {}))

    def _retry_after(self, service: str, excess: int, now: float) -> int:
        times = self._answered.get(service, ())
        recent = sum(1 for t in times if t > now - _RATE_WINDOW_S)
        if not recent:
            return _RETRY_AFTER_MAX_S // 6
        per_second = recent / _RATE_WINDOW_S
        return max(1, min(_RETRY_AFTER_MAX_S, math.ceil(excess / per_second)))


admission = Admission()
