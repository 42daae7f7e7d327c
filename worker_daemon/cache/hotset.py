"""Hot sets: what each partition's requests read, handed to the partition's next owner.

A worker serving partition P records every object its requests on P read (URL, size,
ETag, when). When P moves to another worker (a scale-up, a replacement, a rolling deploy
on another host), the old owner's hot set of P is what the new owner prefetches, so the
first request for a moved key finds it on disk instead of waiting on S3
(worker_daemon/handoff.py; the hot sets travel in heartbeats through the control plane).

Which partition a read is for comes from `partition_scope`, which the request pipeline
sets around each handler call: a context variable, so it follows a sync handler on its
pool thread and an async one into its tasks (as `logs.request_scope` does). Reads outside
a request (init handlers) belong to no partition and are not recorded.

Bounded: at most `per_partition` URLs per partition (least recently read dropped first)
and `partitions_max` partitions. A hot entry is a hint: its ETag and size are what the
old owner saw; the new owner revalidates against the source before it uses any copy.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from memrun.wire.hotsets import URL_MAX_CHARS, HotEntry

HOT_PER_PARTITION = 32
HOT_PARTITIONS_MAX = 1024

serving_partition: ContextVar[int | None] = ContextVar("memrun_serving_partition", default=None)


@contextmanager
def partition_scope(partition: int) -> Iterator[None]:
    """Within: reads through the cache are recorded in `partition`'s hot set."""
    token = serving_partition.set(partition)
    try:
        yield
    finally:
        serving_partition.reset(token)


class HotSets:
    """Per partition, the most recently read URLs with their size and version. Thread-safe."""

    def __init__(
        self, *, per_partition: int = HOT_PER_PARTITION, partitions_max: int = HOT_PARTITIONS_MAX
    ) -> None:
        self._per_partition = per_partition
        self._partitions_max = partitions_max
        self._lock = threading.Lock()
        self._sets: OrderedDict[int, OrderedDict[str, tuple[int, str, float]]] = OrderedDict()

    def touched(
        self, partition: int, url: str, size_bytes: int, version: str, now_s: float
    ) -> None:
        """`url` (of `size_bytes`, at `version`) was read for `partition` at `now_s`."""
        if len(url) > URL_MAX_CHARS:
            return  # a hint this long is not worth a heartbeat's bytes
        with self._lock:
            hot = self._sets.get(partition)
            if hot is None:
                hot = self._sets[partition] = OrderedDict()
                while len(self._sets) > self._partitions_max:
                    self._sets.popitem(last=False)
            else:
                self._sets.move_to_end(partition)
            hot[url] = (size_bytes, version, now_s)
            hot.move_to_end(url)
            while len(hot) > self._per_partition:
                hot.popitem(last=False)

    def touched_again(self, partition: int, url: str, now_s: float) -> None:
        """`url`, already in `partition`'s hot set, was read again (a RAM hit, which knows
        no file size or version)."""
        with self._lock:
            hot = self._sets.get(partition)
            known = None if hot is None else hot.get(url)
            if hot is not None and known is not None:
                hot[url] = (known[0], known[1], now_s)
                hot.move_to_end(url)

    def snapshot(self) -> list[HotEntry]:
        """Every entry, most recently read first."""
        with self._lock:
            entries = [
                HotEntry(partition, url, size, version, last)
                for partition, hot in self._sets.items()
                for url, (size, version, last) in hot.items()
            ]
        entries.sort(key=lambda e: e.last_access_s, reverse=True)
        return entries
