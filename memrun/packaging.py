"""Build a handler package: the entry module and includes, hashed, in a reproducible tar.gz.

Members are sorted after manifest.json, and owners, modes and times are fixed, so the
same files give the same sha256.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import memrun
from memrun._handler_source import ScriptMetadata, read_script_metadata, resolve_service
from memrun.errors import ConfigError, PackageRejected
from memrun.wire.archive import DEFAULT_LIMITS, PackageLimits
from memrun.wire.manifest import FORMAT_VERSION, MANIFEST_NAME, Manifest, member_name_problem

__all__ = [
    "PackageInfo",
    "ScriptMetadata",
    "build_package",
    "read_script_metadata",
    "resolve_service",
]

_CHUNK = 64 * 1024


@dataclass(frozen=True)
class PackageInfo:
    """A built package: the archive's sha256 and size, its manifest, and what to tell the user."""

    sha256: str
    size_bytes: int
    manifest: Manifest
    warnings: tuple[str, ...] = ()


def _regular_files(path: Path, arcname: str) -> Iterator[tuple[str, Path]]:
    """(archive name, path) of every file under `path`; links and special files refused.

    Inside folders, hidden entries (.git, .venv, ...), __pycache__ and .pyc files are left
    out; a hidden file named as an include itself is kept.
    """
    mode = path.lstat().st_mode
    if stat.S_ISLNK(mode) or not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise ConfigError(
            f"{path} is a link or special file; a package holds only regular files and folders"
        )
    if stat.S_ISREG(mode):
        if not path.name.endswith(".pyc"):
            yield arcname, path
        return
    for child in sorted(path.iterdir()):
        if child.name != "__pycache__" and not child.name.startswith("."):
            yield from _regular_files(child, f"{arcname}/{child.name}" if arcname else child.name)


def _collect_files(
    handler: Path, includes: Sequence[Path], limits: PackageLimits
) -> dict[str, Path]:
    root = handler.parent.absolute()
    files = {handler.name: handler.absolute()}
    for include in includes:
        path = include.absolute()
        if not path.exists():
            raise ConfigError(f"include {include} does not exist")
        base = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
        for arcname, source in _regular_files(path.resolve(), "" if base == "." else base):
            if arcname in files and files[arcname].resolve() != source.resolve():
                raise ConfigError(f"two files would be packaged as {arcname!r}; rename one")
            files[arcname] = source
    if MANIFEST_NAME in files:
        raise ConfigError(f"{MANIFEST_NAME} is reserved for the package manifest; rename it")
    for arcname in files:
        problem = member_name_problem(arcname, max_name_length=limits.max_name_length)
        if problem is not None:
            raise ConfigError(f"cannot package {arcname!r}: it is {problem[1]}")
    if len(files) + 1 > limits.max_members:
        raise ConfigError(f"{len(files)} files is over the limit of {limits.max_members}")
    total_bytes = 0
    for arcname, path in files.items():
        size = path.stat().st_size
        total_bytes += size
        if size > limits.max_file_bytes:
            raise ConfigError(f"{arcname} is {size} bytes; the limit is {limits.max_file_bytes}")
    if total_bytes > limits.max_inflated_bytes:
        raise ConfigError(
            f"the files add up to {total_bytes} bytes; the limit is {limits.max_inflated_bytes}"
        )
    return files


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _created_at(files: Mapping[str, Path]) -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    seconds = int(epoch) if epoch else max(int(path.stat().st_mtime) for path in files.values())
    return datetime.fromtimestamp(seconds, UTC).isoformat()


class _Hashing:
    """A pass-through stream that hashes and counts what goes through it."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.digest = hashlib.sha256()
        self.size_bytes = 0

    def read(self, size: int) -> bytes:
        data = self._stream.read(size)
        self.digest.update(data)
        self.size_bytes += len(data)
        return data

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size_bytes += len(data)
        return self._stream.write(data)

    def flush(self) -> None:
        self._stream.flush()


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _write_archive(out: BinaryIO, manifest: Manifest, files: Mapping[str, Path]) -> tuple[str, int]:
    counted = _Hashing(out)
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=counted, compresslevel=9, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        raw_manifest = manifest.to_json()
        tar.addfile(_member(MANIFEST_NAME, len(raw_manifest)), io.BytesIO(raw_manifest))
        for arcname in sorted(files):
            with files[arcname].open("rb") as stream:
                size = os.fstat(stream.fileno()).st_size
                hashing = _Hashing(stream)
                tar.addfile(_member(arcname, size), hashing)  # type: ignore[arg-type]
                if hashing.digest.hexdigest() != manifest.files[arcname]:
                    raise ConfigError(f"{arcname} changed while it was being packaged; retry")
    return counted.digest.hexdigest(), counted.size_bytes


def build_package(
    handler: Path,
    *,
    includes: Sequence[Path] = (),
    overrides: Mapping[str, Any] = {},
    out: Path | BinaryIO,
    created_at: datetime | None = None,
    limits: PackageLimits = DEFAULT_LIMITS,
) -> PackageInfo:
    """Package `handler` (the entry module) and `includes` into a .tar.gz written to `out`.

    `overrides` are the CLI's settings by MemoryService argument name (None = not given);
    they win over the code, and each one that replaces a different value becomes a
    warning. `created_at` defaults to SOURCE_DATE_EPOCH, else the newest file's mtime, so
    unchanged files rebuild to the same sha256. Raises ConfigError naming what to fix.
    """
    if handler.suffix != ".py" or not handler.is_file():
        raise ConfigError(f"{handler} must be an existing .py file")
    service, warnings = resolve_service(handler, overrides)
    script = read_script_metadata(handler.read_text(encoding="utf-8"), filename=handler.name)
    files = _collect_files(handler, includes, limits)
    try:
        manifest = Manifest.from_dict(
            {
                "format": FORMAT_VERSION,
                "service": service.name,
                "entry": handler.name,
                "config": service.config().to_dict(),
                "dependencies": list(script.dependencies),
                "requires_python": script.requires_python,
                "files": {arcname: _sha256_file(path) for arcname, path in files.items()},
                "memrun_version": memrun.__version__,
                "created_at": (created_at.isoformat() if created_at else _created_at(files)),
            },
            max_name_length=limits.max_name_length,
        )
    except PackageRejected as exc:
        raise ConfigError(exc.message, details=exc.details) from None
    if not isinstance(out, Path):
        sha256, size_bytes = _write_archive(out, manifest, files)
        return PackageInfo(sha256, size_bytes, manifest, tuple(warnings))
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as stream:
            sha256, size_bytes = _write_archive(stream, manifest, files)
        os.chmod(temp_name, 0o644)
        os.replace(temp_name, out)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return PackageInfo(sha256, size_bytes, manifest, tuple(warnings))
