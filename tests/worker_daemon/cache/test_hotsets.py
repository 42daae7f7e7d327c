"""Hot sets (what each partition's requests read) and the prefetch that uses them.

Real s3proxy and real caches: the prefetch revalidates against S3 and copies from another
cache on this host only the very version S3 has now.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from apps.provisioning.local_handover import cache_hand_over
from apps.provisioning.local_layout import LocalLayout
from memrun.wire.hotsets import HotEntry, hot_entries_from_wire
from tests.worker_daemon.cache.conftest import Clock, GetCounter, content_of
from tests.worker_daemon.cache.test_handover import worker_settings
from worker_daemon.cache import CacheSettings, Tier, WarmCache
from worker_daemon.cache.hotset import HotSets, partition_scope
from worker_daemon.handoff import prefetch_plan
from worker_daemon.report import HOT_SETS_MAX_BYTES, heartbeat_report

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MiB = 2**20


def test_reads_are_recorded_per_partition_newest_first_and_only_inside_a_request(
    open_cache: Callable[..., WarmCache],
    source_file: Callable[[str, int], Path],
    clock: Clock,
) -> None:
    cache = open_cache()
    a, b, c = (str(source_file(name, 1000 + i)) for i, name in enumerate("abc"))
    cache.get_or_fetch(c)  # an init handler's read: no partition
    for partition, url in ((3, a), (3, b), (5, b)):
        clock.now_s += 1
        with partition_scope(partition):
            cache.get_or_fetch(url)
    hot = cache.hot_sets()
    assert [(e.partition, e.url, e.size_bytes) for e in hot] == [
        (5, b, 1001),
        (3, b, 1001),
        (3, a, 1000),
    ]
    assert [e.last_access_s for e in hot] == [clock.now_s, clock.now_s - 1, clock.now_s - 2]
    assert all(e.version for e in hot)


def test_hot_sets_are_bounded_per_partition_and_in_partitions() -> None:
    hot = HotSets(per_partition=3, partitions_max=2)
    for partition in range(3):
        for index in range(5):
            hot.touched(partition, f"u{partition}-{index}", 10, "v", float(partition * 10 + index))
    entries = hot.snapshot()
    assert {e.partition for e in entries} == {1, 2}
    assert [e.url for e in entries if e.partition == 2] == ["u2-4", "u2-3", "u2-2"]


def test_the_heartbeat_keeps_the_newest_hot_entries_within_its_byte_bound() -> None:
    hot = HotSets(per_partition=64)
    for index in range(2000):
        hot.touched(
            index % 50,
            f"s3://bucket/some/long/prefix/object-{index:05d}.bin",
            4 * MiB,
            f'"etag-{index}"',
            1_700_000_000.0 + index,
        )
    stats = {
        "state": "running",
        "cache": {"hot_sets": [[e.partition, *e.to_wire()] for e in hot.snapshot()]},
    }
    report = heartbeat_report(stats)
    assert len(json.dumps(report["hot_sets"])) <= HOT_SETS_MAX_BYTES
    entries = hot_entries_from_wire(report["hot_sets"])
    assert len(entries) > 100
    newest = sorted(hot.snapshot(), key=lambda e: e.last_access_s, reverse=True)[: len(entries)]
    assert {e.url for e in entries} == {e.url for e in newest}
    # Malformed entries (a hostile or broken reporter) are left out, not raised on.
    assert hot_entries_from_wire({"x": [["u", 1, "v", 1.0]], "1": [["u", -1, "v", 1], "no"]}) == []


def test_the_plan_takes_each_url_once_newest_first_within_the_byte_bound() -> None:
    entries = [
        HotEntry(1, "s3://b/old", 4 * MiB, "v1", 10.0),
        HotEntry(1, "s3://b/hot", 4 * MiB, "v1", 50.0),
        HotEntry(1, "s3://b/old", 4 * MiB, "v2", 40.0),
        HotEntry(2, "s3://b/big", 8 * MiB, "v1", 45.0),
        HotEntry(7, "s3://b/not-ours", 1, "v1", 99.0),
    ]
    plan = prefetch_plan(entries, [1, 2], max_bytes=9 * MiB)
    assert [(e.url, e.version) for e in plan] == [("s3://b/hot", "v1"), ("s3://b/old", "v2")]


def test_prefetch_downloads_once_and_the_first_request_is_a_disk_hit(
    open_cache: Callable[..., WarmCache],
    s3_object: Callable[..., str],
    counted_s3: tuple[S3Client, GetCounter],
) -> None:
    client, counter = counted_s3
    url = s3_object("pre.bin", content_of("pre.bin", 2 * MiB))
    cache = open_cache(s3_client=client)
    assert cache.prefetch(url) == 2 * MiB
    assert cache.prefetch(url) == 0  # here and current: nothing to do
    fetched = cache.get_or_fetch(url)
    assert fetched.tier is Tier.DISK
    assert Path(fetched.value).read_bytes() == content_of("pre.bin", 2 * MiB)
    stats = cache.stats()
    assert (stats["fetches"], stats["prefetched"], stats["prefetched_bytes"]) == (1, 1, 2 * MiB)
    assert counter.gets >= 1 and stats["hits"]["disk"] == 1


def handed_over_cache(tmp_path: Path, s3_client: S3Client, urls: list[str]) -> CacheSettings:
    """An old worker's cache that read `urls`, stopped and handed over on this host."""
    old = WarmCache.open(worker_settings(tmp_path, "w-old"), s3_client=s3_client)
    for url in urls:
        old.get_or_fetch(url)
    old.close()
    assert cache_hand_over(LocalLayout(tmp_path), worker="w-old", service="svc") is not None
    return worker_settings(tmp_path, "w-new")


