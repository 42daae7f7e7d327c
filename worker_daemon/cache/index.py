"""The LMDB index of cached files: url -> file name, size, version, access times, hits.

The index is the durable list of what the file store holds; it is written only after a
file is in place and cleared before a file is deleted, so it never names a partial file.
Keys are sha256 digests of the URL (LMDB keys are limited to 511 bytes, URLs are not).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import lmdb


@dataclass(slots=True)
class IndexRecord:
    """One cached object. `version` is the source's ETag (or mtime and size for files)."""

    url: str
    file_name: str
    size_bytes: int
    version: str
    fetched_at_s: float
    validated_at_s: float
    last_access_s: float
    hits: int = 0
    protected: bool = False

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> IndexRecord:
        return cls(**json.loads(raw))


class IndexFull(Exception):
    """The LMDB map reached its largest allowed size; the caller must evict and retry."""


class IndexCorrupt(Exception):
    """The index could not be opened or read; `Index.open` moves it aside."""


def url_key(url: str) -> bytes:
    return hashlib.sha256(url.encode()).digest()


class Index:
    """A single-writer LMDB environment holding `IndexRecord`s. Not thread-safe: the
    caller serialises calls (the disk tier holds its lock around every call)."""

    def __init__(self, env: lmdb.Environment, *, max_map_size_bytes: int) -> None:
        self._env = env
        self._max_map_size_bytes = max_map_size_bytes

    @classmethod
    def open(
        cls, path: Path, *, map_size_bytes: int, max_map_size_bytes: int
    ) -> tuple[Index, Path | None]:
        """Open the index at `path`, clearing stale readers left by dead processes.

        A corrupt or unreadable index is moved aside to `path.corrupt-<time>` and a fresh
        one is created; the moved-aside path is returned so the caller can log it.
        """
        try:
            index = cls._open_checked(path, map_size_bytes, max_map_size_bytes)
            return index, None
        except IndexCorrupt:
            aside = path.with_name(f"{path.name}.corrupt-{time.time_ns()}")
            path.rename(aside)
            return cls._open_checked(path, map_size_bytes, max_map_size_bytes), aside

    @classmethod
    def _open_checked(cls, path: Path, map_size_bytes: int, max_map_size_bytes: int) -> Index:
        path.mkdir(parents=True, exist_ok=True)
        try:
            env = lmdb.open(
                str(path), map_size=map_size_bytes, max_dbs=0, readahead=False, meminit=False
            )
        except lmdb.Error as exc:
            raise IndexCorrupt(str(exc)) from exc
        index = cls(env, max_map_size_bytes=max_map_size_bytes)
        try:
            env.reader_check()
            index.records()
        except (lmdb.Error, ValueError, TypeError, KeyError) as exc:
            env.close()
            raise IndexCorrupt(str(exc)) from exc
        return index

    def records(self) -> list[IndexRecord]:
        """Every record; raises on a record that does not decode (a corrupt index)."""
        with self._env.begin() as txn:
            return [IndexRecord.decode(bytes(raw)) for _, raw in txn.cursor()]

    def write(self, *, put: Iterable[IndexRecord] = (), delete: Iterable[str] = ()) -> None:
        """Put and delete records in one durable transaction, growing the map when full.

        Raises IndexFull when the map is at `max_map_size_bytes` and still too small.
        """
        puts = [(url_key(r.url), r.encode()) for r in put]
        deletes = [url_key(url) for url in delete]
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    for key in deletes:
                        txn.delete(key)
                    for key, value in puts:
                        txn.put(key, value)
                return
            except lmdb.MapFullError:
                self._grow()

    def _grow(self) -> None:
        current = self._env.info()["map_size"]
        if current >= self._max_map_size_bytes:
            raise IndexFull(f"cache index is at its largest size ({current} bytes)")
        self._env.set_mapsize(min(current * 2, self._max_map_size_bytes))

    def map_size_bytes(self) -> int:
        return int(self._env.info()["map_size"])

    def close(self) -> None:
        self._env.close()


def remove_moved_aside(path: Path, *, keep: int = 1) -> None:
    """Delete all but the newest `keep` moved-aside copies of the index at `path`."""
    aside = sorted(path.parent.glob(f"{path.name}.corrupt-*"))
    for old in aside[: max(len(aside) - keep, 0)]:
        shutil.rmtree(old, ignore_errors=True)
