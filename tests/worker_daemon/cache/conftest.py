"""Fixtures for the warm cache tests: settings in a temp folder, caches closed at
teardown, local source files, and S3 objects (unique keys, deleted afterwards)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from tests.fixtures.services import S3Settings, make_s3_client
from worker_daemon.cache import CacheSettings, WarmCache

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MiB = 2**20
# s3proxy buffers signed request bodies in its heap: upload in small parts, few at a time.
UPLOAD_CONFIG = TransferConfig(
    multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB, max_concurrency=2
)


class Clock:
    """A clock the test moves by hand (the cache takes its clock as a dependency)."""

    def __init__(self) -> None:
        self.now_s = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def settings_for(tmp_path: Path) -> Callable[..., CacheSettings]:
    """`settings_for(**overrides)`: settings rooted in this test's temp folder."""

    def make(**overrides: Any) -> CacheSettings:
        values: dict[str, Any] = {
            "root": tmp_path / "cache",
            "service": "svc",
            "capacity_bytes": 64 * MiB,
            "memory_budget_bytes": 16 * MiB,
            "download_part_size_bytes": 1 * MiB,
            "download_concurrency": 4,
        }
        values.update(overrides)
        return CacheSettings(**values)

    return make


@pytest.fixture
def open_cache(
    settings_for: Callable[..., CacheSettings], clock: Clock
) -> Iterator[Callable[..., WarmCache]]:
    """`open_cache(s3_client=None, **setting_overrides)`; every cache is closed at teardown."""
    opened: list[WarmCache] = []

    def make(*, s3_client: S3Client | None = None, **overrides: Any) -> WarmCache:
        cache = WarmCache.open(settings_for(**overrides), s3_client=s3_client, clock=clock)
        opened.append(cache)
        return cache

    yield make
    for cache in opened:
        cache.close()


@pytest.fixture
def source_file(tmp_path: Path) -> Callable[[str, int], Path]:
    """`source_file(name, size_bytes)`: a local file of deterministic content."""
    folder = tmp_path / "sources"
    folder.mkdir()

    def make(name: str, size_bytes: int) -> Path:
        path = folder / name
        path.write_bytes(content_of(name, size_bytes))
        return path

    return make


def content_of(name: str, size_bytes: int) -> bytes:
    """Deterministic bytes for `name`: a partial or mixed-up file never matches."""
    seed = (name + "|").encode()
    return (seed * (size_bytes // len(seed) + 1))[:size_bytes]


class GetCounter:
    """Counts the S3 calls a client makes, through boto3's own event hooks."""

    def __init__(self, client: S3Client) -> None:
        self.calls: dict[str, int] = {}
        client.meta.events.register("before-call.s3", self._count)

    def _count(self, model: Any, **_: Any) -> None:
        self.calls[model.name] = self.calls.get(model.name, 0) + 1

    @property
    def gets(self) -> int:
        return self.calls.get("GetObject", 0)

    @property
    def heads(self) -> int:
        return self.calls.get("HeadObject", 0)


@pytest.fixture
def counted_s3(s3_settings: S3Settings) -> tuple[S3Client, GetCounter]:
    """A fresh client (its own connection pool) and the counter of its calls."""
    client = make_s3_client(
        s3_settings,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            max_pool_connections=16,
            retries={"mode": "standard", "max_attempts": 2},
        ),
    )
    return client, GetCounter(client)


@pytest.fixture
def s3_object(
    s3_client: S3Client, s3_settings: S3Settings, unique_name: str
) -> Iterator[Callable[..., str]]:
    """`s3_object(name, data=b"..." | path=Path) -> s3://bucket/key`, deleted at teardown.

    Files are uploaded in small multipart pieces (see UPLOAD_CONFIG)."""
    keys: list[str] = []

    def put(name: str, data: bytes | None = None, *, path: Path | None = None) -> str:
        key = f"tests/cache/{unique_name}/{name}"
        if path is not None:
            s3_client.upload_file(str(path), s3_settings.bucket, key, Config=UPLOAD_CONFIG)
        else:
            s3_client.put_object(Bucket=s3_settings.bucket, Key=key, Body=data or b"")
        keys.append(key)
        return f"s3://{s3_settings.bucket}/{key}"

    yield put
    for key in keys:
        s3_client.delete_object(Bucket=s3_settings.bucket, Key=key)


def random_file(path: Path, size_bytes: int) -> Path:
    """A file of `size_bytes` random bytes, written a MiB at a time."""
    with path.open("wb") as out:
        for _ in range(size_bytes // MiB):
            out.write(os.urandom(MiB))
        out.write(os.urandom(size_bytes % MiB))
    return path


def files_on_disk(settings: CacheSettings) -> dict[str, int]:
    """Name -> size of every payload and temp file of the cache under `settings`."""
    found = {}
    for sub in ("files", "tmp"):
        folder = settings.service_dir / sub
        if folder.exists():
            for path in folder.iterdir():
                found[f"{sub}/{path.name}"] = path.stat().st_size
    return found
