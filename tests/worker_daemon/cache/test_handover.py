"""Warm deploys: a stopped worker's cache handed over to the next worker of its service.

Real s3proxy for the ETag checks; a forked child killed with SIGKILL mid-adoption for the
crash check. The handover itself is the local supervisor's (apps/provisioning/
local_handover.py, Django-free): it moves a cache only once its lock is free.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from apps.provisioning.local_handover import cache_hand_over, handover_sweep
from apps.provisioning.local_layout import LocalLayout
from tests.fixtures.services import S3Settings, make_s3_client
from tests.worker_daemon.cache.conftest import GetCounter, content_of
from tests.worker_daemon.cache.test_crash_safety import assert_index_and_files_agree
from worker_daemon.cache import CacheSettings, Tier, WarmCache

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MiB = 2**20


def worker_settings(home: Path, worker: str, *, handover: bool = True) -> CacheSettings:
    """The cache settings the local supervisor gives `worker` of service `svc`."""
    layout = LocalLayout(home)
    return CacheSettings(
        root=layout.cache_root("svc", worker),
        service="svc",
        capacity_bytes=64 * MiB,
        memory_budget_bytes=0,
        download_part_size_bytes=MiB,
        handover_dir=layout.handover_dir("svc") if handover else None,
        peers_dir=layout.peers_dir("svc") if handover else None,
    )


def test_a_cache_is_handed_over_only_once_its_worker_closed_it(tmp_path: Path) -> None:
    layout = LocalLayout(tmp_path)
    source = tmp_path / "a.bin"
    source.write_bytes(b"x" * 1000)
    old = WarmCache.open(worker_settings(tmp_path, "w-old"))
    old.get_or_fetch(str(source))

    assert cache_hand_over(layout, worker="w-old", service="svc") is None  # still open
    assert not (layout.handover_dir("svc") / "w-old").exists()
    old.close()
    moved = cache_hand_over(layout, worker="w-old", service="svc")

    assert moved == layout.handover_dir("svc") / "w-old"
    assert not (layout.cache_root("svc", "w-old") / "svc").exists()
    assert len(list((moved / "files").iterdir())) == 1


def test_the_new_worker_adopts_unchanged_objects_and_refetches_changed_ones(
    tmp_path: Path,
    s3_object: Callable[..., str],
    s3_client: S3Client,
    counted_s3: tuple[S3Client, GetCounter],
) -> None:
    same = s3_object("same.bin", content_of("same", 3 * MiB))
    changed = s3_object("changed.bin", content_of("v1", 2 * MiB))
    old = WarmCache.open(worker_settings(tmp_path, "w-old"), s3_client=s3_client)
    for url in (same, changed):
        old.get_or_fetch(url)
    old.close()
    assert cache_hand_over(LocalLayout(tmp_path), worker="w-old", service="svc")
    # The object changes between the versions: its ETag with it.
    bucket, key = changed.removeprefix("s3://").split("/", 1)
    s3_client.put_object(Bucket=bucket, Key=key, Body=content_of("v2", 2 * MiB))

    client, calls = counted_s3
    new = WarmCache.open(worker_settings(tmp_path, "w-new"), s3_client=client)
    try:
        kept = new.get_or_fetch(same)
        fresh = new.get_or_fetch(changed)

        assert kept.tier is Tier.DISK
        assert Path(kept.value).read_bytes() == content_of("same", 3 * MiB)
        assert fresh.tier is Tier.REMOTE
        assert Path(fresh.value).read_bytes() == content_of("v2", 2 * MiB)
        stats = new.stats()
        assert (stats["adopted"], stats["adopted_bytes"]) == (1, 3 * MiB)
        assert (stats["fetches"], stats["fetched_bytes"]) == (1, 2 * MiB)
        assert calls.gets >= 1 and calls.heads == 2  # one HEAD each, a GET for the new one
        # Adopted into its own cache: served from there from now on, without the pool.
        assert new.get_or_fetch(same).tier is Tier.DISK
    finally:
        new.close()


def test_a_vanished_handed_over_file_is_downloaded_instead(tmp_path: Path) -> None:
    source = tmp_path / "a.bin"
    source.write_bytes(b"a" * 5000)
    old = WarmCache.open(worker_settings(tmp_path, "w-old"))
    old.get_or_fetch(str(source))
    old.close()
    moved = cache_hand_over(LocalLayout(tmp_path), worker="w-old", service="svc")
    assert moved is not None
    for path in (moved / "files").iterdir():
        path.unlink()

    new = WarmCache.open(worker_settings(tmp_path, "w-new"))
    try:
        assert new.get_or_fetch(str(source)).tier is Tier.REMOTE
        assert new.stats()["adopted"] == 0
    finally:
        new.close()


def test_the_sweep_removes_only_old_handovers(tmp_path: Path) -> None:
    layout = LocalLayout(tmp_path)
    for name in ("w-1", "w-2"):
        (layout.handover_dir("svc") / name).mkdir(parents=True)
    os.utime(layout.handover_dir("svc") / "w-1", (time.time() - 700, time.time() - 700))

    assert handover_sweep(layout, keep_s=600) == 1
    assert [p.name for p in layout.handover_dir("svc").iterdir()] == ["w-2"]


def adopt_forever(settings: CacheSettings, sources: list[Path], step_fd: int) -> None:
    cache = WarmCache.open(settings)
    for source in sources:
        cache.get_or_fetch(str(source))
        os.write(step_fd, b".")
    os._exit(0)


def snapshot(folder: Path) -> dict[str, int]:
    return {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "lock.mdb"
    }


def test_kill_9_during_adoption_leaves_both_caches_consistent(tmp_path: Path) -> None:
    sources = []
    for index in range(24):
        path = tmp_path / "sources" / f"obj{index}"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content_of(path.name, MiB + index * 4096))
        sources.append(path)
    old = WarmCache.open(worker_settings(tmp_path, "w-old"))
    for source in sources:
        old.get_or_fetch(str(source))
    old.close()
    moved = cache_hand_over(LocalLayout(tmp_path), worker="w-old", service="svc")
    assert moved is not None
    before = snapshot(moved)
    new_settings = worker_settings(tmp_path, "w-new")

    for kill_after in (1, 5, 11):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(read_fd)
                adopt_forever(new_settings, sources, write_fd)
            finally:
                os._exit(1)
        os.close(write_fd)
        for _ in range(kill_after):
            assert os.read(read_fd, 1) == b"."
        os.kill(pid, signal.SIGKILL)
        os.close(read_fd)
        os.waitpid(pid, 0)

        reopened = WarmCache.open(new_settings)
        reopened.close()
        assert_index_and_files_agree(new_settings)
        assert snapshot(moved) == before  # the handed-over cache is never written

    new = WarmCache.open(new_settings)
    try:
        tiers = [new.get_or_fetch(str(s)).tier for s in sources]
        assert set(tiers) == {Tier.DISK}  # adopted before the kills, or adopted now
    finally:
        new.close()
    assert_index_and_files_agree(new_settings)


def serve_as_peer(settings: CacheSettings, urls: list[str], s3: S3Settings) -> tuple[int, int, int]:
    """A forked peer worker (LMDB allows one open of an index per process) that caches
    `urls`, says so on a pipe, and keeps its cache open until the other pipe closes."""
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            os.close(done_w)
            cache = WarmCache.open(settings, s3_client=make_s3_client(s3))
            for url in urls:
                cache.get_or_fetch(url)
            os.write(ready_w, b".")
            os.read(done_r, 1)
            cache.get_or_fetch(urls[0], revalidate=True)  # it keeps writing its own index
            cache.close()
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(done_r)
    return pid, ready_r, done_w


def test_a_key_moved_from_a_live_peer_is_copied_from_its_cache(
    tmp_path: Path, s3_object: Callable[..., str], s3_client: S3Client, s3_settings: S3Settings
) -> None:
    url = s3_object("moved.bin", content_of("moved.bin", 2 * MiB))
    peer_settings = worker_settings(tmp_path, "w-peer", handover=False)
    pid, ready, done = serve_as_peer(peer_settings, [url], s3_settings)
    assert os.read(ready, 1) == b"."
    new = WarmCache.open(worker_settings(tmp_path, "w-new"), s3_client=s3_client)
    try:
        fetched = new.get_or_fetch(url)
        assert fetched.tier is Tier.DISK
        assert Path(fetched.value).read_bytes() == content_of("moved.bin", 2 * MiB)
        assert (new.stats()["adopted"], new.stats()["fetches"]) == (1, 0)
    finally:
        new.close()
        os.close(done)
        os.close(ready)
        _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert_index_and_files_agree(peer_settings)


def test_a_peer_started_later_and_then_handed_over_is_read_at_both_places(
    tmp_path: Path, s3_object: Callable[..., str], s3_client: S3Client, s3_settings: S3Settings
) -> None:
    first = s3_object("first.bin", content_of("first.bin", MiB))
    second = s3_object("second.bin", content_of("second.bin", MiB))
    # The older worker opens its cache, and lists the service's caches on a miss, before
    # the peer exists.
    new = WarmCache.open(worker_settings(tmp_path, "w-new"), s3_client=s3_client)
    local = tmp_path / "local.bin"
    local.write_bytes(b"l" * 1000)
    try:
        assert new.get_or_fetch(str(local)).tier is Tier.REMOTE
        peer_settings = worker_settings(tmp_path, "w-peer", handover=False)
        pid, ready, done = serve_as_peer(peer_settings, [first, second], s3_settings)
        assert os.read(ready, 1) == b"."
        # The peer's cache is read where it lives while the peer runs...
        assert new.get_or_fetch(first).tier is Tier.DISK
        os.close(done)
        os.close(ready)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        # ...and at its new place once it stopped and was handed over.
        moved = cache_hand_over(LocalLayout(tmp_path), worker="w-peer", service="svc")
        assert moved == LocalLayout(tmp_path).handover_dir("svc") / "w-peer"
        assert new.get_or_fetch(second).tier is Tier.DISK
        stats = new.stats()
        assert (stats["adopted"], stats["fetches"]) == (2, 1)  # the one fetch: local.bin
    finally:
        new.close()
