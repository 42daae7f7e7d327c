"""The artifact store: accepted packages, kept by content hash under MEMRUN_ARTIFACTS_URL.

A folder (`file:///...`, the embedded default) or S3 (`s3://bucket/prefix`, on
MEMRUN_S3_ENDPOINT_URL with boto3's usual credentials). Keys name content
(`deployments/{service}/{sha256}.tar.gz`), so a key already stored is never written again.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import unquote, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings

from apps.common.errors import DomainError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}
DEPLOYMENTS_PREFIX = "deployments"


def artifact_put(*, path: Path, key: str) -> str:
    """Store the file at `path` under `key`; its URL. A key already present is kept as is."""
    url = f"{settings.MEMRUN_ARTIFACTS_URL}/{key}"
    if urlsplit(url).scheme == "s3":
        bucket, object_key = _s3_location(url)
        client = _s3_client(settings.MEMRUN_S3_ENDPOINT_URL)
        with _s3_errors(url):
            if not _s3_exists(client, bucket, object_key):
                client.upload_file(
                    str(path), bucket, object_key, ExtraArgs={"ContentType": "application/gzip"}
                )
        return url
    target = _file_path(url)
    if target.exists():
        return url
    target.parent.mkdir(parents=True, exist_ok=True)
    # Copied under a temporary name and renamed, so a reader never sees half a package.
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, path.open("rb") as source:
            shutil.copyfileobj(source, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return url


@dataclass(frozen=True)
class StoredArtifact:
    url: str
    size_bytes: int
    modified_at: datetime


def artifact_list() -> list[StoredArtifact]:
    """Every package in the store (under `deployments/`), with its size and age."""
    base = f"{settings.MEMRUN_ARTIFACTS_URL}/{DEPLOYMENTS_PREFIX}"
    if urlsplit(base).scheme == "s3":
        bucket, prefix = _s3_location(base)
        client = _s3_client(settings.MEMRUN_S3_ENDPOINT_URL)
        found = []
        with _s3_errors(base):
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix + "/"
            ):
                for item in page.get("Contents", []):
                    found.append(
                        StoredArtifact(
                            f"s3://{bucket}/{item['Key']}", item["Size"], item["LastModified"]
                        )
                    )
        return found
    root = _file_path(base)
    found = []
    for path in root.rglob("*.tar.gz") if root.is_dir() else []:
        if path.name.startswith("."):
            continue  # a copy still being written (artifact_put renames it when done)
        with contextlib.suppress(FileNotFoundError):
            stat = path.stat()
            modified = datetime.fromtimestamp(stat.st_mtime, tz=UTC)
            found.append(StoredArtifact(f"{base}/{path.relative_to(root)}", stat.st_size, modified))
    return found


def artifact_exists(*, url: str) -> bool:
    if urlsplit(url).scheme == "s3":
        bucket, object_key = _s3_location(url)
        with _s3_errors(url):
            return _s3_exists(_s3_client(settings.MEMRUN_S3_ENDPOINT_URL), bucket, object_key)
    return _file_path(url).is_file()


def artifact_delete(*, url: str) -> None:
    """Remove the package at `url`; one already gone is fine."""
    if urlsplit(url).scheme == "s3":
        bucket, object_key = _s3_location(url)
        with _s3_errors(url):
            _s3_client(settings.MEMRUN_S3_ENDPOINT_URL).delete_object(Bucket=bucket, Key=object_key)
        return
    _file_path(url).unlink(missing_ok=True)


def artifact_open(*, url: str) -> BinaryIO:
    """The stored bytes at `url` as a stream to read and close; DomainError 404 if absent."""
    if urlsplit(url).scheme == "s3":
        bucket, object_key = _s3_location(url)
        with _s3_errors(url):
            body = _s3_client(settings.MEMRUN_S3_ENDPOINT_URL).get_object(
                Bucket=bucket, Key=object_key
            )["Body"]
        return body  # type: ignore[return-value]
    try:
        return _file_path(url).open("rb")
    except FileNotFoundError:
        raise _missing(url) from None


def artifact_presigned_url(*, url: str, expires_s: int) -> str | None:
    """A URL that fetches `url` without credentials for `expires_s` seconds; None for a
    folder store, whose files only the control plane can serve."""
    if urlsplit(url).scheme != "s3":
        return None
    bucket, object_key = _s3_location(url)
    return _s3_client(settings.MEMRUN_S3_ENDPOINT_URL).generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": object_key}, ExpiresIn=expires_s
    )


@functools.cache
def _s3_client(endpoint_url: str | None) -> S3Client:
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        retries={"mode": "standard", "max_attempts": 3},
        connect_timeout=10,
        read_timeout=60,
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        config=config,
    )


def _s3_location(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.netloc, parts.path.lstrip("/")


def _s3_exists(client: S3Client, bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in _MISSING_CODES:
            return False
        raise
    return True


@contextlib.contextmanager
def _s3_errors(url: str) -> Iterator[None]:
    """S3 failures as DomainErrors: a missing object is 404, anything else 503."""
    try:
        yield
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in _MISSING_CODES:
            raise _missing(url) from None
        raise _unavailable(url, exc) from exc
    except BotoCoreError as exc:
        raise _unavailable(url, exc) from exc


def _file_path(url: str) -> Path:
    return Path(unquote(urlsplit(url).path))


def _missing(url: str) -> DomainError:
    return DomainError(
        f"the artifact store has no package at {url}; deploy it again",
        status=404,
        details={"artifact_url": url},
    )


def _unavailable(url: str, exc: Exception) -> DomainError:
    return DomainError(
        f"the artifact store is unavailable ({type(exc).__name__}: {exc}); retry later",
        status=503,
        details={"artifact_url": url},
    )
