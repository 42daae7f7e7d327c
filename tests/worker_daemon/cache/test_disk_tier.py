"""Tier 2 with local sources: the file cache, its capacity, its index, and start-up repair."""

from __future__ import annotations

import os
import random
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.worker_daemon.cache.conftest import Clock, content_of, files_on_disk
from worker_daemon.cache import (
    CacheError,
    CacheFull,
    CacheSettings,
    DiskFull,
    ObjectNotFound,
    Tier,
    UnsupportedURL,
    WarmCache,
)

MiB = 2**20
KiB = 2**10


def size_of(path: Path) -> int:
    return len(path.read_bytes())


def test_a_local_file_goes_remote_then_disk_then_memory(
    open_cache: Callable[..., WarmCache], source_file: Callable[[str, int], Path]
) -> None:
    cache = open_cache()
    src = source_file("data.bin", 3 * MiB)
    first = cache.get_or_fetch(src.as_uri())
    second = cache.get_or_fetch(src.as_uri())
    third = cache.get_or_fetch(src.as_uri(), decode=size_of)
    fourth = cache.get_or_fetch(src.as_uri(), decode=size_of)
    assert [first.tier, second.tier, third.tier, fourth.tier] == [
        Tier.REMOTE,
        Tier.DISK,
        Tier.DISK,
        Tier.MEMORY,
    ]
    assert first.value == second.value != src
    assert first.value.read_bytes() == src.read_bytes() and fourth.value == 3 * MiB
    stats = cache.stats()
    assert stats["hits"] == {"memory": 1, "disk": 2} and stats["misses"] == 1
    assert stats["disk"]["used_bytes"] == 3 * MiB


def test_helpers_read_open_and_map_the_cached_file(
    open_cache: Callable[..., WarmCache], source_file: Callable[[str, int], Path]
) -> None:
    cache = open_cache()
    src = source_file("x", 100 * KiB)
    assert cache.read_bytes(str(src)) == src.read_bytes()
    with cache.open_file(str(src)) as handle:
        assert handle.read(10) == src.read_bytes()[:10]
    mapped = cache.map_file(str(src))
    assert mapped[-5:] == src.read_bytes()[-5:]
    mapped.close()


def test_filling_past_capacity_evicts_least_recently_used_first(
    open_cache: Callable[..., WarmCache], source_file: Callable[[str, int], Path]
) -> None:
    cache = open_cache(capacity_bytes=4 * MiB)
    urls = [str(source_file(f"f{i}", MiB)) for i in range(6)]
    for url in urls[:4]:
        assert cache.get_or_fetch(url).tier is Tier.REMOTE
    cache.get_or_fetch(urls[4])
    cache.get_or_fetch(urls[5])
    assert cache.stats()["disk"]["evictions"] == 2
    assert [cache.get_or_fetch(u).tier for u in urls[2:]] == [Tier.DISK] * 4
    assert cache.get_or_fetch(urls[0]).tier is Tier.REMOTE


def test_bytes_on_disk_never_exceed_capacity_after_any_insert(
    open_cache: Callable[..., WarmCache], source_file: Callable[[str, int], Path]
) -> None:
    capacity = 5 * MiB
    cache = open_cache(capacity_bytes=capacity)
    rng = random.Random(7)
    urls = [str(source_file(f"f{i}", rng.randint(1, 2 * MiB))) for i in range(30)]
    for _ in range(120):
        url = rng.choice(urls)
        fetched = cache.get_or_fetch(url)
        assert fetched.value.read_bytes() == Path(url).read_bytes()
        on_disk = files_on_disk(cache.settings)
        assert sum(on_disk.values()) <= capacity
        assert cache.stats()["disk"]["used_bytes"] == sum(on_disk.values())


def test_a_one_off_scan_does_not_evict_the_hot_set(
    open_cache: Callable[..., WarmCache], source_file: Callable[[str, int], Path]
) -> None:
    cache = open_cache(capacity_bytes=10 * MiB)
    hot = [str(source_file(f"hot{i}", 256 * KiB)) for i in range(4)]
    for url in hot * 2:
        cache.get_or_fetch(url)
    for i in range(12):
        cache.get_or_fetch(str(source_file(f"scan{i}", 3 * MiB)))
    assert [cache.get_or_fetch(u).tier for u in hot] == [Tier.DISK] * 4


def test_an_object_larger_than_the_cache_is_refused(
    open_cache: Callable[..., WarmCache], source_file: Callable[[str, int], Path]
) -> None:
    cache = open_cache(capacity_bytes=MiB)
    url = str(source_file("big", 2 * MiB))
    with pytest.raises(CacheFull, match=url):
        cache.get_or_fetch(url)
    assert files_on_disk(cache.settings) == {}


def test_a_changed_local_file_is_fetched_again_when_revalidated(
    open_cache: Callable[..., WarmCache], source_file: Callable[[str, int], Path], clock: Clock
) -> None:
    cache = open_cache(max_age_s=60.0)
    src = source_file("v", 1000)
    cache.get_or_fetch(str(src))
    src.write_bytes(b"new version")
    assert cache.get_or_fetch(str(src)).tier is Tier.DISK
    fresh = cache.get_or_fetch(str(src), revalidate=True)
    assert fresh.tier is Tier.REMOTE and fresh.value.read_bytes() == b"new version"
    clock.now_s += 61
    assert cache.get_or_fetch(str(src)).tier is Tier.DISK
    assert cache.stats()["revalidations"] == 2
    assert len(files_on_disk(cache.settings)) == 1


