"""Warm deploys on one host: a stopped local worker's cache goes to its service's next
workers instead of being deleted. Django-free: the local supervisor uses it.

    {home}/handover/{service}/{old worker}/   index/ and files/ of a stopped worker's cache

The supervisor moves the folder there only while holding the cache's own lock file (the
flock every open cache holds: worker_daemon/cache/disk.py), which proves its worker has
closed the index: there is never a second writer. New workers of the service see the
handover folder read-only (MEMRUN_CACHE_HANDOVER_DIR) and copy what they need into their
own cache, after checking the object's current ETag (worker_daemon/cache/handover.py).
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

from apps.provisioning.local_layout import LocalLayout, check_name

HANDOVER_KEEP_S = 600.0


def cache_hand_over(layout: LocalLayout, *, worker: str, service: str) -> Path | None:
    """Move `worker`'s cache of `service` into the service's handover folder; returns its
    new place, or None when there is none or its lock is still held (a live writer)."""
    source = layout.worker_dir(worker) / "cache" / check_name(service)
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
    """Delete the handed-over caches older than `keep_s`; returns how many went."""
    root = layout.home / "handover"
    if not root.is_dir():
        return 0
    now = time.time() if now is None else now
    removed = 0
    for service in root.iterdir():
        with contextlib.suppress(OSError):
            for cache in service.iterdir():
                if now - cache.stat().st_mtime > keep_s:
                    shutil.rmtree(cache, ignore_errors=True)
                    removed += 1
    return removed
