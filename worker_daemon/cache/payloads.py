"""The payload files of the cache: written under tmp/, published into files/ by rename.

A file in files/ is always complete: it is written and fsynced under tmp/ first, then
renamed (atomic on one filesystem). Deletes tolerate a file that is already gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import cast

TEMP_SUFFIX = ".part"
SYNC_FILE_RANGE_WRITE = 2


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], function)


_SYNC_FILE_RANGE = _load_sync_file_range()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a just-written range to disk, without waiting
    (Linux sync_file_range; a no-op elsewhere). The fsync before publishing then finds
    most pages already clean instead of flushing the whole file at the end."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, length, SYNC_FILE_RANGE_WRITE)


class PayloadStore:
    """Files named by random tokens under `root/files`, temp files under `root/tmp`."""

    def __init__(self, root: Path) -> None:
        self.files_dir = root / "files"
        self.tmp_dir = root / "tmp"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def path_for(self, name: str) -> Path:
        return self.files_dir / name

    def create_temp(self, size_bytes: int) -> tuple[int, Path]:
        """A new temp file with `size_bytes` allocated up front, so a full disk fails here
        and not half-way through a download. Returns the open fd and its path.

        Raises OSError (ENOSPC for a full disk); nothing is left behind then.
        """
        path = self.tmp_dir / f"{uuid.uuid4().hex}{TEMP_SUFFIX}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            if size_bytes:
                _allocate(fd, size_bytes)
        except BaseException:
            os.close(fd)
            self.discard_temp(path)
            raise
        return fd, path

    def publish(self, fd: int, temp: Path) -> str:
        """Flush `temp` to disk, close it and rename it into files/; returns its name.

        The fd is closed whatever happens; on failure the temp file is removed.
        """
        name = temp.name.removesuffix(TEMP_SUFFIX)
        try:
            os.fdatasync(fd)
        except BaseException:
            os.close(fd)
            self.discard_temp(temp)
            raise
        os.close(fd)
        try:
            os.rename(temp, self.files_dir / name)
        except BaseException:
            self.discard_temp(temp)
            raise
        _fsync_dir(self.files_dir)
        return name

    def discard_temp(self, temp: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.files_dir / name).unlink()

    def clear_temps(self) -> int:
        """Delete every leftover temp file (from a crash); returns how many."""
        count = 0
        for leftover in self.tmp_dir.iterdir():
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
                count += 1
        return count

    def sizes(self) -> dict[str, int]:
        """Name -> size in bytes of every published file."""
        found: dict[str, int] = {}
        with os.scandir(self.files_dir) as entries:
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):
                    found[entry.name] = entry.stat(follow_symlinks=False).st_size
        return found


def _allocate(fd: int, size_bytes: int) -> None:
    try:
        os.posix_fallocate(fd, 0, size_bytes)
    except OSError as exc:
        # Filesystems without fallocate still get the right length; space then runs out
        # (if it does) during the writes, which fail the same way.
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        os.ftruncate(fd, size_bytes)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
