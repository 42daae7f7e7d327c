"""Tier 3: the sources objects come from, written straight into a cache file.

A source answers two questions: what is the current version of a URL (`stat`, cheap: an
S3 HEAD or a local stat), and copy that version's bytes into an open file (`download`).
S3 objects are read as concurrent ranged GETs pinned to the ETag (If-Match), so a
download never mixes two versions; local files are copied in the kernel.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from http.client import HTTPResponse, IncompleteRead
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from worker_daemon.cache.errors import (
    AccessDenied,
    CacheError,
    FetchFailed,
    ObjectChanged,
    ObjectNotFound,
    UnsupportedURL,
)
from worker_daemon.cache.payloads import start_writeback
from worker_daemon.storage import local_path_of, split_s3_url

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

READ_BUFFER_BYTES = 1 << 20
NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}
DENIED_CODES = {
    "403",
    "AccessDenied",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
}
CHANGED_CODES = {"412", "PreconditionFailed"}
LOCAL_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


@dataclass(frozen=True)
class RemoteObject:
    """One version of an object at its source."""

    url: str
    size_bytes: int
    version: str


class Source(Protocol):
    def stat(self, url: str) -> RemoteObject:
        """The current version of `url`; raises ObjectNotFound, AccessDenied, FetchFailed."""
        ...

    def download(self, remote: RemoteObject, fd: int) -> None:
        """Write all bytes of `remote` into `fd` (already `size_bytes` long) at their
        offsets; raises ObjectChanged if the source moved on to another version."""
        ...


class FileSource:
    """`file:///path` and plain paths. The version is mtime, size and inode."""

    def stat(self, url: str) -> RemoteObject:
        path = _local_path(url)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise ObjectNotFound(f"{url} does not exist (no file at {path})", url=url) from None
        except PermissionError:
            raise AccessDenied(f"{url}: no permission to read {path}", url=url) from None
        if not stat.S_ISREG(st.st_mode):
            raise ObjectNotFound(f"{url} is not a regular file ({path})", url=url)
        return RemoteObject(url, st.st_size, f"{st.st_mtime_ns}-{st.st_size}-{st.st_ino}")

    def download(self, remote: RemoteObject, fd: int) -> None:
        path = _local_path(remote.url)
        try:
            src = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ObjectChanged(
                f"{remote.url} was removed while it was read", url=remote.url
            ) from None
        try:
            copied = copy_file(src, fd, remote.size_bytes)
        finally:
            os.close(src)
        if copied != remote.size_bytes or self.stat(remote.url).version != remote.version:
            raise ObjectChanged(
                f"{remote.url} changed while it was copied; fetch it again", url=remote.url
            )


def copy_file(src: int, dst: int, size_bytes: int) -> int:
    """Copy up to `size_bytes` from the start of `src` to the start of `dst`, in the kernel
    when both are on one filesystem; returns the bytes copied."""
    copied = 0
    try:
        while copied < size_bytes:
            n = os.copy_file_range(src, dst, size_bytes - copied, copied, copied)
            if n == 0:
                return copied
            copied += n
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
    while copied < size_bytes:
        chunk = os.pread(src, min(READ_BUFFER_BYTES, size_bytes - copied), copied)
        if not chunk:
            break
        copied += os.pwrite(dst, chunk, copied)
    return copied


class S3Source:
    """`s3://bucket/key` through an injected boto3 client: ranged GETs of `part_size_bytes`,
    `concurrency` at a time, each retried up to `part_attempts` times when its stream
    breaks (botocore already retries failed connections)."""

    def __init__(
        self, client: S3Client, *, part_size_bytes: int, concurrency: int, part_attempts: int
    ) -> None:
        self._client = client
        self._part_size_bytes = part_size_bytes
        self._part_attempts = part_attempts
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="memrun-s3-part")

    @property
    def client(self) -> S3Client:
        return self._client

    @property
    def endpoint(self) -> str:
        return str(self._client.meta.endpoint_url)

    def stat(self, url: str) -> RemoteObject:
        bucket, key = _split(url)
        try:
            head = self._client.head_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(url, exc) from exc
        return RemoteObject(url, int(head["ContentLength"]), str(head.get("ETag", "")))

    def download(self, remote: RemoteObject, fd: int) -> None:
        ranges = [
            (start, min(start + self._part_size_bytes, remote.size_bytes))
            for start in range(0, remote.size_bytes, self._part_size_bytes)
        ]
        target = _Target(fd)
        if len(ranges) <= 1:
            if ranges:
                self._download_part(remote, target, *ranges[0])
            return
        parts: list[Future[None]] = [
            self._pool.submit(self._download_part, remote, target, start, end)
            for start, end in ranges
        ]
        done, _ = wait(parts, return_when=FIRST_EXCEPTION)
        errors = [f.exception() for f in done if f.exception() is not None]
        if errors:
            target.failed.set()
            for part in parts:
                part.cancel()
            wait(parts)
            first = errors[0]
            assert first is not None
            raise first

    def _download_part(self, remote: RemoteObject, target: _Target, start: int, end: int) -> None:
        bucket, key = _split(remote.url)
        for attempt in range(1, self._part_attempts + 1):
            if target.failed.is_set():
                return
            try:
                response = self._client.get_object(
                    Bucket=bucket,
                    Key=key,
                    Range=f"bytes={start}-{end - 1}",
                    IfMatch=remote.version,
                )
                _write_body(response["Body"], target, start, end - start)
                return
            except OSError as exc:
                if exc.errno in LOCAL_WRITE_ERRNOS:
                    raise
                error = self._error(remote.url, exc)
                if attempt == self._part_attempts:
                    raise error from exc
            except (ClientError, BotoCoreError, IncompleteRead) as exc:
                error = self._error(remote.url, exc)
                retry = type(error) is FetchFailed and attempt < self._part_attempts
                if not retry:
                    raise error from exc

    def _error(self, url: str, exc: BaseException) -> CacheError:
        if isinstance(exc, NoCredentialsError):
            return AccessDenied(
                f"no S3 credentials to read {url}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                url=url,
            )
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if code in NOT_FOUND_CODES or status == "404":
                return ObjectNotFound(
                    f"{url} does not exist (S3 answered {code or status}); check the bucket "
                    "and key",
                    url=url,
                )
            if code in DENIED_CODES or status == "403":
                return AccessDenied(
                    f"S3 at {self.endpoint} refused to read {url} ({code or status}); check "
                    "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the bucket's permissions",
                    url=url,
                )
            if code in CHANGED_CODES or status == "412":
                return ObjectChanged(
                    f"{url} was overwritten in S3 while it was downloaded; fetch it again",
                    url=url,
                )
        return FetchFailed(
            f"could not read {url} from S3 at {self.endpoint}: {exc}; check that the S3 "
            "server is up and reachable (AWS_ENDPOINT_URL, from the service's secrets)",
            url=url,
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class _Target:
    """The file one download writes into, shared by its part threads."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.failed = threading.Event()

    def write(self, data: memoryview, offset: int) -> None:
        while data:
            n = os.pwrite(self.fd, data, offset)
            data, offset = data[n:], offset + n


