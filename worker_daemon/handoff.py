"""Warm handoff: when this worker gains partitions, prefetch what their old owners served.

The consume loop tells `Handoff.partitions_gained` on each assignment (inside Kafka's
rebalance callback, so it only queues). A background thread asks the hot-set source for
the gained partitions' hot sets (a provisioned worker: the control plane, which keeps
what every worker of the service reported in its heartbeats; see cache/hotset.py) and
brings them to local disk with `WarmCache.prefetch`, most recently read first, until
`max_bytes` or `max_s` is spent.

Why through the control plane: the hot sets already ride in heartbeats (the warmth view
reads them), the worker already holds a credential scoped to itself there, and the
control plane answers with other workers' hot sets of its own service only. A Kafka
topic would need one more topic and ACL per service for data that is a hint anyway.

Traffic never waits for a prefetch it does not need: the prefetch runs on its own
thread, one object at a time; a request for an object being prefetched joins that copy
(the cache's single flight) instead of fetching it again, and any other request goes
its own way. Each object is revalidated against its source first (HEAD), so a hot
entry whose ETag changed since is fetched at its new version, never served stale.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from memrun.wire.hotsets import HotEntry
from worker_daemon.cache.errors import CacheError
from worker_daemon.logs import EventLog

# partitions -> the hot entries other workers reported for them
HotSetSource = Callable[[Sequence[int]], Sequence[HotEntry]]
STOP_TIMEOUT_S = 5.0


class Prefetching(Protocol):
    def prefetch(self, url: str) -> int: ...

    def connect_s3(self) -> None: ...


def prefetch_plan(
    entries: Sequence[HotEntry], partitions: Sequence[int], *, max_bytes: int
) -> list[HotEntry]:
    """The entries of `partitions` to prefetch: one per URL (its newest report), most
    recently read first, as many as fit in `max_bytes` by their reported sizes."""
    wanted = set(partitions)
    newest: dict[str, HotEntry] = {}
    for entry in entries:
        if entry.partition not in wanted:
            continue
        known = newest.get(entry.url)
        if known is None or entry.last_access_s > known.last_access_s:
            newest[entry.url] = entry
    plan, planned = [], 0
    for entry in sorted(newest.values(), key=lambda e: e.last_access_s, reverse=True):
        if planned + entry.size_bytes > max_bytes:
            continue  # a smaller, colder one may still fit
        planned += entry.size_bytes
        plan.append(entry)
    return plan


class Handoff:
    """Prefetches the hot sets of gained partitions on a background thread."""

    def __init__(
        self,
        *,
        cache: Prefetching,
        source: HotSetSource,
        log: EventLog,
        max_bytes: int,
        max_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cache = cache
        self._source = source
        self._log = log
        self._max_bytes = max_bytes
        self._max_s = max_s
        self._clock = clock
        self._gained: queue.SimpleQueue[list[int] | None] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memrun-handoff", daemon=True)
        self.prefetched_bytes = 0

    def start(self) -> None:
        """Build the cache's S3 client, then start prefetching. Called before the worker
        joins its group: under the consumer protocol the first partitions arrive well
        under a second after it joins, and the requests queued on them would otherwise
        wait on the client's build (about a second of CPU) on their first miss."""
        try:
            self._cache.connect_s3()
        except Exception as exc:  # the first miss will say what is wrong, to its request
            self._log.event("handoff.s3_client_failed", error=str(exc))
        self._thread.start()

    def partitions_gained(self, partitions: Sequence[int]) -> None:
        """Queue `partitions` for a prefetch; returns at once (safe in a Kafka callback)."""
        if partitions:
            self._gained.put(list(partitions))

    def stop(self) -> None:
        """Stop after the object being copied (bounded by the cache's own timeouts)."""
        self._stopping.set()
        self._gained.put(None)
        if self._thread.is_alive():
            self._thread.join(STOP_TIMEOUT_S)

    def _run(self) -> None:
        while not self._stopping.is_set():
            batch = self._gained.get()
            if batch is None:
                return
            # Assignments that arrived meanwhile are served in one pass, newest owner data.
            while not self._gained.empty():
                more = self._gained.get_nowait()
                if more is None:
                    return
                batch.extend(more)
            self._prefetch(sorted(set(batch)))

    def _prefetch(self, partitions: list[int]) -> None:
        started = self._clock()
        try:
            entries = self._source(partitions)
        except Exception as exc:  # no hot set: requests fetch on a miss, as without handoff
            self._log.event("handoff.source_failed", partitions=partitions, error=str(exc))
            return
        plan = prefetch_plan(entries, partitions, max_bytes=self._max_bytes)
        deadline = started + self._max_s
        brought = copied = failed = 0
        for entry in plan:
            if self._stopping.is_set() or self._clock() >= deadline:
                break
            try:
                size = self._cache.prefetch(entry.url)
            except CacheError:  # gone, or unreadable: a request will say so
                failed += 1
                continue
            brought += size
            copied += size > 0
        self.prefetched_bytes += brought
        self._log.event(
            "handoff.prefetched",
            partitions=partitions,
            hot_entries=len(plan),
            objects=copied,
            bytes=brought,
            failed=failed,
            seconds=round(self._clock() - started, 3),
        )
