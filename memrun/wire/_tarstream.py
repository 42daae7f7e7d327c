"""A bounded reader for the one tar subset a package may use (ustar/pax, files, folders).

The format is parsed here, not by `tarfile`: tarfile reads GNU long-name and pax records
whole into memory and resolves links, and its extraction filters have had bypasses. This
reader refuses every other member type by name, parses pax records from a bounded
buffer, and counts every compressed byte it reads and every byte it inflates against
`PackageLimits`, so a bomb stops at the cap without being held in memory.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from memrun.errors import PackageRejected
from memrun.wire.manifest import member_name_problem

_BLOCK = 512
_CHUNK = 64 * 1024
_MAX_PAX_BYTES = 64 * 1024
_PAX_UTF8 = "ISO-IR 10646 2000 UTF-8"
_REGULAR = (b"0", b"\0")
_DIRECTORY = b"5"
_PAX = b"x"
_REFUSED_TYPES = {
    b"1": ("link", "a hard link"),
    b"2": ("link", "a symbolic link"),
    b"3": ("device", "a character device"),
    b"4": ("device", "a block device"),
    b"6": ("fifo", "a FIFO"),
    b"7": ("unsupported_member", "a contiguous file"),
    b"g": ("unsupported_member", "a global pax header"),
    b"K": ("unsupported_member", "a GNU long link name"),
    b"L": ("unsupported_member", "a GNU long name"),
    b"S": ("unsupported_member", "a GNU sparse file"),
}
_ALLOWED = "a package holds only regular files and folders"


@dataclass(frozen=True)
class PackageLimits:
    """Bounds on a package; `max_inflated_bytes` counts every byte the gzip stream yields."""

    max_archive_bytes: int = 100 * 2**20
    max_inflated_bytes: int = 2**30
    max_file_bytes: int = 512 * 2**20
    max_members: int = 10_000
    max_name_length: int = 255
    max_manifest_bytes: int = 4 * 2**20


DEFAULT_LIMITS = PackageLimits()


def shown_name(name: str) -> str:
    return repr(name if len(name) <= 120 else name[:120] + "...")


class _Compressed:
    """The archive's own bytes, counted against the limit and hashed as gzip reads them."""

    def __init__(self, stream: BinaryIO, head: bytes, limit_bytes: int) -> None:
        self._stream = stream
        self._head = head
        self._limit_bytes = limit_bytes
        self.size_bytes = 0
        self.digest = hashlib.sha256()

    def read(self, size: int) -> bytes:
        if self._head:
            data, self._head = self._head[:size], self._head[size:]
        else:
            data = self._stream.read(size)
        self.size_bytes += len(data)
        if self.size_bytes > self._limit_bytes:
            raise PackageRejected(
                "archive_too_large",
                f"the package is larger than {self._limit_bytes} bytes",
                details={"limit_bytes": self._limit_bytes},
            )
        self.digest.update(data)
        return data

    def seek(self, offset: int, /) -> int:
        raise io.UnsupportedOperation("a package is read once, front to back")


class _Inflated:
    """The tar stream inside the gzip, counted against max_inflated_bytes as it inflates."""

    def __init__(self, compressed: _Compressed, limits: PackageLimits) -> None:
        self._gzip = gzip.GzipFile(fileobj=compressed, mode="rb")
        self._limit_bytes = limits.max_inflated_bytes
        self.size_bytes = 0

    def read(self, size: int, *, what: str) -> bytes:
        """Up to `size` bytes, fewer only at the end of the stream."""
        try:
            data = self._gzip.read(size)
        except EOFError:
            raise PackageRejected(
                "truncated", f"the archive is truncated: it ends inside {what}"
            ) from None
        except (OSError, zlib.error) as exc:
            raise PackageRejected(
                "corrupt", f"the archive is corrupt inside {what}: {exc}"
            ) from None
        self.size_bytes += len(data)
        if self.size_bytes > self._limit_bytes:
            raise PackageRejected(
                "inflated_too_large",
                f"the archive inflates past {self._limit_bytes} bytes (at {what})",
                details={"limit_bytes": self._limit_bytes},
            )
        return data

    def read_exact(self, size: int, *, what: str) -> bytes:
        data = self.read(size, what=what)
        while len(data) < size:
            more = self.read(size - len(data), what=what)
            if not more:
                raise PackageRejected(
                    "truncated", f"the archive is truncated: it ends inside {what}"
                )
            data += more
        return data

    def skip(self, size: int, *, what: str) -> None:
        while size > 0:
            size -= len(self.read_exact(min(size, _CHUNK), what=what))


