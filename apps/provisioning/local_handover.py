"""Warm deploys on one host: a stopped local worker's cache goes to its service's next
workers instead of being deleted. Django-free: the local supervisor uses it.

    {home}/caches/{service}/handover/{old worker}/   index/ and files/ of a stopped
                                                     worker's cache (local_layout.py)

The supervisor moves the folder there only while holding the cache's own lock file (the
flock every open cache holds: worker_daemon/cache/disk.py), which proves its worker has
closed the index: there is never a second writer. The service's workers, the running and
the next ones, see the handover folder read-only (MEMRUN_CACHE_HANDOVER_DIR) and copy what
they need into their own cache, after checking the object's current ETag
(worker_daemon/cache/handover.py). The move is a rename inside the service's caches
folder, which a running worker already sees: the cache is readable at its new place at
once, with no restart.
Handed-over caches are deleted `keep_s` after the handover: by then the new workers have
taken what they were asked for.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from pathlib import Path

from apps.provisioning.local_layout import CACHES_DIR, HANDOVER_DIR, LocalLayout, check_name

HANDOVER_KEEP_S = 600.0


def cache_hand_over(layout: LocalLayout, *, worker: str, service: str) -> Path | None:
    """Move `worker`'s cache of `service` into the service's handover folder; returns its
    new place, or None when there is none or its lock is still held (a live writer).
    A worker started before the per-service layout has its cache moved from its old place."""
    source = layout.cache_root(service, worker) / check_name(service)
    if not source.is_dir():
        source = layout.legacy_cache_dir(service, worker)
    lock = source / "lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        target = layout.handover_dir(service) / worker
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        os.rename(source, target)
        # The rename keeps the folder's mtime: stamp the handover time for the sweep.
        os.utime(target)
        return target
    finally:
        os.close(fd)


def handover_sweep(
    layout: LocalLayout, *, keep_s: float = HANDOVER_KEEP_S, now: float | None = None
) -> int:
    """Delete the handed-over caches older than `keep_s`; returns how many went. The
    handover folders of the layout before the per-service one go the same way."""
    now = time.time() if now is None else now
    folders: list[Path] = []
    with contextlib.suppress(OSError):
        folders += [p / HANDOVER_DIR for p in (layout.home / CACHES_DIR).iterdir()]
    with contextlib.suppress(OSError):
        folders += list(layout.legacy_handover_root.iterdir())
    removed = 0
    for folder in folders:
        with contextlib.suppress(OSError):
            for cache in folder.iterdir():
                if now - cache.stat().st_mtime > keep_s:
                    shutil.rmtree(cache, ignore_errors=True)
                    removed += 1
    return removed
