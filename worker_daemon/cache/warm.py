"""The warm cache facade: RAM -> local disk -> source, for one worker of one service.

The SDK's request context delegates here (`ctx.get_or_fetch`, `ctx.set_object`, ...).
Every method is thread-safe and synchronous; async handlers call it through
`asyncio.to_thread`.
"""

from __future__ import annotations

import errno
import mmap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError

from memrun.wire.hotsets import HotEntry
from worker_daemon import storage
from worker_daemon.cache.disk import DiskTier
from worker_daemon.cache.errors import (
    CacheError,
    DiskFull,
    ObjectChanged,
    ObjectNotFound,
    UnsupportedURL,
    UploadFailed,
)
from worker_daemon.cache.fetchers import FileSource, RemoteObject, S3Source, Source
from worker_daemon.cache.handover import HandoverPool, adopt
from worker_daemon.cache.hotset import HotSets, serving_partition
from worker_daemon.cache.index import IndexRecord
from worker_daemon.cache.objects import Decoded, MemoryTier, decoded_key, decoder_identity
from worker_daemon.cache.settings import CacheSettings
from worker_daemon.cache.singleflight import SingleFlight
from worker_daemon.cache.sizing import measure_size_bytes
from worker_daemon.cache.stats import CacheStats
from worker_daemon.cache.tiers import DISK, MEMORY, REMOTE, WAITED, Fetched, Tier

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
LARGEST_COUNT = 10
LARGEST_REFRESH_S = 10.0
LOCAL_SCHEMES = {"", "file"}


