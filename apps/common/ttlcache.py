"""A small in-process cache whose entries expire: hot-path look-ups (tokens, invoke
targets) without a database query per request, stale for at most `ttl_s`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """Thread-safe; `ttl_s` is read on every put, so a settings override applies."""

    def __init__(self, ttl_s: Callable[[], float], *, max_entries: int = 10_000) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._lock = threading.Lock()
        self._entries: dict[K, tuple[float, V]] = {}

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= time.monotonic():
            self.discard(key)
            return None
        return value

    def put(self, key: K, value: V, *, ttl_s: float | None = None) -> None:
        """Keep `value` for `ttl_s` seconds (at most the cache's TTL)."""
        ttl = self._ttl_s() if ttl_s is None else min(ttl_s, self._ttl_s())
        with self._lock:
            if len(self._entries) >= self._max_entries:
                self._entries.clear()
            self._entries[key] = (time.monotonic() + ttl, value)

    def discard(self, key: K) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
