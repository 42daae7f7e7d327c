"""Tier 3 against the real S3 server: cache-through, single flight, revalidation, errors."""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
from botocore.config import Config

from tests.fixtures.services import S3Settings, make_s3_client
from tests.worker_daemon.cache.conftest import Clock, GetCounter, files_on_disk, random_file
from tests.worker_daemon.cache.tcpproxy import CuttingProxy
from worker_daemon.cache import (
    AccessDenied,
    FetchFailed,
    ObjectChanged,
    ObjectNotFound,
    Tier,
    WarmCache,
)
from worker_daemon.cache.fetchers import RemoteObject, S3Source

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MiB = 2**20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def byte_count(path: Path) -> int:
    return path.stat().st_size


def test_cold_then_disk_then_memory_with_one_set_of_gets(
    open_cache: Callable[..., WarmCache],
    s3_object: Callable[..., str],
    counted_s3: tuple[S3Client, GetCounter],
    tmp_path: Path,
) -> None:
    client, counter = counted_s3
    src = random_file(tmp_path / "obj", 3 * MiB + 5)
    url = s3_object("obj", path=src)
    cache = open_cache(s3_client=client, download_part_size_bytes=MiB)

    cold = cache.get_or_fetch(url)
    assert cold.tier is Tier.REMOTE and sha256_of(cold.value) == sha256_of(src)
    assert cache.get_or_fetch(url).tier is Tier.DISK
    assert cache.get_or_fetch(url, decode=byte_count).tier is Tier.DISK
    warm = cache.get_or_fetch(url, decode=byte_count)
    assert warm.tier is Tier.MEMORY and warm.value == 3 * MiB + 5
    assert counter.gets == 4 and counter.heads == 1  # four 1 MiB ranges, once
    stats = cache.stats()
    assert stats["hits"] == {"memory": 1, "disk": 2} and stats["misses"] == 1
    assert stats["bytes"]["remote"] == 3 * MiB + 5


def test_sixteen_threads_asking_for_one_cold_object_make_one_download(
    open_cache: Callable[..., WarmCache],
    s3_object: Callable[..., str],
    counted_s3: tuple[S3Client, GetCounter],
    tmp_path: Path,
) -> None:
    client, counter = counted_s3
    src = random_file(tmp_path / "big", 200 * MiB)
    url = s3_object("big", path=src)
    cache = open_cache(
        s3_client=client, capacity_bytes=400 * MiB, download_part_size_bytes=16 * MiB
    )
    start = threading.Barrier(16)
    results: list[Path] = []
    errors: list[BaseException] = []

    def ask() -> None:
        start.wait()
        try:
            results.append(cache.get_or_fetch(url).value)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(set(results)) == 1
    assert counter.heads == 1 and counter.gets == 13  # ceil(200 / 16) ranges, once
    assert cache.stats()["disk"]["inserts"] == 1
    assert sha256_of(results[0]) == sha256_of(src)


