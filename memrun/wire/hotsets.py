"""Hot sets on the wire: what a worker's requests read per partition, in its heartbeats.

A worker reports `hot_sets` ({"partition": [[url, size_bytes, version, last_access_s],
...]}, newest first, bounded in bytes: worker_daemon/report.py); the control plane keeps
it with the worker's stats and hands the hot sets of a partition to its next owner
(GET /api/v1/workers/{name}/handoff), which prefetches them (worker_daemon/handoff.py).
An entry is a hint: the new owner revalidates each object against its source.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

URL_MAX_CHARS = 1024


@dataclass(frozen=True, slots=True)
class HotEntry:
    """One object a partition's requests read: `last_access_s` is wall-clock time, so
    entries of different workers compare."""

    partition: int
    url: str
    size_bytes: int
    version: str
    last_access_s: float

    def to_wire(self) -> list[Any]:
        """The compact form heartbeats carry: [url, size_bytes, version, last_access_s]."""
        return [self.url, self.size_bytes, self.version, round(self.last_access_s, 3)]

    @classmethod
    def from_wire(cls, partition: int, item: Any) -> HotEntry | None:
        """The entry in `item` (`to_wire`'s form), or None when it is not one."""
        if not isinstance(item, list | tuple) or len(item) != 4:
            return None
        url, size, version, last = item
        if (
            not isinstance(url, str)
            or not url
            or len(url) > URL_MAX_CHARS
            or isinstance(size, bool)
            or not isinstance(size, int)
            or size < 0
            or not isinstance(version, str)
            or isinstance(last, bool)
            or not isinstance(last, int | float)
        ):
            return None
        return cls(partition, url, size, version, float(last))


def hot_entries_from_wire(hot_sets: Mapping[str, Any]) -> list[HotEntry]:
    """Entries of a heartbeat's `hot_sets` ({"partition": [wire entry, ...]}); what is
    not well-formed is left out."""
    entries: list[HotEntry] = []
    for key, items in hot_sets.items():
        try:
            partition = int(key)
        except (TypeError, ValueError):
            continue
        if not isinstance(items, list):
            continue
        entries.extend(e for item in items if (e := HotEntry.from_wire(partition, item)))
    return entries
