"""kill -9 at random points of fetch, replace and evict; after restart index and files agree.

Each victim is a forked child (a real process, started in milliseconds) that fetches,
evicts and refetches local files in a loop, checks every file it is handed in full, and
writes one byte to a pipe per finished step. The parent kills it after a random number
of steps, then reopens the cache and checks it.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.worker_daemon.cache.conftest import content_of
from worker_daemon.cache import CacheSettings, Tier, WarmCache
from worker_daemon.cache.index import Index

ITERATIONS = 40
MiB = 2**20
CAPACITY_BYTES = 8 * MiB
PARTIAL_FILE_EXIT = 3


def fetch_forever(settings: CacheSettings, sources: list[Path], seed: int, step_fd: int) -> None:
    """The child's loop; a 20% share of calls bump the source's mtime (a new version) and
    revalidate, so the cached file is replaced."""
    cache = WarmCache.open(settings)
    rng = random.Random(seed)
    for step in range(10**9):
        source = rng.choice(sources)
        revalidate = rng.random() < 0.2
        if revalidate:
            os.utime(source, ns=(step, step + 10**9 * (seed + 1)))
        path = cache.get_or_fetch(str(source), revalidate=revalidate).value
        if path.read_bytes() != content_of(source.name, source.stat().st_size):
            os._exit(PARTIAL_FILE_EXIT)
        os.write(step_fd, b".")


def start_child(settings: CacheSettings, sources: list[Path], seed: int) -> tuple[int, int]:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            fetch_forever(settings, sources, seed, write_fd)
        finally:
            os._exit(1)
    os.close(write_fd)
    return pid, read_fd


def assert_index_and_files_agree(settings: CacheSettings) -> None:
    """Every entry names a complete file of the right content, and nothing else is there."""
    index, aside = Index.open(
        settings.service_dir / "index", map_size_bytes=2**20, max_map_size_bytes=2**30
    )
    try:
        records = index.records()
    finally:
        index.close()
    assert aside is None
    files = {p.name: p for p in (settings.service_dir / "files").iterdir()}
    assert sorted(files) == sorted(r.file_name for r in records)
    assert list((settings.service_dir / "tmp").iterdir()) == []
    assert sum(r.size_bytes for r in records) <= settings.capacity_bytes
    for record in records:
        data = files[record.file_name].read_bytes()
        assert len(data) == record.size_bytes
        assert data == content_of(Path(record.url).name, record.size_bytes)


@pytest.mark.slow
def test_kill_9_during_fetch_and_eviction_never_leaves_a_partial_or_orphan_file(
    source_file: Callable[[str, int], Path], tmp_path: Path
) -> None:
    rng = random.Random(20240601)
    sources = [source_file(f"obj{i}", rng.randint(MiB // 2, 3 * MiB)) for i in range(16)]
    settings = CacheSettings(
        root=tmp_path / "cache",
        service="svc",
        capacity_bytes=CAPACITY_BYTES,
        memory_budget_bytes=0,
    )
    repairs = []
    for iteration in range(ITERATIONS):
        pid, steps = start_child(settings, sources, iteration)
        for _ in range(rng.randint(0, 12)):
            assert os.read(steps, 1) == b".", "the child ended early"
        # Not a wait for anything: a random point inside the next step (about 15 ms) to
        # kill at, so kills land in copies, renames, index writes and evictions alike.
        time.sleep(rng.uniform(0, 0.02))
        os.kill(pid, signal.SIGKILL)
        os.close(steps)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL

        cache = WarmCache.open(settings)
        repairs.append(cache.stats()["disk"]["reconciled"])
        cache.close()
        assert_index_and_files_agree(settings)
    # With ~15 ms steps most kills land mid-write; none at all would mean the test
    # only ever killed an idle process.
    assert any(r["temp_files_removed"] or r["orphans_removed"] for r in repairs)

    cache = WarmCache.open(settings)
    try:
        tiers = {cache.get_or_fetch(str(s)).tier for s in sources}
        assert tiers <= {Tier.DISK, Tier.REMOTE}
    finally:
        cache.close()
    assert_index_and_files_agree(settings)
    print("repairs after kills:", [r for r in repairs if any(r.values())])
