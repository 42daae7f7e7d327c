"""Single flight: concurrent calls for one key run the work once and share its outcome."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """`run(key, work)` calls `work()` unless a call for `key` is already running, in
    which case it waits for that call and returns its result or raises its error."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[Hashable, Future[T]] = {}
        self._waiting = 0

    def run(self, key: Hashable, work: Callable[[], T]) -> T:
        with self._lock:
            running = self._running.get(key)
            if running is None:
                mine: Future[T] = Future()
                self._running[key] = mine
            else:
                self._waiting += 1
        if running is not None:
            try:
                return running.result()
            finally:
                with self._lock:
                    self._waiting -= 1
        try:
            result = work()
        except BaseException as exc:
            mine.set_exception(exc)
            raise
        else:
            mine.set_result(result)
            return result
        finally:
            with self._lock:
                del self._running[key]

    def in_flight(self) -> int:
        """Calls running now (one per key)."""
        with self._lock:
            return len(self._running)

    def waiting(self) -> int:
        """Calls blocked on another call's outcome."""
        with self._lock:
            return self._waiting
