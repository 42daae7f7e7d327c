"""Tier 2: cached files on local disk, bounded by a byte capacity.

Owns the payload files, their LMDB index and the eviction policy, and keeps them
agreeing: write temp -> fsync -> rename -> index; evict index -> file. A hit costs a
dict lookup under a lock; access times reach the index lazily (with the next write, and
at close), so after a crash the LRU order is at worst a little stale.
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker_daemon.cache.errors import CacheError, CacheFull
from worker_daemon.cache.index import Index, IndexFull, IndexRecord, remove_moved_aside
from worker_daemon.cache.payloads import PayloadStore
from worker_daemon.cache.policy import SegmentedLru
from worker_daemon.cache.settings import CacheSettings
from worker_daemon.cache.tiers import DISK, Fetched

# An index entry's bytes beyond its URL: key, JSON fields, LMDB node header (generous).
INDEX_BYTES_PER_ENTRY = 256


@dataclass
class Reconciled:
    """What the start-up check found and repaired."""

    temp_files_removed: int = 0
    entries_dropped: int = 0
    orphans_removed: int = 0
    index_moved_aside: str | None = None


@dataclass
class DiskCounters:
    evictions: int = 0
    evicted_bytes: int = 0
    inserts: int = 0
    inserted_bytes: int = 0
    index_evictions: int = 0
    reconciled: Reconciled = field(default_factory=Reconciled)


@dataclass
class Reservation:
    """Room held for one download in flight, and its temp file."""

    size_bytes: int
    fd: int
    temp: Path


class DiskTier:
    """The files of one service's cache. Thread-safe; one process per folder (flock)."""

    def __init__(
        self,
        settings: CacheSettings,
        *,
        index: Index,
        payloads: PayloadStore,
        lock_fd: int,
        clock: Callable[[], float],
    ) -> None:
        self._settings = settings
        self._index = index
        self._payloads = payloads
        self._lock_fd = lock_fd
        self._clock = clock
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._records: dict[str, IndexRecord] = {}
        self._fetched: dict[str, Fetched] = {}
        self._dirty: set[str] = set()
        self._policy = SegmentedLru(
            capacity_bytes=settings.capacity_bytes,
            probation_fraction=settings.probation_fraction,
            ghost_entries=settings.ghost_entries,
        )
        self._used_bytes = 0
        self._reserved_bytes = 0
        # LMDB cannot even delete once its map is full (copy-on-write needs free pages), so
        # entries are held to an eighth of the largest map: half-full pages after splits,
        # and a transaction may copy every page it touches.
        self._index_bytes = 0
        self._index_budget_bytes = settings.index_max_map_size_bytes // 8
        self.counters = DiskCounters()
        self._closed = False

    @classmethod
    def open(cls, settings: CacheSettings, *, clock: Callable[[], float]) -> DiskTier:
        """Open (creating) the cache folder and reconcile index and files after a crash."""
        service_dir = settings.service_dir
        service_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = _lock_folder(service_dir)
        try:
            index_path = service_dir / "index"
            index, aside = Index.open(
                index_path,
                map_size_bytes=settings.index_map_size_bytes,
                max_map_size_bytes=settings.index_max_map_size_bytes,
            )
            remove_moved_aside(index_path)
            tier = cls(
                settings,
                index=index,
                payloads=PayloadStore(service_dir),
                lock_fd=lock_fd,
                clock=clock,
            )
            tier.counters.reconciled.index_moved_aside = str(aside) if aside else None
            tier._reconcile()
        except BaseException:
            os.close(lock_fd)
            raise
        return tier

    def _reconcile(self) -> None:
        found = self.counters.reconciled
        found.temp_files_removed = self._payloads.clear_temps()
        sizes = self._payloads.sizes()
        good: list[IndexRecord] = []
        bad: list[IndexRecord] = []
        for record in self._index.records():
            (good if sizes.get(record.file_name) == record.size_bytes else bad).append(record)
        if bad:
            self._index.write(delete=[r.url for r in bad])
        found.entries_dropped = len(bad)
        referenced = {r.file_name for r in good}
        for name in sizes.keys() - referenced:
            self._payloads.remove(name)
            found.orphans_removed += 1
        for record in sorted(good, key=lambda r: r.last_access_s):
            self._records[record.url] = record
            self._policy.add(record.url, record.size_bytes, protected=record.protected)
            self._used_bytes += record.size_bytes
            self._index_bytes += _index_bytes_of(record.url)
        with self._cond:
            self._evict_until_fits(0, incoming_protected=True, incoming_index_bytes=0)

    def lookup(self, url: str) -> IndexRecord | None:
        """The record of `url` if cached, marked as just used; else None."""
        with self._lock:
            record = self._records.get(url)
            if record is None:
                return None
            self._policy.touch(url)
            record.protected = True
            record.last_access_s = self._clock()
            record.hits += 1
            self._dirty.add(url)
            return record

    def peek(self, url: str) -> IndexRecord | None:
        """The record of `url` without counting an access."""
        with self._cond:
            return self._records.get(url)

    def path_of(self, record: IndexRecord) -> Path:
        return self.fetched_of(record).value  # type: ignore[no-any-return]

    def fetched_of(self, record: IndexRecord) -> Fetched:
        """`Fetched(path, DISK)` for `record`. Kept per file: building a Path and a frozen
        dataclass costs microseconds, more than the rest of a hit."""
        fetched = self._fetched.get(record.file_name)
        if fetched is None:
            path = self._payloads.path_for(record.file_name)
            fetched = self._fetched[record.file_name] = Fetched(path, DISK)
        return fetched

    def reserve(self, url: str, size_bytes: int) -> Reservation:
        """Make room for `size_bytes`, evicting as needed, and open a temp file that size.

        Waits while downloads in flight hold the room it needs. Raises CacheFull when
        the object can never fit, OSError (ENOSPC) when the filesystem is full.
        """
        capacity = self._settings.capacity_bytes
        if size_bytes > capacity:
            raise CacheFull(
                f"{url} is {size_bytes} bytes, more than the whole cache ({capacity} bytes); "
                "raise the service's disk or read the object in ranges yourself",
                url=url,
            )
        with self._cond:
            incoming_protected = self._policy.is_ghost(url) or self._policy.is_protected(url)
            index_bytes = 0 if url in self._records else _index_bytes_of(url)
            while True:
                self._evict_until_fits(
                    size_bytes,
                    incoming_protected=incoming_protected,
                    incoming_index_bytes=index_bytes,
                )
                if self._used_bytes + self._reserved_bytes + size_bytes <= capacity:
                    self._reserved_bytes += size_bytes
                    break
                self._cond.wait()
        try:
            fd, temp = self._payloads.create_temp(size_bytes)
        except BaseException:
            self._release(size_bytes)
            raise
        return Reservation(size_bytes=size_bytes, fd=fd, temp=temp)

    def abort(self, reservation: Reservation) -> None:
        """Drop a download that failed before `commit`: its temp file and its room."""
        with contextlib.suppress(OSError):
            os.close(reservation.fd)
        self._payloads.discard_temp(reservation.temp)
        self._release(reservation.size_bytes)

    def commit(self, url: str, reservation: Reservation, *, version: str) -> IndexRecord:
        """Publish a finished download as the cached copy of `url` (replacing any older).

        Takes the reservation over: on failure it has already removed the file and
        released the room (do not `abort` it).
        """
        try:
            name = self._payloads.publish(reservation.fd, reservation.temp)
        except BaseException:
            self._release(reservation.size_bytes)
            raise
        now = self._clock()
        record = IndexRecord(
            url=url,
            file_name=name,
            size_bytes=reservation.size_bytes,
            version=version,
            fetched_at_s=now,
            validated_at_s=now,
            last_access_s=now,
        )
        with self._cond:
            old = self._records.get(url)
            try:
                self._write_index_locked(put=[record])
            except BaseException:
                self._payloads.remove(name)
                self._reserved_bytes -= reservation.size_bytes
                self._cond.notify_all()
                raise
            keep_segment: bool | None = None
            if old is not None:
                keep_segment = self._policy.is_protected(url)
                self._policy.remove(url)
                self._used_bytes -= old.size_bytes
                self._index_bytes -= _index_bytes_of(url)
            record.protected = self._policy.add(url, record.size_bytes, protected=keep_segment)
            self._records[url] = record
            self._used_bytes += record.size_bytes
            self._index_bytes += _index_bytes_of(url)
            self._reserved_bytes -= reservation.size_bytes
            self.counters.inserts += 1
            self.counters.inserted_bytes += record.size_bytes
            self._cond.notify_all()
        if old is not None:
            self._fetched.pop(old.file_name, None)
            self._payloads.remove(old.file_name)
        return record

    def mark_validated(self, url: str) -> None:
        """Record that the source confirmed the cached copy of `url` is current."""
        with self._cond:
            record = self._records.get(url)
            if record is not None:
                record.validated_at_s = self._clock()
                self._dirty.add(url)

    def drop(self, url: str) -> None:
        """Forget the cached copy of `url` (its source no longer has it)."""
        with self._cond:
            record = self._records.get(url)
            if record is None:
                return
            self._write_index_locked(delete=[url])
            self._forget_locked(record, evicted=False)
        self._payloads.remove(record.file_name)

    def close(self) -> None:
        """Write pending updates and release the folder; later calls do nothing."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(CacheError):
                self._write_index_locked()
            self._index.close()
            os.close(self._lock_fd)

    def snapshot(self) -> dict[str, Any]:
        with self._cond:
            return {
                "entries": len(self._records),
                "used_bytes": self._used_bytes,
                "reserved_bytes": self._reserved_bytes,
                "capacity_bytes": self._settings.capacity_bytes,
                "probation_bytes": self._policy.probation_bytes,
                "protected_bytes": self._policy.protected_bytes,
                # A closed index has no map to measure (the final heartbeat reads this).
                "index_map_size_bytes": 0 if self._closed else self._index.map_size_bytes(),
            }

    def largest(self, count: int) -> list[tuple[str, int]]:
        """The `count` biggest cached files as (url, size in bytes), biggest first."""
        with self._cond:
            records = list(self._records.values())  # one C-level copy under the lock
        biggest = heapq.nlargest(count, records, key=lambda record: record.size_bytes)
        return [(record.url, record.size_bytes) for record in biggest]

    def hottest(self, count: int) -> list[tuple[str, int, int, float]]:
        """The `count` most requested cached files as (url, size in bytes, hits, last
        access), most hits first, the more recent first among equals."""
        with self._cond:
            records = list(self._records.values())
        hot = heapq.nlargest(count, records, key=lambda r: (r.hits, r.last_access_s))
        return [(r.url, r.size_bytes, r.hits, r.last_access_s) for r in hot]

    def _release(self, size_bytes: int) -> None:
        with self._cond:
            self._reserved_bytes -= size_bytes
            self._cond.notify_all()

    def _evict_until_fits(
        self, size_bytes: int, *, incoming_protected: bool, incoming_index_bytes: int
    ) -> None:
        capacity = self._settings.capacity_bytes
        victims: list[IndexRecord] = []
        incoming = 0 if incoming_protected else size_bytes
        while True:
            files_over = self._used_bytes + self._reserved_bytes + size_bytes > capacity
            index_over = self._index_bytes + incoming_index_bytes > self._index_budget_bytes
            if not (files_over or index_over):
                break
            url = self._policy.next_victim(incoming_probation_bytes=incoming)
            if url is None:
                break
            victim = self._records[url]
            self._forget_locked(victim, evicted=True)
            victims.append(victim)
            if not files_over:
                self.counters.index_evictions += 1
        self._remove_locked(victims)

    def _remove_locked(self, victims: list[IndexRecord]) -> None:
        if not victims:
            return
        self._write_index_locked(delete=[v.url for v in victims])
        for victim in victims:
            self._payloads.remove(victim.file_name)

    def _forget_locked(self, record: IndexRecord, *, evicted: bool) -> None:
        del self._records[record.url]
        self._fetched.pop(record.file_name, None)
        self._dirty.discard(record.url)
        self._used_bytes -= record.size_bytes
        self._index_bytes -= _index_bytes_of(record.url)
        if evicted:
            self._policy.evict(record.url)
            self.counters.evictions += 1
            self.counters.evicted_bytes += record.size_bytes
        else:
            self._policy.remove(record.url)

    def _write_index_locked(
        self, *, put: list[IndexRecord] | None = None, delete: list[str] | None = None
    ) -> None:
        """One index transaction carrying `put`, `delete` and the pending access updates.

        Should the map fill up all the same, the changes go one per transaction (small
        ones fit where a big one does not), evicting least recently used entries to make
        room for `put`; pending access updates are best effort and may be dropped.
        """
        pending = [self._records[url] for url in self._dirty if url in self._records]
        self._dirty.clear()
        try:
            self._index.write(put=[*pending, *(put or [])], delete=delete or [])
        except IndexFull:
            for url in delete or []:
                self._delete_entry_locked(url)
            for record in put or []:
                self._put_entry_locked(record)

    def _delete_entry_locked(self, url: str) -> None:
        # An entry whose delete does not fit names a file that is gone by then; the next
        # start drops it.
        with contextlib.suppress(IndexFull):
            self._index.write(delete=[url])

    def _put_entry_locked(self, record: IndexRecord) -> None:
        while True:
            try:
                self._index.write(put=[record])
                return
            except IndexFull:
                url = self._policy.next_victim(incoming_probation_bytes=0)
                if url is None or url == record.url:
                    raise CacheError(
                        "the cache index is full and nothing is left to evict; raise "
                        "index_max_map_size_bytes",
                        url=record.url,
                    ) from None
                victim = self._records[url]
                self._forget_locked(victim, evicted=True)
                self.counters.index_evictions += 1
                self._delete_entry_locked(url)
                self._payloads.remove(victim.file_name)


def _index_bytes_of(url: str) -> int:
    return len(url.encode()) + INDEX_BYTES_PER_ENTRY


def _lock_folder(service_dir: Path) -> int:
    fd = os.open(service_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise CacheError(
            f"the cache folder {service_dir} is in use by another process; give each "
            "worker its own cache root"
        ) from None
    return fd
