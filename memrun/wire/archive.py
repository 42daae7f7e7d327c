"""Safe reading of handler packages: check every member, then extract into a private folder.

Used by the control plane on upload (`inspect_package`) and by workers (`extract_package`).
Nothing is written outside a fresh temporary folder, renamed into place only once every
member and the manifest have passed; see `memrun.wire._tarstream` for the format checks.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from memrun.errors import PackageRejected
from memrun.wire._tarstream import DEFAULT_LIMITS, Member, PackageLimits, open_tar, shown_name
from memrun.wire.manifest import MANIFEST_NAME, Manifest

__all__ = [
    "DEFAULT_LIMITS",
    "Manifest",
    "PackageLimits",
    "extract_package",
    "inspect_package",
    "open_tar",
    "read_manifest",
]


class _Layout:
    """Which paths the members take, so duplicates and file/folder clashes are refused."""

    def __init__(self) -> None:
        self.files: dict[str, str] = {}
        self._folders: set[str] = set()
        self._explicit_folders: set[str] = set()

    def claim(self, member: Member) -> None:
        name = member.name
        if (
            name in self.files
            or name in self._explicit_folders
            or (not member.is_dir and name in self._folders)
        ):
            raise PackageRejected(
                "duplicate", f"member {shown_name(name)} appears twice", details={"member": name}
            )
        parts = name.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in self.files:
                raise PackageRejected(
                    "duplicate",
                    f"member {shown_name(name)} lies under {parent!r}, which is a file",
                    details={"member": name},
                )
            self._folders.add(parent)
        if member.is_dir:
            self._folders.add(name)
            self._explicit_folders.add(name)


def _write_file(root: Path, name: str, chunks: Iterator[bytes]) -> str:
    """Write a member under `root` (never through a link, never over a file); its sha256."""
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    parent = os.path.realpath(path.parent)
    if parent != str(root) and not parent.startswith(str(root) + os.sep):
        raise PackageRejected("path_traversal", f"member {shown_name(name)} leaves the package")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except FileExistsError:
        raise PackageRejected(
            "duplicate", f"member {shown_name(name)} appears twice", details={"member": name}
        ) from None
    digest = hashlib.sha256()
    with os.fdopen(fd, "wb") as out:
        for chunk in chunks:
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _hash(chunks: Iterator[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def _scan(
    source: Path | BinaryIO, limits: PackageLimits, dest: Path | None
) -> tuple[Manifest, str]:
    """Check (and, with `dest`, write) every member; the manifest and the archive's sha256."""
    with open_tar(source, limits) as reader:
        layout = _Layout()
        manifest_raw: bytes | None = None
        for member in reader.members():
            layout.claim(member)
            if member.is_dir:
                if dest is not None:
                    (dest / member.name).mkdir(mode=0o755, parents=True, exist_ok=True)
            elif member.name == MANIFEST_NAME:
                # Refused here, not only by the extractor's O_EXCL: an upload is inspected
                # without writing, and would otherwise pass and fail on every worker.
                if manifest_raw is not None:
                    raise PackageRejected(
                        "duplicate",
                        f"member {shown_name(MANIFEST_NAME)} appears twice",
                        details={"member": MANIFEST_NAME},
                    )
                if member.size > limits.max_manifest_bytes:
                    raise PackageRejected(
                        "manifest_invalid",
                        f"manifest.json is over {limits.max_manifest_bytes} bytes",
                    )
                manifest_raw = b"".join(reader.data(member))
                if dest is not None:
                    _write_file(dest, MANIFEST_NAME, iter((manifest_raw,)))
            elif dest is not None:
                layout.files[member.name] = _write_file(dest, member.name, reader.data(member))
            else:
                layout.files[member.name] = _hash(reader.data(member))
        sha256 = reader.finish()
    if manifest_raw is None:
        raise PackageRejected("manifest_missing", "the package has no manifest.json at its root")
    manifest = Manifest.from_json(manifest_raw, max_name_length=limits.max_name_length)
    _check_files(manifest, layout.files)
    return manifest, sha256


def _check_files(manifest: Manifest, found: dict[str, str]) -> None:
    for name, digest in sorted(found.items()):
        if name not in manifest.files:
            raise PackageRejected(
                "unlisted_file",
                f"member {shown_name(name)} is not listed in manifest.json",
                details={"member": name},
            )
        if manifest.files[name] != digest:
            raise PackageRejected(
                "hash_mismatch",
                f"member {shown_name(name)} does not match its sha256 in manifest.json",
                details={"member": name, "expected": manifest.files[name], "actual": digest},
            )
    for name in sorted(set(manifest.files) - set(found)):
        raise PackageRejected(
            "missing_file",
            f"manifest.json lists {shown_name(name)} but the package does not hold it",
            details={"member": name},
        )


def inspect_package(source: Path | BinaryIO, *, limits: PackageLimits = DEFAULT_LIMITS) -> Manifest:
    """Validate a package without writing anything; its manifest, or PackageRejected."""
    manifest, _sha256 = _scan(source, limits, None)
    return manifest


def extract_package(
    source: Path | BinaryIO, dest_parent: Path, *, limits: PackageLimits = DEFAULT_LIMITS
) -> Path:
    """Validate and extract a package into `dest_parent/<sha256 of the archive>`.

    Members are written into a fresh temporary folder under `dest_parent`, which is
    renamed into place only once every check has passed and removed on any refusal. When
    the folder already exists (the same archive extracted before), it is returned as is.
    """
    dest_parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest_parent)).resolve()
    try:
        staging.chmod(0o755)
        _manifest, sha256 = _scan(source, limits, staging)
        final = dest_parent / sha256
        try:
            staging.rename(final)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(staging)
        return final
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def read_manifest(folder: Path, *, limits: PackageLimits = DEFAULT_LIMITS) -> Manifest:
    """The validated manifest.json of an extracted package folder."""
    path = folder / MANIFEST_NAME
    with path.open("rb") as stream:
        raw = stream.read(limits.max_manifest_bytes + 1)
    if len(raw) > limits.max_manifest_bytes:
        raise PackageRejected(
            "manifest_invalid", f"manifest.json is over {limits.max_manifest_bytes} bytes"
        )
    return Manifest.from_json(raw, max_name_length=limits.max_name_length)
