"""Is an upload a package this service may deploy: a handler file is built into one, a
package is inspected (memrun.wire.archive: safe to extract, within the limits) for the
service it was sent to, and its entry module is compiled, never imported. Every refusal
is a DomainError whose `details.reason` names the problem."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from apps.common.errors import DomainError
from apps.services.uploads import Upload, package_max_bytes
from memrun.errors import ConfigError, PackageRejected
from memrun.packaging import build_package
from memrun.wire.archive import Manifest, PackageLimits, inspect_package, open_tar

# The entry module is compiled in the web process: bound what that may cost.
ENTRY_MAX_BYTES = 4 * 2**20
_SOURCE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,100}\.py$")


def package_limits() -> PackageLimits:
    return PackageLimits(max_archive_bytes=package_max_bytes())


def package_check(*, path: Path, service_name: str, limits: PackageLimits) -> Manifest:
    """The manifest of the package at `path` once it is safe (`inspect_package`), for
    `service_name`, and its entry module compiles; else a DomainError naming the problem."""
    try:
        manifest = inspect_package(path, limits=limits)
        source = _entry_source(path, manifest.entry, limits)
    except PackageRejected as exc:
        raise _rejected(exc) from None
    if manifest.service != service_name:
        raise _refused(
            "service_mismatch",
            f"the package is for service {manifest.service!r}, but it was sent to "
            f"{service_name!r}; deploy it to /api/v1/services/{manifest.service}/deployments",
            package_service=manifest.service,
        )
    try:
        compile(source, manifest.entry, "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise _refused(
            "entry_invalid",
            f"the entry module {manifest.entry} does not compile: line {exc.lineno}: {exc.msg}",
            member=manifest.entry,
        ) from None
    except (ValueError, RecursionError, MemoryError, OverflowError) as exc:
        raise _refused(
            "entry_invalid",
            f"the entry module {manifest.entry} does not compile: {exc}",
            member=manifest.entry,
        ) from None
    return manifest


def package_from_upload(
    upload: Upload, work: Path, limits: PackageLimits, overrides: Mapping[str, Any]
) -> Path:
    """The package to check: the upload itself, or one built from an uploaded handler
    (with `overrides`; a package's settings take them in `deployment_upload`)."""
    with upload.path.open("rb") as stream:
        head = stream.read(2)
    # The bytes decide: gzip is a package whatever it was called; anything else is
    # checked as a package (and refused by name) unless it was sent as a handler.
    if head == b"\x1f\x8b" or not upload.is_source:
        return upload.path
    name = upload.filename if _SOURCE_NAME.match(upload.filename) else "handler.py"
    if upload.size_bytes > ENTRY_MAX_BYTES:
        raise _refused(
            "entry_too_large",
            f"{name} is {upload.size_bytes} bytes; a handler module may be up to "
            f"{ENTRY_MAX_BYTES}: put data in included files (memrun deploy --include)",
            limit_bytes=ENTRY_MAX_BYTES,
        )
    source = upload.path.read_bytes()
    try:
        source.decode("utf-8")
    except UnicodeDecodeError:
        raise _refused("entry_invalid", f"{name} is not UTF-8 text") from None
    handler = work / name
    handler.write_bytes(source)
    package = work / "package.tar.gz"
    try:
        build_package(handler, overrides=overrides, out=package, limits=limits)
    except ConfigError as exc:
        raise _refused("handler_invalid", exc.message, **exc.details) from None
    return package


def _entry_source(path: Path, entry: str, limits: PackageLimits) -> bytes:
    with open_tar(path, limits) as reader:
        for member in reader.members():
            if member.name != entry:
                continue
            if member.size > ENTRY_MAX_BYTES:
                raise PackageRejected(
                    "entry_too_large",
                    f"the entry module {entry} is {member.size} bytes; the limit is "
                    f"{ENTRY_MAX_BYTES}: put data in included files",
                    details={"member": entry, "limit_bytes": ENTRY_MAX_BYTES},
                )
            return b"".join(reader.data(member))
    raise PackageRejected("missing_file", f"the package does not hold its entry {entry}")


def _refused(reason: str, message: str, **details: Any) -> DomainError:
    return DomainError(
        f"package refused: {message}", status=422, details={"reason": reason, **details}
    )


def _rejected(exc: PackageRejected) -> DomainError:
    status = 413 if exc.reason == "archive_too_large" else 422
    return DomainError(f"package refused: {exc.message}", status=status, details=exc.details)