def _write_body(body: Any, target: _Target, offset: int, length: int) -> None:
    """Copy a GET response body into `fd` at `offset`.

    Reads straight from the socket into one reused buffer when the HTTP layer allows it
    (a copy saved per chunk), fills the buffer before each write (few, large writes even
    when the network hands over small pieces), and starts the disk writeback of each
    written range at once, so the final fsync has little left to do.
    """
    reader = _BodyReader(body)
    buffer = bytearray(min(READ_BUFFER_BYTES, max(length, 1)))
    view = memoryview(buffer)
    written = 0
    try:
        while written < length:
            want = min(len(buffer), length - written)
            filled = 0
            while filled < want:
                if target.failed.is_set():
                    raise FetchFailed("another part of this download failed")
                n = reader.read_into(view[filled:want])
                if not n:
                    break
                filled += n
            if not filled:
                break
            target.write(view[:filled], offset + written)
            start_writeback(target.fd, offset + written, filled)
            written += filled
    finally:
        reader.finish(complete=written == length)
    if written != length:
        raise IncompleteRead(b"", length - written)


class _BodyReader:
    """Reads a botocore StreamingBody as directly as its layers allow: with urllib3 over
    http.client (the usual case) straight from http.client's response into the caller's
    buffer, skipping urllib3's copies; anything else through `body.read`."""

    def __init__(self, body: Any) -> None:
        self._body = body
        self._raw = getattr(body, "_raw_stream", None)
        fp = getattr(self._raw, "_fp", None)
        direct = isinstance(fp, HTTPResponse) and not getattr(self._raw, "chunked", False)
        self._fp: HTTPResponse | None = fp if direct else None

    def read_into(self, view: memoryview) -> int:
        if self._fp is not None:
            return self._fp.readinto(view)
        chunk: bytes = self._body.read(len(view))
        view[: len(chunk)] = chunk
        return len(chunk)

    def finish(self, *, complete: bool) -> None:
        """Hand a fully read response's connection back to the pool (a new connection
        per part would cost a TLS handshake each against real S3); close the rest."""
        if complete and hasattr(self._raw, "release_conn"):
            self._raw.release_conn()  # type: ignore[union-attr]
        else:
            self._body.close()


def _split(url: str) -> tuple[str, str]:
    try:
        return split_s3_url(url)
    except ValueError:
        raise UnsupportedURL(f"{url} is not an s3://bucket/key URL", url=url) from None


def _local_path(url: str) -> str:
    try:
        return str(local_path_of(url))
    except ValueError as exc:
        raise UnsupportedURL(str(exc), url=url) from None
