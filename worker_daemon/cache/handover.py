"""Other caches of the same service on this host, read-only: warm deploys and warm moves.

Two kinds, both given by the local supervisor (apps/provisioning/local_handover.py):

- handed-over caches: when a worker has stopped, its supervisor moves its cache folder
  (index and files) into the service's handover folder, and only after taking the folder's
  lock, which proves no process writes it any more. The next workers read them.
- peers: the caches of the service's other running workers, whenever they started. A
  key that moves here (a scale-up, a rolling deploy) is usually still in its old owner's
  cache; copying it from there beats downloading it again.

Both are found by listing two folders (the handover folder, and the peers folder of the
service's cache roots, `<peers_dir>/<worker>/<service>/`), again at most every
RESCAN_INTERVAL_S, and on a miss at most every MISS_RESCAN_INTERVAL_S or when a peer
listed last time has left its place: a worker started after this one, or a cache handed
over a moment ago (a rename from the peers folder into the handover folder), is seen at
the next miss, never from a list fixed at start.

This worker never writes another worker's cache: its own index has one writer, itself.
On a miss, before downloading, the cache asks here. A copy is used only when the source's
current version (the HEAD a miss makes anyway) equals the version it was cached under and
its file has the recorded size; it is then copied into this worker's own cache like a
download (temp file, rename, index), so a crash half-way leaves a temp file that the next
start removes, and the other cache untouched. An object whose ETag changed is downloaded,
never served from the old copy.

Revalidating on first use rather than at adoption costs one HEAD per object actually
requested, which the miss path pays anyway; adopting eagerly would HEAD (and copy) the
whole old cache up front, most of which this worker may never be asked for.

A peer's index is live: it is read without LMDB's reader lock (its lock file is not ours
to write), one short read transaction per look-up. A page the peer rewrites meanwhile can
at worst make a look-up fail or name a file that is gone, and a named file is only used
after the checks above; files are never rewritten once published.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lmdb

from worker_daemon.cache.disk import DiskTier
from worker_daemon.cache.errors import CacheError
from worker_daemon.cache.fetchers import RemoteObject, copy_file
from worker_daemon.cache.index import IndexRecord, url_key

RESCAN_INTERVAL_S = 1.0
# On a miss: a listing of two small folders against the download the miss would make,
# bounded so that a burst of misses does not list them once each.
MISS_RESCAN_INTERVAL_S = 0.05


@dataclass(frozen=True)
class HandedOver:
    """A file in another cache, as that cache's index recorded it."""

    path: Path
    size_bytes: int
    version: str


