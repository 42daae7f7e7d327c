"""Counters of the warm cache: hits and bytes per tier, misses, fetch time, errors."""

from __future__ import annotations

import threading
from typing import Any

from worker_daemon.cache.tiers import DISK, MEMORY, WAITED, Tier


class _TierCounts:
    __slots__ = ("bytes", "hits")

    def __init__(self) -> None:
        self.hits = 0
        self.bytes = 0


class CacheStats:
    """Thread-safe counters; `as_dict` is JSON-able for heartbeats. Tiers are told apart
    by identity, not by hashing the enum, since a memory hit must cost next to nothing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._memory = _TierCounts()
        self._disk = _TierCounts()
        self._remote = _TierCounts()
        self._waited = _TierCounts()
        self._fetches = 0
        self._fetched_bytes = 0
        self._fetch_seconds_total = 0.0
        self._fetch_seconds_max = 0.0
        self._revalidations = 0
        self._adopted = 0
        self._adopted_bytes = 0
        self._prefetched = 0
        self._prefetched_bytes = 0
        self._prefetched_from_peers = 0
        self._errors = 0

    def served(self, tier: Tier, size_bytes: int) -> None:
        if tier is MEMORY:
            counts = self._memory
        elif tier is DISK:
            counts = self._disk
        elif tier is WAITED:
            counts = self._waited
        else:
            counts = self._remote
        with self._lock:
            counts.hits += 1
            counts.bytes += size_bytes

    def fetched(self, seconds: float, size_bytes: int) -> None:
        """One real download from the source (waiters on it are not counted again)."""
        with self._lock:
            self._fetches += 1
            self._fetched_bytes += size_bytes
            self._fetch_seconds_total += seconds
            self._fetch_seconds_max = max(self._fetch_seconds_max, seconds)

    def adopted(self, size_bytes: int) -> None:
        """One object taken over from a handed-over cache instead of downloaded."""
        with self._lock:
            self._adopted += 1
            self._adopted_bytes += size_bytes

    def prefetched(self, size_bytes: int, *, from_peer: bool) -> None:
        """One object brought ahead of its requests (a handoff): copied from another
        cache on this host (`from_peer`, also counted as adopted) or downloaded (also
        counted as a fetch)."""
        with self._lock:
            self._prefetched += 1
            self._prefetched_bytes += size_bytes
            self._prefetched_from_peers += from_peer

    def revalidated(self) -> None:
        with self._lock:
            self._revalidations += 1

    def failed(self) -> None:
        with self._lock:
            self._errors += 1

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            tiers = {
                "memory": self._memory,
                "disk": self._disk,
                "remote": self._remote,
                "waited": self._waited,
            }
            return {
                "requests": sum(c.hits for c in tiers.values()),
                "hits": {"memory": self._memory.hits, "disk": self._disk.hits},
                "misses": self._remote.hits,
                "waited": self._waited.hits,
                "bytes": {name: c.bytes for name, c in tiers.items()},
                "fetches": self._fetches,
                "fetched_bytes": self._fetched_bytes,
                "fetch_seconds_total": round(self._fetch_seconds_total, 6),
                "fetch_seconds_max": round(self._fetch_seconds_max, 6),
                "revalidations": self._revalidations,
                "adopted": self._adopted,
                "adopted_bytes": self._adopted_bytes,
                "prefetched": self._prefetched,
                "prefetched_bytes": self._prefetched_bytes,
                "prefetched_from_peers": self._prefetched_from_peers,
                "errors": self._errors,
            }
