"""Object storage for the worker: the S3 client it uses, URL parsing, result uploads, and
the handlers' async client (`ctx.storage`).

Any S3-compatible endpoint works (AWS_ENDPOINT_URL, from the service's secrets);
addressing is path-style so a local server needs no DNS. Credentials and region come from
boto3's usual chain
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION). This module is the low
level: it raises ValueError for malformed locations and lets boto3 and OS errors through;
the cache facade turns them into its own errors.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def make_s3_client(endpoint_url: str | None = None, *, max_pool_connections: int = 16) -> S3Client:
    """An S3 client for `endpoint_url` (None: AWS itself) with path-style addressing and
    enough pooled connections for concurrent ranged downloads."""
    config = Config(
        s3={"addressing_style": "path"},
        retries={"mode": "standard", "max_attempts": 3},
        max_pool_connections=max_pool_connections,
        connect_timeout=10,
        read_timeout=60,
        region_name=os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


def split_s3_url(url: str) -> tuple[str, str]:
    """("bucket", "key") of `s3://bucket/key`; ValueError for anything else."""
    parts = urlsplit(url)
    key = parts.path.lstrip("/")
    if parts.scheme != "s3" or not parts.netloc or not key:
        raise ValueError(f"{url} is not an s3://bucket/key URL")
    return parts.netloc, key


def local_path_of(url: str) -> Path:
    """The local path of a `file://` URL or a plain path; ValueError for a remote host."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"{url} names a remote host; write file:///absolute/path")
        return Path(unquote(parts.path))
    return Path(url)


def result_url(results_url: str, key: str) -> str:
    """The URL of result `key` under `results_url`; ValueError for a key that climbs out."""
    clean = key.lstrip("/")
    if not clean or ".." in PurePosixPath(clean).parts:
        raise ValueError(f"result key {key!r} must be a relative name without '..'")
    return results_url.rstrip("/") + "/" + clean


def upload_result(data: bytes | str | Path, url: str, *, s3: S3Client | None) -> None:
    """Write `data` (bytes, text as UTF-8, or the file at a Path) to `url`, an
    `s3://bucket/key` (multipart for big files) or a `file://` path (atomic rename)."""
    if url.startswith("s3://"):
        if s3 is None:
            raise ValueError(f"no S3 client to upload {url}; attach a secret with AWS_ENDPOINT_URL")
        bucket, key = split_s3_url(url)
        if isinstance(data, Path):
            s3.upload_file(str(data), bucket, key)
        else:
            s3.put_object(Bucket=bucket, Key=key, Body=_as_bytes(data))
    elif url.startswith("file://"):
        _write_local(data, local_path_of(url))
    else:
        raise ValueError(f"results location {url} must be s3://bucket/prefix/ or file:///dir/")


def _as_bytes(data: bytes | str) -> bytes:
    return data.encode() if isinstance(data, str) else data


def _write_local(data: bytes | str | Path, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
    try:
        with os.fdopen(fd, "wb") as out:
            if isinstance(data, Path):
                with data.open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
            else:
                out.write(_as_bytes(data))
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class StoredObject:
    """What `ctx.storage.head` and `.list` tell about an object."""

    url: str
    size_bytes: int
    etag: str
    last_modified: datetime | None


class AsyncStorage:
    """`ctx.storage`: the handler's async S3 client (the seed's), for what the cache does
    not do: writes, listings, existence checks, reads that should not be cached.

    Locations are `s3://bucket/key` URLs, as for `ctx.get_or_fetch`. Built like the
    cache's fetcher, from the worker's own environment, on first use: AWS_ENDPOINT_URL
    (or _S3) and boto3's chain for AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
    AWS_DEFAULT_REGION, which come from the service's secrets (its own credentials,
    never the appliance's). boto3 is blocking,
    so each call runs in a thread off the handler's event loop (aioboto3 would pin
    botocore to the narrow range aiobotocore supports, below what the cache's boto3
    needs). `client` is the boto3 client itself, for anything else.
    """

    def __init__(self, make_client: Callable[[], S3Client]) -> None:
        self._make_client = make_client
        self._client: S3Client | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> S3Client:
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    async def get(self, url: str) -> bytes:
        """The object's bytes; FileNotFoundError when there is none."""
        return await asyncio.to_thread(self._get, url)

    async def put(self, url: str, data: bytes | str | Path) -> None:
        """Write bytes, text (UTF-8) or the file at a Path (multipart when big) to `url`."""
        await asyncio.to_thread(upload_result, data, _s3_only(url), s3=self.client)

    async def head(self, url: str) -> StoredObject | None:
        """Size, ETag and time of the object; None when there is none."""
        return await asyncio.to_thread(self._head, url)

    async def list(self, prefix: str, *, limit: int = 1000) -> list[StoredObject]:
        """The objects under `s3://bucket/prefix`, by key, at most `limit`."""
        return await asyncio.to_thread(_list_objects, self.client, prefix, limit)

    async def delete(self, url: str) -> None:
        """Remove the object (no error when it is already gone)."""
        bucket, key = split_s3_url(url)
        await asyncio.to_thread(self.client.delete_object, Bucket=bucket, Key=key)

    def _get(self, url: str) -> bytes:
        bucket, key = split_s3_url(url)
        try:
            response = self.client.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _is_not_found(exc):
                raise FileNotFoundError(f"{url} does not exist") from exc
            raise
        body = response["Body"]
        try:
            return body.read()
        finally:
            body.close()

    def _head(self, url: str) -> StoredObject | None:
        bucket, key = split_s3_url(url)
        try:
            head = self.client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _is_not_found(exc):
                return None
            raise
        return StoredObject(
            url, int(head["ContentLength"]), str(head.get("ETag", "")), head.get("LastModified")
        )


def _list_objects(client: S3Client, prefix: str, limit: int) -> list[StoredObject]:
    parts = urlsplit(prefix)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"{prefix} is not an s3://bucket/prefix URL")
    bucket, key_prefix = parts.netloc, parts.path.lstrip("/")
    found: list[StoredObject] = []
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=key_prefix, PaginationConfig={"MaxItems": limit}
    )
    for page in pages:
        for item in page.get("Contents", []):
            found.append(
                StoredObject(
                    f"s3://{bucket}/{item['Key']}",
                    int(item["Size"]),
                    str(item.get("ETag", "")),
                    item.get("LastModified"),
                )
            )
    return found[:limit]


def _s3_only(url: str) -> str:
    split_s3_url(url)
    return url


def _is_not_found(exc: ClientError) -> bool:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in {"404", "NoSuchKey", "NotFound"} or status == 404