class HandoverPool:
    """The handed-over caches under `root` (`root/<old worker>/`, each with `index/` and
    `files/`), newest first, then the live peers' caches (`peers_dir/<worker>/<service>/`,
    the service being `own`'s folder name; `own`, this worker's cache, is skipped).
    Thread-safe."""

    def __init__(
        self,
        root: Path | None,
        *,
        peers_dir: Path | None = None,
        own: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = root
        self._peers_dir = peers_dir
        self._own = own
        self._clock = clock
        self._lock = threading.Lock()
        self._handed_over: list[Path] = []
        self._live_peers: list[Path] = []
        self._envs: dict[Path, lmdb.Environment] = {}
        self._scanned_at: float | None = None

    def find(self, url: str) -> HandedOver | None:
        """The copy of `url` in another cache whose file is there with its recorded size."""
        key = url_key(url)
        folders = self._folders()
        found = self._find_in(folders, key, url)
        if found is None:
            # A peer that just stopped is handed over by renaming its folder: it is gone
            # from its old path before the next periodic rescan shows the new one, and
            # that is when its partitions move here (a rolling deploy). Likewise a worker
            # started since the last listing.
            again = self._folders(after_miss=True)
            if again != folders:
                found = self._find_in(again, key, url)
        return found

    def _find_in(self, folders: list[Path], key: bytes, url: str) -> HandedOver | None:
        for folder in folders:
            record = self._get(folder, key)
            if record is None or record.url != url:
                continue
            path = folder / "files" / record.file_name
            try:
                if path.stat().st_size == record.size_bytes:
                    return HandedOver(path, record.size_bytes, record.version)
            except OSError:
                continue
        return None

    def close(self) -> None:
        with self._lock:
            for env in self._envs.values():
                env.close()
            self._envs.clear()

    def _folders(self, *, after_miss: bool = False) -> list[Path]:
        now = self._clock()
        interval = MISS_RESCAN_INTERVAL_S if after_miss else RESCAN_INTERVAL_S
        with self._lock:
            # A live peer gone from its place was just handed over (renamed), the moment
            # its partitions move here: list again at once, whatever the interval.
            moved = after_miss and any(not p.is_dir() for p in self._live_peers)
            if moved or self._scanned_at is None or now - self._scanned_at >= interval:
                self._scanned_at = now
                self._handed_over = _newest_first(self.root)
                # A peer handed over since is read at its new place: its index must not
                # stay open under the old one too (one LMDB file, one env per process).
                self._live_peers = _peers(self._peers_dir, self._own)
                # A swept handover's map would keep its deleted file's space in use.
                for gone in set(self._envs) - {*self._handed_over, *self._live_peers}:
                    self._envs.pop(gone).close()
            return [*self._handed_over, *self._live_peers]

    def _get(self, folder: Path, key: bytes) -> IndexRecord | None:
        with self._lock:
            env = self._envs.get(folder)
            if env is None:
                env = _open_readonly(folder / "index")
                if env is None:
                    return None
                self._envs[folder] = env
            try:
                with env.begin(buffers=False) as txn:
                    raw = txn.get(key)
                return None if raw is None else IndexRecord.decode(bytes(raw))
            except lmdb.Error:
                # A peer's map grew, or the folder went: open it afresh next time.
                env.close()
                del self._envs[folder]
                return None
            except (ValueError, TypeError, KeyError):
                return None


def _newest_first(root: Path | None) -> list[Path]:
    if root is None:
        return []
    try:
        folders = [p for p in root.iterdir() if p.is_dir()]
        return sorted(folders, key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return []


def _peers(peers_dir: Path | None, own: Path | None) -> list[Path]:
    """The caches in `peers_dir` of the service `own` belongs to, but `own`."""
    if peers_dir is None or own is None:
        return []
    try:
        roots = sorted(peers_dir.iterdir())
    except OSError:
        return []
    return [cache for root in roots if (cache := root / own.name) != own and cache.is_dir()]


def _open_readonly(path: Path) -> lmdb.Environment | None:
    """An index opened read-only without LMDB's lock file (see the module's docstring)."""
    if not os.path.exists(path / "data.mdb"):
        return None
    try:
        return lmdb.open(str(path), readonly=True, lock=False, max_dbs=0, readahead=False)
    except lmdb.Error:
        return None


def adopt(pool: HandoverPool, disk: DiskTier, remote: RemoteObject) -> IndexRecord | None:
    """`remote` copied into `disk` from another cache that holds this very version (same
    ETag and size); None when none does, or the copy fails (then the caller downloads)."""
    entry = pool.find(remote.url)
    if entry is None or (entry.version, entry.size_bytes) != (remote.version, remote.size_bytes):
        return None
    try:
        reservation = disk.reserve(remote.url, remote.size_bytes)
    except (OSError, CacheError):
        return None
    try:
        src = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            copied = copy_file(src, reservation.fd, remote.size_bytes)
        finally:
            os.close(src)
    except OSError:
        copied = -1  # gone since it was found (evicted, or swept): download instead
    except BaseException:
        disk.abort(reservation)
        raise
    if copied != remote.size_bytes:
        disk.abort(reservation)
        return None
    try:
        return disk.commit(remote.url, reservation, version=remote.version)
    except OSError:
        return None