def test_prefetch_copies_the_same_version_from_another_cache_and_downloads_a_changed_one(
    tmp_path: Path,
    s3_object: Callable[..., str],
    s3_client: S3Client,
    counted_s3: tuple[S3Client, GetCounter],
) -> None:
    same = s3_object("same.bin", content_of("same.bin", MiB))
    changed = s3_object("changed.bin", content_of("changed-v1", MiB))
    settings = handed_over_cache(tmp_path, s3_client, [same, changed])
    # Overwritten after the old owner cached it: its copy there is stale now.
    s3_object("changed.bin", content_of("changed-v2", MiB))
    client, counter = counted_s3
    new = WarmCache.open(dataclasses.replace(settings), s3_client=client)
    try:
        assert new.prefetch(same) == MiB
        assert new.prefetch(changed) == MiB
        stats = new.stats()
        assert (stats["prefetched"], stats["prefetched_from_peers"]) == (2, 1)
        assert (stats["adopted"], stats["fetches"], counter.gets) == (1, 1, 1)
        assert new.read_bytes(changed) == content_of("changed-v2", MiB)
        assert new.read_bytes(same) == content_of("same.bin", MiB)
        assert new.stats()["fetches"] == 1  # both served from disk
    finally:
        new.close()


def test_a_peer_handed_over_while_its_partitions_move_is_found_at_its_new_place(
    tmp_path: Path, s3_object: Callable[..., str], s3_client: S3Client
) -> None:
    first = s3_object("first.bin", content_of("first.bin", MiB))
    second = s3_object("second.bin", content_of("second.bin", MiB))
    layout = LocalLayout(tmp_path)
    old_settings = worker_settings(tmp_path, "w-old")
    old = WarmCache.open(old_settings, s3_client=s3_client)
    old.get_or_fetch(first)
    old.get_or_fetch(second)
    old.close()
    settings = worker_settings(tmp_path, "w-new")
    new = WarmCache.open(settings, s3_client=s3_client)
    try:
        assert new.prefetch(first) == MiB  # from the peer, where it ran
        # It stops and its supervisor renames its cache into the handover folder; its
        # partitions move here at that moment, before the pool's periodic rescan.
        assert cache_hand_over(layout, worker="w-old", service="svc") is not None
        assert new.prefetch(second) == MiB
        stats = new.stats()
        assert (stats["prefetched_from_peers"], stats["fetches"]) == (2, 0)
    finally:
        new.close()