class WarmCache:
    """Objects in RAM, files on local disk, and cache-through reads of S3 and local files."""

    def __init__(
        self,
        settings: CacheSettings,
        *,
        disk: DiskTier,
        s3_client: S3Client | None,
        clock: Callable[[], float],
        handover: HandoverPool | None = None,
    ) -> None:
        self.settings = settings
        self._disk = disk
        self._memory = MemoryTier(settings.memory_budget_bytes)
        self._clock = clock
        self._stats = CacheStats()
        self._files: SingleFlight[tuple[IndexRecord, Tier]] = SingleFlight()
        self._decodes: SingleFlight[Fetched] = SingleFlight()
        self._s3_client = s3_client
        self._s3_source: S3Source | None = None
        self._s3_lock = threading.Lock()
        self._file_source = FileSource()
        self._handover = handover
        self._hot = HotSets()
        self._ranked: tuple[float | None, dict[str, list[dict[str, Any]]]] = (None, {})

    @classmethod
    def open(
        cls,
        settings: CacheSettings,
        *,
        s3_client: S3Client | None = None,
        clock: Callable[[], float] = time.time,
    ) -> WarmCache:
        """Open the cache under `settings.root/settings.service`, reconciling index and
        files left by an earlier process. `s3_client` defaults to one built for
        `settings.s3_endpoint_url` when the first s3:// URL is read."""
        disk = DiskTier.open(settings, clock=clock)
        handover = None
        if settings.handover_dir is not None or settings.peers_dir is not None:
            handover = HandoverPool(
                settings.handover_dir, peers_dir=settings.peers_dir, own=settings.service_dir
            )
        return cls(settings, disk=disk, s3_client=s3_client, clock=clock, handover=handover)

    # -- tier 1: named objects -------------------------------------------------------

    def set_object(self, name: str, obj: Any, *, size_bytes: int | None = None) -> None:
        """Keep `obj` under `name` for the worker's lifetime. Its size (declared, else
        measured) counts against the memory budget; named objects are never evicted."""
        size = measure_size_bytes(obj) if size_bytes is None else size_bytes
        self._memory.set_object(name, obj, size)

    def get_object(self, name: str, default: Any = None) -> Any:
        return self._memory.get_object(name, default)

    # -- the read path ---------------------------------------------------------------

    def get_or_fetch(
        self,
        url: str,
        *,
        decode: Callable[[Path], Any] | None = None,
        size_hint: int | None = None,
        revalidate: bool = False,
        max_age_s: float | None = None,
    ) -> Fetched:
        """The object at `url` as a local Path, or as `decode(path)` kept in RAM.

        Served from RAM (decoded values), else the local file, else downloaded once
        (concurrent callers share one download). A cached copy is served without asking
        the source until `max_age_s` (per call, else the service's) has passed since it
        was last confirmed, or when `revalidate` is set; a changed source is fetched
        again. `size_hint` is the decoded value's size in bytes (else it is measured).
        Raises CacheError subclasses naming the URL; `decode`'s own errors pass through.
        """
        key = None
        if decode is not None:
            key = decoded_key(url, decode)
            if not revalidate:
                entry = self._memory.get_decoded(key)
                if entry is not None:
                    limit = self.settings.max_age_s if max_age_s is None else max_age_s
                    if limit is None or self._clock() - entry.validated_at_s <= limit:
                        self._stats.served(MEMORY, entry.size_bytes)
                        partition = serving_partition.get()
                        if partition is not None:
                            self._hot.touched_again(partition, url, self._clock())
                        return entry.fetched
        try:
            record, tier = self._file(url, revalidate=revalidate, max_age_s=max_age_s)
        except CacheError:
            self._stats.failed()
            raise
        partition = serving_partition.get()
        if partition is not None:
            self._hot.touched(partition, url, record.size_bytes, record.version, self._clock())
        if decode is None or key is None:
            self._stats.served(tier, record.size_bytes)
            if tier is DISK:
                return self._disk.fetched_of(record)
            return Fetched(self._disk.path_of(record), tier)
        decoded_key_ = key
        return self._decodes.run(
            decoded_key_, lambda: self._decode(decoded_key_, record, tier, decode, size_hint)
        )

    def read_bytes(self, url: str, **options: Any) -> bytes:
        """The whole object as bytes (small objects only: this copies into RAM)."""
        return Path(self.get_or_fetch(url, **options).value).read_bytes()

    def open_file(self, url: str, **options: Any) -> IO[bytes]:
        """The object opened for binary reading; the handle stays valid after eviction."""
        return Path(self.get_or_fetch(url, **options).value).open("rb")

    def map_file(self, url: str, **options: Any) -> mmap.mmap:
        """The object mapped read-only (empty objects cannot be mapped: use read_bytes)."""
        with self.open_file(url, **options) as handle:
            return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)

    def prefetch(self, url: str) -> int:
        """Bring `url` to local disk ahead of any request for it, exactly as a miss would
        (revalidated against the source, copied from another cache on this host that
        holds the same version, else downloaded), single-flighted with requests for it:
        a request that needs it meanwhile waits for this copy, and neither fetches
        twice. Returns the bytes brought; 0 when it was here and current, or when a
        request brought it first. Raises CacheError subclasses as `get_or_fetch` does."""
        before = self._disk.peek(url)
        if before is not None and self._is_fresh(before.validated_at_s, None):
            return 0
        brought = 0

        def refresh() -> tuple[IndexRecord, Tier]:
            nonlocal brought
            start = self._disk.peek(url)
            record, tier = self._refresh(url, False, None)
            if start is None or start.file_name != record.file_name:
                brought = record.size_bytes
                self._stats.prefetched(brought, from_peer=tier is DISK)
            return record, tier

        self._files.run(url, refresh)
        return brought

    def connect_s3(self) -> None:
        """Build the S3 client now rather than on the first miss: it costs about a second
        of CPU, which a request for a moved key would otherwise wait for."""
        self._s3()

    def hot_sets(self) -> list[HotEntry]:
        """What each partition's requests read, most recent first (cache/hotset.py)."""
        return self._hot.snapshot()

    def _is_fresh(self, validated_at_s: float, max_age_s: float | None) -> bool:
        limit = self.settings.max_age_s if max_age_s is None else max_age_s
        return limit is None or self._clock() - validated_at_s <= limit

    def _file(
        self, url: str, *, revalidate: bool, max_age_s: float | None
    ) -> tuple[IndexRecord, Tier]:
        if not revalidate:
            record = self._disk.lookup(url)
            if record is not None and self._is_fresh(record.validated_at_s, max_age_s):
                return record, DISK
        led = False

        def refresh() -> tuple[IndexRecord, Tier]:
            nonlocal led
            led = True
            return self._refresh(url, revalidate, max_age_s)

        record, tier = self._files.run(url, refresh)
        # Only the call that ran the download fetched; the others waited on it.
        return record, (WAITED if tier is REMOTE and not led else tier)

    def _refresh(
        self, url: str, revalidate: bool, max_age_s: float | None
    ) -> tuple[IndexRecord, Tier]:
        """Runs once per URL at a time (single flight): confirm or download."""
        source = self._source_for(url)
        record = self._disk.peek(url)
        if (
            record is not None
            and not revalidate
            and self._is_fresh(record.validated_at_s, max_age_s)
        ):
            return record, DISK
        try:
            remote = source.stat(url)
        except ObjectNotFound:
            self._disk.drop(url)
            self._memory.drop_url(url)
            raise
        if record is not None:
            self._stats.revalidated()
            if remote.version == record.version:
                self._disk.mark_validated(url)
                return record, DISK
        adopted = None if self._handover is None else adopt(self._handover, self._disk, remote)
        if adopted is not None:
            self._stats.adopted(adopted.size_bytes)
            return adopted, DISK
        fresh = self._download(source, remote)
        if record is not None:
            # Values decoded from the old version must not outlive it.
            self._memory.drop_url(url)
        return fresh, REMOTE

    def _download(self, source: Source, remote: RemoteObject) -> IndexRecord:
        started = time.perf_counter()
        try:
            record = self._download_version(source, remote)
        except ObjectChanged:
            # Overwritten mid-download: start once more, on the new version.
            record = self._download_version(source, source.stat(remote.url))
        self._stats.fetched(time.perf_counter() - started, record.size_bytes)
        return record

    def _download_version(self, source: Source, remote: RemoteObject) -> IndexRecord:
        url = remote.url
        try:
            reservation = self._disk.reserve(url, remote.size_bytes)
        except OSError as exc:
            raise self._local_error(url, exc) from exc
        try:
            source.download(remote, reservation.fd)
        except OSError as exc:
            self._disk.abort(reservation)
            raise self._local_error(url, exc) from exc
        except BaseException:
            self._disk.abort(reservation)
            raise
        try:
            return self._disk.commit(url, reservation, version=remote.version)
        except OSError as exc:
            raise self._local_error(url, exc) from exc

    def _decode(
        self,
        key: tuple[str, Any],
        record: IndexRecord,
        tier: Tier,
        decode: Callable[[Path], Any],
        size_hint: int | None,
    ) -> Fetched:
        entry = self._memory.get_decoded(key)
        if entry is not None and entry.version == record.version:
            entry.validated_at_s = record.validated_at_s
            self._stats.served(MEMORY, entry.size_bytes)
            return entry.fetched
        value = decode(self._disk.path_of(record))
        size = measure_size_bytes(value) if size_hint is None else size_hint
        self._memory.put_decoded(
            key,
            Decoded(
                fetched=Fetched(value, MEMORY),
                version=record.version,
                validated_at_s=record.validated_at_s,
                size_bytes=size,
                decoder=decoder_identity(decode),
            ),
        )
        self._stats.served(tier, record.size_bytes)
        return Fetched(value, tier)

    def _source_for(self, url: str) -> Source:
        scheme = urlsplit(url).scheme
        if scheme == "s3":
            return self._s3()
        if scheme in LOCAL_SCHEMES:
            return self._file_source
        raise UnsupportedURL(
            f"{url}: the cache reads s3://bucket/key, file:///path and plain paths, not "
            f"{scheme}://; copy the object to S3 or give a local path",
            url=url,
        )

    def _s3(self) -> S3Source:
        with self._s3_lock:
            if self._s3_source is None:
                client = self._s3_client or storage.make_s3_client(
                    self.settings.s3_endpoint_url,
                    max_pool_connections=self.settings.download_concurrency + 4,
                )
                self._s3_client = client
                self._s3_source = S3Source(
                    client,
                    part_size_bytes=self.settings.download_part_size_bytes,
                    concurrency=self.settings.download_concurrency,
                    part_attempts=self.settings.download_part_attempts,
                )
            return self._s3_source

    def _local_error(self, url: str, exc: OSError) -> CacheError:
        if exc.errno in DISK_FULL_ERRNOS:
            return DiskFull(
                f"the disk under {self.settings.service_dir} is full while fetching {url}; "
                "free space there or lower the service's disk so the cache evicts sooner",
                url=url,
            )
        return CacheError(f"could not write {url} into the cache: {exc}", url=url)

    # -- results, stats, lifecycle ---------------------------------------------------

    def upload_result(self, data: bytes | str | Path, key: str) -> str:
        """Write `data` (bytes, text, or a file) as `key` under the service's results
        location and return its URL."""
        results = self.settings.results_url
        if not results:
            raise UploadFailed(
                f"no results location is configured for {key!r}; set MEMRUN_S3_BUCKET or "
                "MEMRUN_HOME"
            )
        try:
            url = storage.result_url(results, key)
            s3 = self._s3().client if url.startswith("s3://") else None
            storage.upload_result(data, url, s3=s3)
        except ValueError as exc:
            raise UploadFailed(f"{exc}", url=results) from exc
        except (ClientError, BotoCoreError, OSError) as exc:
            raise UploadFailed(
                f"could not upload result {key!r} under {results}: {exc}; check the "
                "storage server and that the worker may write there",
                url=results,
            ) from exc
        return url

    def stats(self) -> dict[str, Any]:
        """Counters and sizes of every tier, the biggest entries of each and the most
        requested files ("what is warm where", at most LARGEST_COUNT per list, refreshed
        every LARGEST_REFRESH_S since ranking reads every entry); JSON-able, for
        heartbeats."""
        out = self._stats.as_dict()
        counters = self._disk.counters
        out["memory"] = self._memory.snapshot()
        out["disk"] = {
            **self._disk.snapshot(),
            "evictions": counters.evictions,
            "evicted_bytes": counters.evicted_bytes,
            "inserts": counters.inserts,
            "inserted_bytes": counters.inserted_bytes,
            "index_evictions": counters.index_evictions,
            "reconciled": vars(counters.reconciled).copy(),
        }
        out["downloads_in_flight"] = self._files.in_flight()
        out["waiting_on_downloads"] = self._files.waiting()
        # Newest first, so that a heartbeat bounded in bytes keeps the hottest.
        out["hot_sets"] = [[e.partition, *e.to_wire()] for e in self._hot.snapshot()]
        out.update(self._ranked_entries())
        return out

    def _ranked_entries(self) -> dict[str, list[dict[str, Any]]]:
        """ "largest" (per tier) and "hottest" (disk files by hits), LARGEST_COUNT each."""
        now = self._clock()
        ranked_at, ranked = self._ranked
        if ranked_at is None or now - ranked_at >= LARGEST_REFRESH_S:
            largest = [
                {"tier": "memory", "name": name, "size_bytes": size}
                for name, size in self._memory.largest(LARGEST_COUNT)
            ] + [
                {"tier": "disk", "name": url, "size_bytes": size}
                for url, size in self._disk.largest(LARGEST_COUNT)
            ]
            hottest = [
                {"name": url, "size_bytes": size, "hits": hits, "last_access_s": last}
                for url, size, hits, last in self._disk.hottest(LARGEST_COUNT)
            ]
            ranked = {"largest": largest, "hottest": hottest}
            self._ranked = (now, ranked)
        return ranked

    def close(self) -> None:
        """Write pending index updates and release the cache folder."""
        with self._s3_lock:
            if self._s3_source is not None:
                self._s3_source.close()
        if self._handover is not None:
            self._handover.close()
        self._disk.close()
