"""The contexts a handler receives: one per worker (shared, warm) and one per request.

The worker daemon builds them; user code only reads these types. The data path behind
`get_or_fetch` is a `DataCache`: the worker daemon's tiered cache (RAM -> NVMe -> S3).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol


class Fetched(Protocol):
    @property
    def value(self) -> Any: ...
    @property
    def tier(self) -> Any: ...


class DataCache(Protocol):
    """The warm data path: objects in RAM, files on local disk, S3 behind."""

    def get_or_fetch(
        self,
        url: str,
        *,
        decode: Callable[[Path], Any] | None = None,
        size_hint: int | None = None,
        revalidate: bool = False,
        max_age_s: float | None = None,
    ) -> Fetched: ...

    def set_object(self, name: str, obj: Any, *, size_bytes: int | None = None) -> None: ...

    def get_object(self, name: str, default: Any = None) -> Any: ...

    def upload_result(self, data: bytes | str | Path, key: str) -> str: ...

    def stats(self) -> dict[str, Any]: ...


class ObjectStorage(Protocol):
    """`ctx.storage`: async reads and writes of `s3://bucket/key` objects, uncached, with
    the worker's own S3 endpoint and credentials (the worker daemon's AsyncStorage)."""

    async def get(self, url: str) -> bytes: ...

    async def put(self, url: str, data: bytes | str | Path) -> None: ...

    async def head(self, url: str) -> Any: ...

    async def list(self, prefix: str, *, limit: int = 1000) -> list[Any]: ...

    async def delete(self, url: str) -> None: ...


class WorkerContext:
    """Per-worker state that outlives requests: named objects, the warm cache, and
    `storage`, the async S3 client (None where the worker has none).

    `init_handler` functions receive this; every request context delegates to it.
    """

    def __init__(
        self,
        *,
        service: str,
        worker_id: str,
        cache: DataCache,
        logger: logging.Logger | None = None,
        storage: ObjectStorage | None = None,
    ) -> None:
        self.service = service
        self.worker_id = worker_id
        self.cache = cache
        self.storage = storage
        self.logger = logger or logging.getLogger(f"memrun.service.{service}")

    def set_object(self, name: str, obj: Any, *, size_bytes: int | None = None) -> None:
        """Keep `obj` in this worker's RAM under `name` for the worker's lifetime."""
        self.cache.set_object(name, obj, size_bytes=size_bytes)

    def get_object(self, name: str, default: Any = None) -> Any:
        return self.cache.get_object(name, default)

    def get_or_fetch_sync(
        self,
        url: str,
        *,
        decode: Callable[[Path], Any] | None = None,
        revalidate: bool = False,
        max_age_s: float | None = None,
    ) -> Any:
        """A local Path for `url` (or `decode(path)`, kept in RAM), from the warmest tier."""
        return self._fetch(url, decode=decode, revalidate=revalidate, max_age_s=max_age_s)

    async def get_or_fetch(
        self,
        url: str,
        *,
        decode: Callable[[Path], Any] | None = None,
        revalidate: bool = False,
        max_age_s: float | None = None,
    ) -> Any:
        """`get_or_fetch_sync`, off the event loop."""
        return await asyncio.to_thread(
            self._fetch, url, decode=decode, revalidate=revalidate, max_age_s=max_age_s
        )

    def upload_result_sync(self, data: bytes | str | Path, key: str) -> str:
        """Store `data` under the service's results prefix; return its URL."""
        return self.cache.upload_result(data, key)

    async def upload_result(self, data: bytes | str | Path, key: str) -> str:
        return await asyncio.to_thread(self.cache.upload_result, data, key)

    def _fetch(
        self,
        url: str,
        *,
        decode: Callable[[Path], Any] | None,
        revalidate: bool,
        max_age_s: float | None,
    ) -> Any:
        fetched = self.cache.get_or_fetch(
            url, decode=decode, revalidate=revalidate, max_age_s=max_age_s
        )
        return fetched.value


class RequestContext(WorkerContext):
    """One request: its id, sticky key, delivery attempt and partition, plus the worker's
    warm state. `tiers` records which cache tier served each fetch (outcome metadata)."""

    def __init__(
        self,
        worker: WorkerContext,
        *,
        request_id: str,
        key: str | None,
        attempt: int,
        partition: int,
        offset: int,
        deadline_ms: int | None,
    ) -> None:
        self.worker = worker
        self.service = worker.service
        self.worker_id = worker.worker_id
        self.cache = worker.cache
        self.storage = worker.storage
        self.request_id = request_id
        self.key = key
        self.attempt = attempt
        self.partition = partition
        self.offset = offset
        self.deadline_ms = deadline_ms
        self.tiers: list[str] = []
        self.logger = worker.logger.getChild("request")
        self.log = logging.LoggerAdapter(self.logger, {"request_id": request_id, "key": key})

    def _fetch(
        self,
        url: str,
        *,
        decode: Callable[[Path], Any] | None,
        revalidate: bool,
        max_age_s: float | None,
    ) -> Any:
        fetched = self.cache.get_or_fetch(
            url, decode=decode, revalidate=revalidate, max_age_s=max_age_s
        )
        tier = fetched.tier
        self.tiers.append(str(getattr(tier, "value", tier)))
        return fetched.value
