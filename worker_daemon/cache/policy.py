"""Which cached file to evict: LRU in two segments, so one-off objects cannot flush the hot set.

New objects enter a small probation segment; a second access promotes them to the
protected segment. Eviction takes the least recently used object of probation while
probation (counting the object about to enter it) is over its share of the capacity,
else the least recently used protected object. Objects evicted from probation without a
second access are remembered in a bounded "ghost" set: if they come back they were not
one-offs after all and enter protected directly (the S3-FIFO idea, with LRU order).
"""

from __future__ import annotations

from collections import OrderedDict


class SegmentedLru:
    """Recency order and byte totals of the cached files. Pure bookkeeping, no I/O; not
    thread-safe (the disk tier calls it under its lock)."""

    def __init__(self, *, capacity_bytes: int, probation_fraction: float, ghost_entries: int):
        self._probation_target_bytes = int(capacity_bytes * probation_fraction)
        self._ghost_entries = ghost_entries
        self._probation: OrderedDict[str, int] = OrderedDict()
        self._protected: OrderedDict[str, int] = OrderedDict()
        self._ghost: OrderedDict[str, None] = OrderedDict()
        self.probation_bytes = 0
        self.protected_bytes = 0

    def add(self, url: str, size_bytes: int, *, protected: bool | None = None) -> bool:
        """Add `url` as most recently used; returns whether it went to protected.

        `protected=None` lets the policy decide (protected only when a ghost); loading
        the index at start passes the stored segment.
        """
        if protected is None:
            protected = url in self._ghost
        self._ghost.pop(url, None)
        if protected:
            self._protected[url] = size_bytes
            self.protected_bytes += size_bytes
        else:
            self._probation[url] = size_bytes
            self.probation_bytes += size_bytes
        return protected

    def touch(self, url: str) -> None:
        """Mark `url` most recently used, promoting it out of probation."""
        size = self._probation.pop(url, None)
        if size is not None:
            self.probation_bytes -= size
            self._protected[url] = size
            self.protected_bytes += size
        else:
            self._protected.move_to_end(url)

    def remove(self, url: str) -> None:
        """Forget `url` without remembering it as a ghost (it is being replaced)."""
        size = self._probation.pop(url, None)
        if size is not None:
            self.probation_bytes -= size
            return
        size = self._protected.pop(url, None)
        if size is not None:
            self.protected_bytes -= size

    def next_victim(self, *, incoming_probation_bytes: int) -> str | None:
        """The URL to evict next to make room, or None when nothing is left."""
        over_share = self.probation_bytes + incoming_probation_bytes > self._probation_target_bytes
        if self._probation and (over_share or not self._protected):
            return next(iter(self._probation))
        if self._protected:
            return next(iter(self._protected))
        return None

    def evict(self, url: str) -> None:
        """Forget `url` because it was evicted; a probation victim becomes a ghost."""
        size = self._probation.pop(url, None)
        if size is None:
            self.remove(url)
            return
        self.probation_bytes -= size
        self._ghost[url] = None
        if len(self._ghost) > self._ghost_entries:
            self._ghost.popitem(last=False)

    def is_ghost(self, url: str) -> bool:
        return url in self._ghost

    def is_protected(self, url: str) -> bool:
        return url in self._protected
