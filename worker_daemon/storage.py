"""Object storage for the worker: the S3 client it uses, URL parsing, and result uploads.

Any S3-compatible endpoint works (AWS_ENDPOINT_URL, from the service's secrets);
addressing is path-style so a local server needs no DNS. Credentials and region come from
boto3's usual chain
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION). This module is the low
level: it raises ValueError for malformed locations and lets boto3 and OS errors through;
the cache facade turns them into its own errors.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import boto3
from botocore.config import Config

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
