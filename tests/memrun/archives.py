"""A corpus of hostile packages for safe package reading (I7), and the check that one
is refused everywhere with nothing written (`assert_refused`)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import random
import tarfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from memrun.errors import MemrunError, PackageRejected
from memrun.wire.archive import (
    DEFAULT_LIMITS,
    PackageLimits,
    extract_package,
    inspect_package,
)

HANDLER = b"""from memrun import MemoryService

svc = MemoryService("demo-svc")


@svc.handler()
def run(ctx, request):
    return request
"""
CONFIG = {
    "name": "demo-svc",
    "memory_bytes": 4 * 2**30,
    "disk_bytes": 50 * 2**30,
    "max_workers": 1,
    "min_workers": 1,
    "concurrency": 16,
    "timeout_seconds": 300,
    "sticky_key": None,
}
GiB = 2**30
Member = tuple[tarfile.TarInfo, bytes]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_for(files: dict[str, bytes], **changes: object) -> bytes:
    data: dict[str, object] = {
        "format": 1,
        "service": "demo-svc",
        "entry": "handler.py",
        "config": CONFIG,
        "dependencies": [],
        "requires_python": None,
        "files": {name: sha256(content) for name, content in files.items()},
        "memrun_version": "0.1.0",
        "created_at": "2025-01-01T00:00:00+00:00",
    }
    data.update(changes)
    return json.dumps(data).encode()


def member(
    name: str, data: bytes = b"", *, kind: bytes = tarfile.REGTYPE, **attrs: object
) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def tar_gz(members: Sequence[Member], *, fmt: int = tarfile.PAX_FORMAT, **options: object) -> bytes:
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=fmt, **options) as tar,
    ):
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def package(
    extra: Sequence[Member] = (),
    *,
    files: dict[str, bytes] | None = None,
    manifest: bytes | None = None,
    fmt: int = tarfile.PAX_FORMAT,
) -> bytes:
    """A valid package plus `extra` members, so each case is refused for its own reason."""
    files = {"handler.py": HANDLER} if files is None else files
    raw_manifest = manifest_for(files) if manifest is None else manifest
    members = [member("manifest.json", raw_manifest)]
    members += [member(name, content) for name, content in files.items()]
    return tar_gz([*members, *extra], fmt=fmt)


def gzip_members(parts: Sequence[bytes]) -> bytes:
    return b"".join(gzip.compress(part, mtime=0) for part in parts)


def hundred_thousand_members() -> bytes:
    """100k empty files; headers patched from one template, as tobuf() is slow."""
    template = bytearray(tarfile.TarInfo("f/000000").tobuf(tarfile.USTAR_FORMAT))
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, compresslevel=1) as gz:
        for index in range(100_000):
            template[2:8] = b"%06d" % index
            template[148:156] = b" " * 8
            template[148:156] = b"%06o\0 " % sum(template)
            gz.write(template)
        gz.write(bytes(1024))
    return buffer.getvalue()


def zip_file() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("manifest.json", "{}")
    return buffer.getvalue()


def with_bad_checksum() -> bytes:
    raw = gzip.decompress(package())
    return gzip.compress(raw[:10] + b"X" + raw[11:], mtime=0)


def valid() -> bytes:
    return package()


def cases() -> list[tuple[str, Callable[[], bytes], str, str]]:
    """(id, archive, reason, a phrase the message must hold)."""
    outside = "/tmp/memrun-outside-target"
    return [
        ("dotdot", lambda: package([member("../x.py", b"x")]), "path_traversal", "'../x.py'"),
        ("dotdot-deep", lambda: package([member("a/../../x", b"x")]), "path_traversal", ".."),
        ("absolute", lambda: package([member("/etc/cron.d/x", b"x")]), "absolute_path", "absolute"),
        ("dot", lambda: package([member("./x.py", b"x")]), "bad_name", "'./x.py'"),
        ("backslash", lambda: package([member("..\\x.py", b"x")]), "bad_name", "backslash"),
        ("newline", lambda: package([member("a\nb.py", b"x")]), "bad_name", "control"),
        (
            "nul-in-pax",
            lambda: package([member("x", pax_headers={"path": "a\0b"})]),
            "bad_name",
            "NUL",
        ),
        ("empty-name", lambda: package([member("", b"x")]), "bad_name", "empty"),
        (
            "symlink",
            lambda: package([member("lnk", kind=tarfile.SYMTYPE, linkname="/etc")]),
            "link",
            "symbolic link",
        ),
        (
            "link-then-file-through-link",
            lambda: package(
                [member("d", kind=tarfile.SYMTYPE, linkname=outside), member("d/evil.py", b"x")]
            ),
            "link",
            "'d'",
        ),
        (
            "symlink-chain",
            lambda: package(
                [
                    member("a", kind=tarfile.SYMTYPE, linkname="b"),
                    member("b", kind=tarfile.SYMTYPE, linkname="../../etc"),
                ]
            ),
            "link",
            "'a'",
        ),
        (
            "hardlink",
            lambda: package([member("h", kind=tarfile.LNKTYPE, linkname="handler.py")]),
            "link",
            "hard link",
        ),
        (
            "hardlink-out",
            lambda: package([member("h", kind=tarfile.LNKTYPE, linkname="/etc/passwd")]),
            "link",
            "hard link",
        ),
        (
            "chardev",
            lambda: package([member("null", kind=tarfile.CHRTYPE, devmajor=1, devminor=3)]),
            "device",
            "character device",
        ),
        (
            "blockdev",
            lambda: package([member("sda", kind=tarfile.BLKTYPE, devmajor=8)]),
            "device",
            "block device",
        ),
        ("fifo", lambda: package([member("pipe", kind=tarfile.FIFOTYPE)]), "fifo", "FIFO"),
        (
            "gnu-longname",
            lambda: package([member("n" * 150, b"x")], fmt=tarfile.GNU_FORMAT),
            "unsupported_member",
            "GNU long name",
        ),
        (
            "gnu-sparse",
            lambda: package([member("s", kind=tarfile.GNUTYPE_SPARSE)], fmt=tarfile.GNU_FORMAT),
            "unsupported_member",
            "sparse",
        ),
        (
            "pax-sparse",
            lambda: package([member("s", b"x", pax_headers={"GNU.sparse.major": "1"})]),
            "unsupported_member",
            "sparse",
        ),
        (
            "global-pax",
            lambda: tar_gz([member("a", b"")], pax_headers={"comment": "x"}),
            "unsupported_member",
            "global pax",
        ),
        ("long-name", lambda: package([member("n" * 300, b"x")]), "name_too_long", "300 bytes"),
        (
            "huge-name",
            lambda: package([member("n" * 100_000, b"x")]),
            "name_too_long",
            "pax header",
        ),
        ("duplicate", lambda: package([member("handler.py", HANDLER)]), "duplicate", "twice"),
        (
            "second-manifest",
            lambda: package([member("manifest.json", manifest_for({"handler.py": HANDLER}))]),
            "duplicate",
            "'manifest.json' appears twice",
        ),
        (
            "file-then-under-it",
            lambda: package([member("lib", b"x"), member("lib/x.py", b"")]),
            "duplicate",
            "'lib'",
        ),
        (
            "dir-then-file",
            lambda: package([member("lib", kind=tarfile.DIRTYPE), member("lib", b"")]),
            "duplicate",
            "twice",
        ),
        ("100k-members", hundred_thousand_members, "too_many_members", "10000"),
        (
            "no-manifest",
            lambda: tar_gz([member("handler.py", HANDLER)]),
            "manifest_missing",
            "manifest.json",
        ),
        ("manifest-not-json", lambda: package(manifest=b"{"), "manifest_invalid", "JSON"),
        ("manifest-deep", lambda: package(manifest=b"[" * 200_000), "manifest_invalid", "JSON"),
        (
            "manifest-dup-key",
            lambda: package(manifest=b'{"format": 1, "format": 1}'),
            "manifest_invalid",
            "duplicate key",
        ),
        (
            "manifest-keys",
            lambda: package(manifest=b'{"format": 1}'),
            "manifest_invalid",
            "missing keys",
        ),
        (
            "manifest-format",
            lambda: package(manifest=manifest_for({"handler.py": HANDLER}, format=2)),
            "manifest_invalid",
            "format",
        ),
        (
            "manifest-service-name",
            lambda: package(manifest=manifest_for({"handler.py": HANDLER}, service="Bad_Name")),
            "manifest_invalid",
            "config.name",
        ),
        (
            "manifest-config",
            lambda: package(
                manifest=manifest_for({"handler.py": HANDLER}, config={**CONFIG, "min_workers": 5})
            ),
            "manifest_invalid",
            "min_workers",
        ),
        (
            "manifest-entry-not-py",
            lambda: package(
                files={"handler.txt": HANDLER},
                manifest=manifest_for({"handler.txt": HANDLER}, entry="handler.txt"),
            ),
            "manifest_invalid",
            "'handler.txt'",
        ),
        (
            "manifest-entry-missing",
            lambda: package(manifest=manifest_for({"handler.py": HANDLER}, entry="other.py")),
            "manifest_invalid",
            "'other.py'",
        ),
        (
            "manifest-option-as-dependency",
            lambda: package(
                manifest=manifest_for(
                    {"handler.py": HANDLER}, dependencies=["--index-url=http://evil"]
                )
            ),
            "manifest_invalid",
            "dependencies",
        ),
        (
            "manifest-lists-traversal",
            lambda: package(manifest=manifest_for({"handler.py": HANDLER, "../x": b""})),
            "manifest_invalid",
            "'../x'",
        ),
        (
            "hash-mismatch",
            lambda: package(
                files={"handler.py": HANDLER},
                manifest=manifest_for({"handler.py": HANDLER + b"# changed"}),
            ),
            "hash_mismatch",
            "'handler.py'",
        ),
        (
            "unlisted-file",
            lambda: package([member("extra.py", b"x")]),
            "unlisted_file",
            "'extra.py'",
        ),
        (
            "missing-file",
            lambda: package(manifest=manifest_for({"handler.py": HANDLER, "gone.py": b""})),
            "missing_file",
            "'gone.py'",
        ),
        ("truncated-half", lambda: valid()[: len(valid()) // 2], "truncated", "truncated"),
        ("truncated-trailer", lambda: valid()[:-4], "truncated", "truncated"),
        ("bad-checksum", with_bad_checksum, "corrupt", "checksum"),
        ("gzip-of-text", lambda: gzip.compress(b"hello " * 200, mtime=0), "corrupt", "tar header"),
        (
            "trailing-data",
            lambda: gzip.compress(gzip.decompress(valid()) + b"MZ" + bytes(510), mtime=0),
            "trailing_data",
            "after",
        ),
        (
            "random-bytes",
            lambda: b"\x00" + random.Random(7).randbytes(4095),
            "not_gzip",
            "not gzip",
        ),
        ("zip", zip_file, "not_gzip", "zip"),
        ("empty", lambda: b"", "empty", "empty"),
    ]


def tree(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


def assert_refused(
    tmp_path: Path, data: bytes, reason: str, phrase: str, limits: PackageLimits = DEFAULT_LIMITS
) -> None:
    """Refused by inspect (path and stream) and by extract; nothing left anywhere."""
    source = tmp_path / "package.tar.gz"
    source.write_bytes(data)
    dest = tmp_path / "packages"
    dest.mkdir()
    outside = Path("/tmp/memrun-outside-target")
    before = tree(tmp_path)
    refusals = []
    with pytest.raises(PackageRejected) as by_path:
        inspect_package(source, limits=limits)
    refusals.append(by_path.value)
    with source.open("rb") as stream, pytest.raises(PackageRejected) as by_stream:
        inspect_package(stream, limits=limits)
    refusals.append(by_stream.value)
    with pytest.raises(PackageRejected) as by_extract:
        extract_package(source, dest, limits=limits)
    refusals.append(by_extract.value)
    for refusal in refusals:
        assert refusal.reason == reason, str(refusal)
        assert phrase in str(refusal), str(refusal)
        assert refusal.details["reason"] == reason
        assert isinstance(refusal, MemrunError)
    assert list(dest.iterdir()) == []
    assert tree(tmp_path) == before
    assert not outside.exists()


ZEROS_CHUNK_BYTES = 64 * 2**20


def zeros_gzip(size_bytes: int) -> bytes:
    """`size_bytes` of zeros as concatenated gzip members, built without holding them."""
    assert size_bytes % ZEROS_CHUNK_BYTES == 0
    return zeros_chunk_gzip() * (size_bytes // ZEROS_CHUNK_BYTES)


@functools.cache
def zeros_chunk_gzip() -> bytes:
    return gzip.compress(bytes(ZEROS_CHUNK_BYTES), compresslevel=9, mtime=0)


def header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(tarfile.PAX_FORMAT)