def test_requests_that_waited_on_another_download_are_tagged_waited_not_remote(
    open_cache: Callable[..., WarmCache],
    s3_object: Callable[..., str],
    counted_s3: tuple[S3Client, GetCounter],
) -> None:
    client, counter = counted_s3
    url = s3_object("shared", data=b"x" * (MiB + 7))
    cache = open_cache(s3_client=client)
    # The one download is held at its HEAD until every other caller waits on it, so the
    # split between the caller that fetched and those that waited is certain.
    release = threading.Event()

    def hold(**_: object) -> None:  # a hook that returned a value would be the response
        release.wait(30)

    client.meta.events.register("before-call.s3.HeadObject", hold)
    callers = 8
    tiers: list[Tier] = []

    def ask() -> None:
        tiers.append(cache.get_or_fetch(url).tier)

    threads = [threading.Thread(target=ask) for _ in range(callers)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while cache.stats()["waiting_on_downloads"] < callers - 1:
        assert time.monotonic() < deadline, "the callers never all waited on one download"
        time.sleep(0.01)
    release.set()
    for thread in threads:
        thread.join()
    assert sorted(t.value for t in tiers) == ["remote"] + ["waited"] * (callers - 1)
    stats = cache.stats()
    assert stats["fetches"] == 1 and stats["misses"] == 1 and stats["waited"] == callers - 1
    assert stats["requests"] == callers and counter.heads == 1 and counter.gets == 2  # 2 ranges
    assert cache.get_or_fetch(url).tier is Tier.DISK


def test_an_object_overwritten_in_s3_is_fetched_again_when_revalidated(
    open_cache: Callable[..., WarmCache],
    s3_object: Callable[..., str],
    counted_s3: tuple[S3Client, GetCounter],
) -> None:
    client, counter = counted_s3
    url = s3_object("v", b"version one")
    cache = open_cache(s3_client=client)
    assert cache.get_or_fetch(url, decode=Path.read_bytes).value == b"version one"
    s3_object("v", b"version two!")

    stale = cache.get_or_fetch(url, decode=Path.read_bytes)
    assert stale.tier is Tier.MEMORY and stale.value == b"version one"
    fresh = cache.get_or_fetch(url, decode=Path.read_bytes, revalidate=True)
    assert fresh.tier is Tier.REMOTE and fresh.value == b"version two!"
    again = cache.get_or_fetch(url, decode=Path.read_bytes)
    assert again.tier is Tier.MEMORY and again.value == b"version two!"
    assert cache.get_or_fetch(url).value.read_bytes() == b"version two!"
    assert len(files_on_disk(cache.settings)) == 1
    assert counter.gets == 2


def test_a_cached_object_is_served_without_asking_s3_until_its_max_age(
    open_cache: Callable[..., WarmCache],
    s3_object: Callable[..., str],
    counted_s3: tuple[S3Client, GetCounter],
    clock: Clock,
) -> None:
    client, counter = counted_s3
    url = s3_object("aged", b"payload")
    cache = open_cache(s3_client=client, max_age_s=300.0)
    cache.get_or_fetch(url)
    clock.now_s += 299
    assert cache.get_or_fetch(url).tier is Tier.DISK and counter.heads == 1
    assert cache.get_or_fetch(url, max_age_s=10.0).tier is Tier.DISK and counter.heads == 2
    clock.now_s += 301
    assert cache.get_or_fetch(url).tier is Tier.DISK and counter.heads == 3
    assert cache.get_or_fetch(url).tier is Tier.DISK and counter.heads == 3
    assert counter.gets == 1


def test_a_missing_object_is_a_clear_not_found(
    open_cache: Callable[..., WarmCache], s3_client: S3Client, s3_settings: S3Settings
) -> None:
    cache = open_cache(s3_client=s3_client)
    url = f"s3://{s3_settings.bucket}/tests/cache/does-not-exist-{id(cache)}"
    with pytest.raises(ObjectNotFound, match=re.escape(url)):
        cache.get_or_fetch(url)
    with pytest.raises(ObjectNotFound, match="does not exist"):
        cache.get_or_fetch("s3://no-such-bucket-memrun-tests/key")
    assert files_on_disk(cache.settings) == {}


def test_an_object_deleted_at_the_source_is_dropped_on_revalidation(
    open_cache: Callable[..., WarmCache],
    s3_object: Callable[..., str],
    s3_client: S3Client,
) -> None:
    url = s3_object("gone", b"soon gone")
    cache = open_cache(s3_client=s3_client)
    cache.get_or_fetch(url)
    bucket, key = urlsplit(url).netloc, urlsplit(url).path.lstrip("/")
    s3_client.delete_object(Bucket=bucket, Key=key)
    with pytest.raises(ObjectNotFound):
        cache.get_or_fetch(url, revalidate=True)
    assert files_on_disk(cache.settings) == {} and cache.stats()["disk"]["entries"] == 0


def test_refused_credentials_are_a_clear_access_denied(
    open_cache: Callable[..., WarmCache], s3_object: Callable[..., str], s3_settings: S3Settings
) -> None:
    url = s3_object("secret", b"data")
    wrong = make_s3_client(s3_settings, aws_secret_access_key="not-the-secret")
    cache = open_cache(s3_client=wrong)
    with pytest.raises(AccessDenied, match=re.escape(url)) as refused:
        cache.get_or_fetch(url)
    assert "AWS_SECRET_ACCESS_KEY" in str(refused.value)
    assert files_on_disk(cache.settings) == {}


def test_the_server_going_down_mid_download_fails_every_waiter_and_leaves_nothing(
    open_cache: Callable[..., WarmCache],
    s3_object: Callable[..., str],
    s3_settings: S3Settings,
    tmp_path: Path,
) -> None:
    url = s3_object("cut", path=random_file(tmp_path / "cut", 24 * MiB))
    target = urlsplit(s3_settings.endpoint_url)
    proxy = CuttingProxy((target.hostname or "", target.port or 80), cut_after_bytes=5 * MiB)
    client = make_s3_client(
        s3_settings,
        endpoint_url=proxy.endpoint_url,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "max_attempts": 1},
            connect_timeout=2,
            read_timeout=10,
        ),
    )
    cache = open_cache(s3_client=client, download_part_size_bytes=2 * MiB)
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def ask() -> None:
        start.wait()
        try:
            cache.get_or_fetch(url)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert proxy.down.is_set() and len(errors) == 4
    for error in errors:
        assert isinstance(error, FetchFailed) and url in str(error)
        assert "AWS_ENDPOINT_URL" in str(error)
    assert files_on_disk(cache.settings) == {}
    stats = cache.stats()
    assert stats["disk"]["entries"] == 0 and stats["disk"]["reserved_bytes"] == 0


def test_a_download_pinned_to_an_old_etag_reports_the_change(
    s3_object: Callable[..., str], s3_client: S3Client, tmp_path: Path
) -> None:
    url = s3_object("moving", b"first")
    source = S3Source(s3_client, part_size_bytes=MiB, concurrency=2, part_attempts=3)
    old = source.stat(url)
    s3_object("moving", b"second")
    path = tmp_path / "out"
    with path.open("wb") as out:
        out.truncate(old.size_bytes)
        with pytest.raises(ObjectChanged, match=re.escape(url)):
            source.download(RemoteObject(url, old.size_bytes, old.version), out.fileno())
    source.close()


def test_upload_result_writes_under_the_results_prefix(
    open_cache: Callable[..., WarmCache],
    s3_client: S3Client,
    s3_settings: S3Settings,
    unique_name: str,
    tmp_path: Path,
) -> None:
    prefix = f"s3://{s3_settings.bucket}/tests/results/{unique_name}/"
    cache = open_cache(s3_client=s3_client, results_url=prefix)
    file_result = tmp_path / "result.bin"
    file_result.write_bytes(b"from a file")
    urls = [
        cache.upload_result(b"raw bytes", "a.bin"),
        cache.upload_result("some text", "nested/b.txt"),
        cache.upload_result(file_result, "c.bin"),
    ]
    assert urls == [prefix + "a.bin", prefix + "nested/b.txt", prefix + "c.bin"]
    assert cache.read_bytes(urls[0]) == b"raw bytes"
    bodies = []
    for url in urls:
        key = urlsplit(url).path.lstrip("/")
        bodies.append(s3_client.get_object(Bucket=s3_settings.bucket, Key=key)["Body"].read())
        s3_client.delete_object(Bucket=s3_settings.bucket, Key=key)
    assert bodies == [b"raw bytes", b"some text", b"from a file"]
