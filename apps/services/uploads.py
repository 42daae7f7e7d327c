"""Receiving a deployment upload: the request body streamed to a temporary file.

The file lands under MEMRUN_HOME/uploads with a hard cap (MEMRUN_PACKAGE_MAX_BYTES,
default the archive limit of `PackageLimits`): the declared length is checked first, and
the stream is refused with 413 the moment it passes the cap, so a body is never held in
memory or kept past its request.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.core.files.uploadedfile import TemporaryUploadedFile, UploadedFile
from django.core.files.uploadhandler import FileUploadHandler
from django.http import HttpRequest
from django.http.multipartparser import MultiPartParserError

from apps.common.errors import DomainError
from memrun.wire.archive import DEFAULT_LIMITS

UPLOAD_FIELD = "package"
PACKAGE_TYPES = frozenset({"application/gzip", "application/x-gzip", "application/octet-stream"})
SOURCE_TYPES = frozenset({"text/x-python", "text/x-script.python", "text/plain"})
# Room for the multipart framing and the message around the file, in the up-front check.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Upload:
    """A received upload: a temporary file, removed when `upload_receive`'s block ends."""

    path: Path
    size_bytes: int
    filename: str
    is_source: bool
    message: str


def package_max_bytes() -> int:
    """The upload cap: MEMRUN_PACKAGE_MAX_BYTES, else PackageLimits' archive limit."""
    return int(getattr(settings, "MEMRUN_PACKAGE_MAX_BYTES", DEFAULT_LIMITS.max_archive_bytes))


def uploads_dir() -> Path:
    folder = Path(settings.MEMRUN_HOME) / "uploads"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder


def upload_prepare(request: HttpRequest) -> None:
    """Check the declared length and make a multipart body stream to disk under the cap.
    Call before anything reads `request.POST` or `request.FILES`; calling again is a no-op."""
    if any(isinstance(h, _CappedUploadHandler) for h in request.upload_handlers):
        return
    max_bytes = package_max_bytes()
    raw_length = request.META.get("CONTENT_LENGTH") or ""
    if not raw_length.isdigit():
        raise DomainError("send the package with a Content-Length header", status=411)
    allowed = max_bytes + (
        MULTIPART_OVERHEAD_BYTES if request.content_type == "multipart/form-data" else 0
    )
    if int(raw_length) > allowed:
        raise _too_large(max_bytes, declared=int(raw_length))
    request.upload_handlers = [
        _CappedUploadHandler(request, folder=uploads_dir(), max_bytes=max_bytes)
    ]


@contextlib.contextmanager
def upload_receive(*, request: HttpRequest, message: str = "") -> Iterator[Upload]:
    """The request's upload: multipart (file field `package`, optional field `message`)
    or a raw body (application/gzip, or text/x-python for a handler; `message` given)."""
    upload_prepare(request)
    if request.content_type == "multipart/form-data":
        with _multipart_receive(request, message) as upload:
            yield upload
        return
    if request.content_type not in PACKAGE_TYPES | SOURCE_TYPES:
        raise DomainError(
            f"cannot deploy a {request.content_type or 'body without a Content-Type'}: send "
            f"multipart/form-data with the file field {UPLOAD_FIELD!r}, or the .tar.gz as "
            "application/gzip, or a handler as text/x-python",
            status=415,
            details={"content_type": request.content_type},
        )
    max_bytes = package_max_bytes()
    with tempfile.NamedTemporaryFile(dir=uploads_dir(), suffix=".upload") as out:
        received = 0
        while chunk := request.read(_CHUNK):
            received += len(chunk)
            if received > max_bytes:
                raise _too_large(max_bytes)
            out.write(chunk)
        out.flush()
        yield Upload(
            path=Path(out.name),
            size_bytes=received,
            filename="",
            is_source=request.content_type in SOURCE_TYPES,
            message=message,
        )