@dataclass(frozen=True)
class Member:
    name: str
    is_dir: bool
    size: int


def _field_str(raw: bytes, *, what: str) -> str:
    try:
        return raw.split(b"\0", 1)[0].decode("utf-8")
    except UnicodeDecodeError:
        raise PackageRejected("bad_name", f"{what}: a name that is not UTF-8") from None


def _field_int(raw: bytes, *, what: str, field: str) -> int:
    digits = raw.replace(b"\0", b" ").strip()
    if not digits:
        return 0
    if not all(48 <= byte <= 55 for byte in digits):
        raise PackageRejected("corrupt", f"{what}: the tar header's {field} is not octal")
    return int(digits, 8)


def _parse_pax(data: bytes, *, what: str) -> dict[str, str]:
    """Records "LEN KEY=VALUE\\n"; only path and size matter, sparse files are refused."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        length_text = data[pos:space] if space > pos else b""
        end = pos + int(length_text) if length_text.isdigit() else -1
        key, sep, value = data[space + 1 : end - 1].partition(b"=")
        if end <= space + 1 or end > len(data) or data[end - 1] != 10 or not sep:
            raise PackageRejected("corrupt", f"{what}: a malformed pax record")
        try:
            records[key.decode("utf-8")] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise PackageRejected("bad_name", f"{what}: a pax record that is not UTF-8") from None
        pos = end
    if any(key.startswith("GNU.sparse.") for key in records):
        raise PackageRejected("unsupported_member", f"{what}: a sparse file; {_ALLOWED}")
    if records.get("hdrcharset", _PAX_UTF8) != _PAX_UTF8:
        raise PackageRejected("bad_name", f"{what}: a name that is not UTF-8")
    return records


class TarReader:
    """Yields members one by one; `data(member)` streams the current member's bytes."""

    def __init__(self, compressed: _Compressed, limits: PackageLimits) -> None:
        self._compressed = compressed
        self._in = _Inflated(compressed, limits)
        self._limits = limits
        self._unread = 0
        self._declared_bytes = 0

    def members(self) -> Iterator[Member]:
        count = 0
        pax: dict[str, str] | None = None
        while True:
            self._in.skip(self._unread, what="the previous member's data")
            self._unread = 0
            what = f"member #{count + 1}"
            block = self._in.read_exact(_BLOCK, what=f"the header of {what}")
            if block == bytes(_BLOCK):
                if pax is not None:
                    raise PackageRejected("corrupt", f"{what}: a pax header with no member")
                self._check_trailer()
                return
            typeflag, name, size = self._parse_header(block, what=what)
            if typeflag == _PAX:
                if pax is not None:
                    raise PackageRejected("corrupt", f"{what}: two pax headers in a row")
                if size > _MAX_PAX_BYTES:
                    raise PackageRejected(
                        "name_too_long",
                        f"{what}: a pax header of {size} bytes (the limit is {_MAX_PAX_BYTES})",
                    )
                data = self._in.read_exact(size + (-size % _BLOCK), what=f"{what}'s pax header")
                pax = _parse_pax(data[:size], what=what)
                continue
            if pax is not None:
                name = pax.get("path", name)
                size = self._pax_size(pax, size, what=what)
                pax = None
            count += 1
            shown = f"member {shown_name(name)}"
            if count > self._limits.max_members:
                raise PackageRejected(
                    "too_many_members",
                    f"the package has more than {self._limits.max_members} members",
                    details={"limit": self._limits.max_members},
                )
            member = self._checked_member(typeflag, name, size, shown=shown)
            self._unread = size + (-size % _BLOCK)
            yield member

    def finish(self) -> str:
        """After `members()` is exhausted: the archive's sha256, once no byte is left over."""
        if self._compressed.read(1):
            raise PackageRejected("trailing_data", "the package has bytes after its gzip data")
        return self._compressed.digest.hexdigest()

    def data(self, member: Member) -> Iterator[bytes]:
        """The member's bytes in chunks; call right after `members()` yields it."""
        remaining = member.size
        while remaining:
            chunk = self._in.read_exact(min(remaining, _CHUNK), what=shown_name(member.name))
            remaining -= len(chunk)
            self._unread -= len(chunk)
            yield chunk

    def _parse_header(self, block: bytes, *, what: str) -> tuple[bytes, str, int]:
        stored = _field_int(block[148:156], what=what, field="checksum")
        if stored != sum(block[:148]) + 8 * 32 + sum(block[156:]):
            raise PackageRejected("corrupt", f"{what}: a tar header with a bad checksum")
        magic = block[257:265]
        if magic not in (b"ustar\x0000", b"ustar  \x00"):
            raise PackageRejected("corrupt", f"{what}: not a ustar/pax tar header")
        name = _field_str(block[0:100], what=what)
        prefix = _field_str(block[345:500], what=what) if magic == b"ustar\x0000" else ""
        if prefix:
            name = f"{prefix}/{name}"
        return block[156:157], name, _field_int(block[124:136], what=what, field="size")

    def _pax_size(self, pax: dict[str, str], size: int, *, what: str) -> int:
        if "size" not in pax:
            return size
        if not pax["size"].isdigit():
            raise PackageRejected("corrupt", f"{what}: a pax size that is not a number")
        return int(pax["size"])

    def _checked_member(self, typeflag: bytes, name: str, size: int, *, shown: str) -> Member:
        if typeflag in _REFUSED_TYPES:
            reason, kind = _REFUSED_TYPES[typeflag]
            raise PackageRejected(
                reason, f"{shown} is {kind}; {_ALLOWED}", details={"member": name[:200]}
            )
        if typeflag not in (*_REGULAR, _DIRECTORY):
            raise PackageRejected(
                "unsupported_member",
                f"{shown} has tar type {typeflag!r}; {_ALLOWED}",
                details={"member": name[:200]},
            )
        is_dir = typeflag == _DIRECTORY
        if is_dir and name.endswith("/"):
            name = name[:-1]
        problem = member_name_problem(name, max_name_length=self._limits.max_name_length)
        if problem is not None:
            reason, phrase = problem
            raise PackageRejected(reason, f"{shown} has {phrase}", details={"member": name[:200]})
        if is_dir and size:
            raise PackageRejected("corrupt", f"{shown} is a folder with data")
        if size > self._limits.max_file_bytes:
            raise PackageRejected(
                "file_too_large",
                f"{shown} is {size} bytes; the limit per file is {self._limits.max_file_bytes}",
                details={"member": name[:200], "limit_bytes": self._limits.max_file_bytes},
            )
        self._declared_bytes += size
        if self._declared_bytes > self._limits.max_inflated_bytes:
            raise PackageRejected(
                "inflated_too_large",
                f"the files add up to more than {self._limits.max_inflated_bytes} bytes "
                f"(at {shown})",
                details={"limit_bytes": self._limits.max_inflated_bytes},
            )
        return Member(name=name, is_dir=is_dir, size=size)

    def _check_trailer(self) -> None:
        """After the end-of-archive block only zero padding may follow, up to the gzip end."""
        while chunk := self._in.read(_CHUNK, what="the end-of-archive padding"):
            if chunk.count(0) != len(chunk):
                raise PackageRejected(
                    "trailing_data", "the archive has data after its end-of-archive marker"
                )


@contextlib.contextmanager
def open_tar(source: Path | BinaryIO, limits: PackageLimits) -> Iterator[TarReader]:
    """A reader over a .tar.gz file or stream; refuses empty, zip and non-gzip data by name."""
    with contextlib.ExitStack() as stack:
        if isinstance(source, Path):
            stream: BinaryIO = stack.enter_context(source.open("rb"))
            if os.fstat(stream.fileno()).st_size > limits.max_archive_bytes:
                raise PackageRejected(
                    "archive_too_large",
                    f"the package is larger than {limits.max_archive_bytes} bytes",
                    details={"limit_bytes": limits.max_archive_bytes},
                )
        else:
            stream = source
        head = stream.read(2)
        if len(head) == 1:
            head += stream.read(1)
        if not head:
            raise PackageRejected("empty", "the package is an empty file")
        if head == b"PK":
            raise PackageRejected(
                "not_gzip", "the package is a zip file; expected a .tar.gz made by memrun deploy"
            )
        if head != b"\x1f\x8b":
            raise PackageRejected(
                "not_gzip", "the package is not gzip data; expected a .tar.gz made by memrun deploy"
            )
        yield TarReader(_Compressed(stream, head, limits.max_archive_bytes), limits)
