"""Tier 1: objects in RAM for the worker's lifetime.

Named objects (`set_object`) are pinned: the handler put them there on purpose. Decoded
values (`get_or_fetch(url, decode=fn)`) fill the rest of the byte budget and are evicted
least recently used first. Reads take no lock (a dict read is atomic under the GIL); writes do.
"""

from __future__ import annotations

import heapq
import threading
import types
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from worker_daemon.cache.tiers import Fetched

DecodedKey = tuple[str, int]


def decoder_identity(decode: Callable[..., Any]) -> object:
    """What tells decoders apart: a function without closure or defaults by its code, so a
    lambda written inline in a handler (a new function object per call) still hits;
    anything else (closures, partials, bound methods) by the object itself."""
    if (
        type(decode) is types.FunctionType
        and decode.__closure__ is None
        and decode.__defaults__ is None
        and decode.__kwdefaults__ is None
    ):
        return decode.__code__
    return decode


def decoded_key(url: str, decode: Callable[..., Any]) -> DecodedKey:
    """The memory key of `url` decoded by `decode`. Keyed by the id of the decoder's
    identity (hashing a code object is slow); the `Decoded` entry holds that identity,
    so the id cannot be reused while the entry lives."""
    return (url, id(decoder_identity(decode)))


@dataclass(slots=True)
class Decoded:
    """A decoded value and the version of the file it was decoded from."""

    fetched: Fetched
    version: str
    validated_at_s: float
    size_bytes: int
    decoder: object


class MemoryTier:
    """Named objects plus an LRU of decoded values within `budget_bytes`. Thread-safe."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._lock = threading.Lock()
        self._named: dict[str, Any] = {}
        self._named_sizes: dict[str, int] = {}
        self._named_bytes = 0
        self._decoded: OrderedDict[DecodedKey, Decoded] = OrderedDict()
        self._decoded_bytes = 0
        self.evictions = 0
        self.evicted_bytes = 0
        self.rejected = 0

    def set_object(self, name: str, obj: Any, size_bytes: int) -> None:
        with self._lock:
            self._named_bytes += size_bytes - self._named_sizes.get(name, 0)
            self._named_sizes[name] = size_bytes
            self._named[name] = obj
            self._evict_locked()

    def get_object(self, name: str, default: Any = None) -> Any:
        return self._named.get(name, default)

    def get_decoded(self, key: DecodedKey) -> Decoded | None:
        """The decoded value under `key`, marked most recently used; None if absent.

        Lock-free: OrderedDict's get and move_to_end are single C calls (atomic under
        the GIL); an eviction in between only makes move_to_end miss the key.
        """
        entry = self._decoded.get(key)
        if entry is not None:
            try:  # noqa: SIM105 - contextlib.suppress costs more than the rest of a hit
                self._decoded.move_to_end(key)
            except KeyError:
                pass
        return entry

    def put_decoded(self, key: DecodedKey, entry: Decoded) -> bool:
        """Keep `entry` unless it cannot fit beside the named objects; returns whether kept."""
        with self._lock:
            old = self._decoded.pop(key, None)
            if old is not None:
                self._decoded_bytes -= old.size_bytes
            if self._named_bytes + entry.size_bytes > self.budget_bytes:
                self.rejected += 1
                return False
            self._decoded[key] = entry
            self._decoded_bytes += entry.size_bytes
            self._evict_locked()
            return True

    def drop_url(self, url: str) -> None:
        """Forget every value decoded from `url` (its source has a new version)."""
        with self._lock:
            for key in [k for k in self._decoded if k[0] == url]:
                self._decoded_bytes -= self._decoded.pop(key).size_bytes

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "budget_bytes": self.budget_bytes,
                "named_objects": len(self._named),
                "named_bytes": self._named_bytes,
                "decoded_values": len(self._decoded),
                "decoded_bytes": self._decoded_bytes,
                "evictions": self.evictions,
                "evicted_bytes": self.evicted_bytes,
                "rejected": self.rejected,
            }

    def largest(self, count: int) -> list[tuple[str, int]]:
        """The `count` biggest named objects as (name, size in bytes), biggest first."""
        with self._lock:
            sizes = list(self._named_sizes.items())
        return heapq.nlargest(count, sizes, key=lambda item: item[1])

    def _evict_locked(self) -> None:
        while self._decoded and self._named_bytes + self._decoded_bytes > self.budget_bytes:
            _, victim = self._decoded.popitem(last=False)
            self._decoded_bytes -= victim.size_bytes
            self.evictions += 1
            self.evicted_bytes += victim.size_bytes