def _too_large(max_bytes: int, *, declared: int | None = None) -> DomainError:
    size = f" ({declared} bytes)" if declared is not None else ""
    return DomainError(
        f"package refused: the upload{size} is larger than the limit of {max_bytes} bytes",
        status=413,
        details={"reason": "archive_too_large", "limit_bytes": max_bytes},
    )


@contextlib.contextmanager
def _multipart_receive(request: HttpRequest, message: str) -> Iterator[Upload]:
    handler = next(h for h in request.upload_handlers if isinstance(h, _CappedUploadHandler))
    try:
        try:
            files = request.FILES.getlist(UPLOAD_FIELD)
            message = request.POST.get("message", message)
        except RequestDataTooBig:
            raise DomainError(
                "the form's fields are too large; keep the message short", status=413
            ) from None
        except (MultiPartParserError, SuspiciousOperation) as exc:
            raise DomainError(f"malformed multipart body: {exc}", status=400) from None
        if not files:
            raise DomainError(
                f"send the package or handler as the multipart file field {UPLOAD_FIELD!r}",
                status=400,
                details={"fields": {UPLOAD_FIELD: ["required"]}},
            )
        upload = files[0]
        yield Upload(
            path=Path(upload.temporary_file_path()),
            size_bytes=upload.size or 0,
            filename=upload.name or "",
            is_source=(upload.name or "").endswith(".py"),
            message=message,
        )
    finally:
        handler.discard()


class _TemporaryUpload(TemporaryUploadedFile):
    """Django's temporary upload file, but under MEMRUN_HOME; removed when closed."""

    def __init__(
        self,
        name: str,
        content_type: str,
        charset: str | None,
        content_type_extra: dict[str, Any] | None,
        *,
        folder: Path,
    ) -> None:
        file = tempfile.NamedTemporaryFile(suffix=".upload", dir=folder)  # noqa: SIM115
        UploadedFile.__init__(self, file, name, content_type, 0, charset, content_type_extra)


class _CappedUploadHandler(FileUploadHandler):
    """Streams the one `package` file of a multipart body to a temporary file, refusing
    (413) the moment it passes `max_bytes`; other file fields are refused (400)."""

    file: _TemporaryUpload  # set by new_file; Django's parser closes it by this name

    def __init__(self, request: HttpRequest, *, folder: Path, max_bytes: int) -> None:
        super().__init__(request)
        self.folder = folder
        self.max_bytes = max_bytes

    def new_file(self, field_name: str, file_name: str, *args: Any, **kwargs: Any) -> None:
        super().new_file(field_name, file_name, *args, **kwargs)
        if field_name != UPLOAD_FIELD:
            raise DomainError(
                f"unexpected file field {field_name!r}; send one file, as {UPLOAD_FIELD!r}",
                status=400,
            )
        if hasattr(self, "file"):
            raise DomainError("send one package per deployment", status=400)
        self.file = _TemporaryUpload(
            self.file_name or "",
            self.content_type or "",
            self.charset,
            self.content_type_extra,
            folder=self.folder,
        )

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        if start + len(raw_data) > self.max_bytes:
            self.discard()
            raise _too_large(self.max_bytes)
        self.file.write(raw_data)
        return None

    def file_complete(self, file_size: int) -> UploadedFile | None:
        self.file.seek(0)
        self.file.size = file_size
        return self.file

    def upload_interrupted(self) -> None:
        self.discard()

    def discard(self) -> None:
        if hasattr(self, "file"):
            self.file.close()


@contextlib.contextmanager
def upload_from_text(*, text: str, message: str = "") -> Iterator[Upload]:
    """Handler source pasted into the deploy form, as an upload of a .py file."""
    data = text.encode("utf-8")
    max_bytes = package_max_bytes()
    if len(data) > max_bytes:
        raise _too_large(max_bytes, declared=len(data))
    with tempfile.NamedTemporaryFile(dir=uploads_dir(), suffix=".py") as out:
        out.write(data)
        out.flush()
        yield Upload(
            path=Path(out.name),
            size_bytes=len(data),
            filename="handler.py",
            is_source=True,
            message=message,
        )