def test_missing_file_and_unsupported_scheme_name_the_url(
    open_cache: Callable[..., WarmCache], tmp_path: Path
) -> None:
    cache = open_cache()
    missing = str(tmp_path / "nope.bin")
    with pytest.raises(ObjectNotFound, match=r"nope\.bin"):
        cache.get_or_fetch(missing)
    for url in ("gs://bucket/key", "https://example.invalid/x", "file://otherhost/x"):
        with pytest.raises(UnsupportedURL, match=re.escape(url.split("/")[0])):
            cache.get_or_fetch(url)
    assert cache.stats()["errors"] == 4


def test_start_up_repairs_orphans_temps_and_bad_entries(
    open_cache: Callable[..., WarmCache],
    source_file: Callable[[str, int], Path],
    settings_for: Callable[..., CacheSettings],
) -> None:
    cache = open_cache()
    urls = [str(source_file(f"f{i}", 64 * KiB)) for i in range(4)]
    paths = [cache.get_or_fetch(url).value for url in urls]
    cache.close()
    paths[0].unlink()
    with paths[1].open("r+b") as f:
        f.truncate(100)
    service_dir = settings_for().service_dir
    (service_dir / "files" / "orphan").write_bytes(b"x")
    (service_dir / "tmp" / "leftover.part").write_bytes(b"y")

    cache = open_cache()
    # The truncated file's entry is dropped and the file then counts as an orphan.
    assert cache.stats()["disk"]["reconciled"] == {
        "temp_files_removed": 1,
        "entries_dropped": 2,
        "orphans_removed": 2,
        "index_moved_aside": None,
    }
    assert sorted(files_on_disk(cache.settings)) == sorted(f"files/{p.name}" for p in paths[2:])
    assert [cache.get_or_fetch(u).tier for u in urls] == [
        Tier.REMOTE,
        Tier.REMOTE,
        Tier.DISK,
        Tier.DISK,
    ]


def test_a_corrupt_index_is_moved_aside_and_the_cache_still_opens(
    open_cache: Callable[..., WarmCache], source_file: Callable[[str, int], Path]
) -> None:
    cache = open_cache()
    url = str(source_file("f", 10 * KiB))
    cache.get_or_fetch(url)
    cache.close()
    data = cache.settings.service_dir / "index" / "data.mdb"
    data.write_bytes(os.urandom(64 * KiB))

    cache = open_cache()
    reconciled = cache.stats()["disk"]["reconciled"]
    assert reconciled["index_moved_aside"] and reconciled["orphans_removed"] == 1
    assert cache.get_or_fetch(url).tier is Tier.REMOTE
    assert cache.get_or_fetch(url).tier is Tier.DISK


def test_a_full_index_map_grows_then_evicts_instead_of_failing(
    open_cache: Callable[..., WarmCache], source_file: Callable[[str, int], Path]
) -> None:
    cache = open_cache(index_map_size_bytes=32 * KiB, index_max_map_size_bytes=96 * KiB)
    long_name = "n" * 200
    urls = [str(source_file(f"{long_name}{i}", 10)) for i in range(400)]
    for url in urls:
        assert cache.get_or_fetch(url).value.read_bytes() == Path(url).read_bytes()
    disk = cache.stats()["disk"]
    assert disk["index_map_size_bytes"] == 96 * KiB
    assert disk["index_evictions"] > 0
    assert disk["entries"] == len(files_on_disk(cache.settings))
    assert cache.get_or_fetch(urls[-1]).tier is Tier.DISK


def test_a_second_process_cannot_share_the_folder(
    open_cache: Callable[..., WarmCache], settings_for: Callable[..., CacheSettings]
) -> None:
    open_cache()
    with pytest.raises(CacheError, match="in use by another process"):
        WarmCache.open(settings_for())


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, to fill a disk for real (needs root; skipped elsewhere)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_fails_the_request_and_leaves_the_cache_consistent(
    small_filesystem: Path,
    source_file: Callable[[str, int], Path],
    clock: Clock,
) -> None:
    settings = CacheSettings(
        root=small_filesystem, service="svc", capacity_bytes=64 * MiB, memory_budget_bytes=0
    )
    cache = WarmCache.open(settings, clock=clock)
    try:
        small = str(source_file("small", MiB))
        cache.get_or_fetch(small)
        big = str(source_file("big", 6 * MiB))
        with pytest.raises(DiskFull, match="big"):
            cache.get_or_fetch(big)
        assert files_on_disk(settings) == {f"files/{cache.get_or_fetch(small).value.name}": MiB}
        assert cache.get_or_fetch(small).tier is Tier.DISK
        assert cache.stats()["disk"]["reserved_bytes"] == 0
    finally:
        cache.close()


def test_content_of_is_distinct_per_name() -> None:
    assert content_of("a", 10) != content_of("b", 10)
