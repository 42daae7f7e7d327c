"""Per-partition completion tracking, and when to commit.

Messages of one partition finish in any order; Kafka stores one offset per partition. A
`PartitionTracker` remembers the submission order and exposes the end of the contiguous
finished prefix, so a commit never passes an unfinished message (invariant I2).
Trackers are owned by the poll thread: no locks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, TopicPartition


class PartitionTracker:
    """Submitted offsets of one assigned partition, in order, and which of them finished.

    `committable` is the offset to commit (last finished-prefix offset + 1), or -1 while
    the first submitted message is unfinished. Offsets need not be contiguous (compacted
    topics, transaction markers): only submission order matters.
    """

    __slots__ = ("_done", "_order", "committable", "committed", "partition", "topic")

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        self._order: deque[int] = deque()
        self._done: set[int] = set()
        self.committable = -1
        self.committed = -1

    def submitted(self, offset: int) -> None:
        if self._order and offset <= self._order[-1]:
            raise ValueError(
                f"{self.topic}[{self.partition}]: offset {offset} submitted after "
                f"{self._order[-1]}; offsets must increase"
            )
        self._order.append(offset)

    def finished(self, offset: int) -> None:
        order, done = self._order, self._done
        if not order or offset < order[0]:
            return  # already past the prefix: a duplicate completion
        done.add(offset)
        while order and order[0] in done:
            head = order.popleft()
            done.discard(head)
            self.committable = head + 1

    @property
    def outstanding(self) -> int:
        """Submitted messages not yet behind the committable point."""
        return len(self._order)

    @property
    def unfinished(self) -> int:
        """Submitted messages whose completion has not been reported."""
        return len(self._order) - len(self._done)

    def needs_commit(self) -> bool:
        return self.committable > self.committed


@dataclass(frozen=True)
class CommitPolicy:
    """Commit at most every `interval_s` (seconds, monotonic clock); revoke and shutdown
    commit regardless."""

    interval_s: float = 1.0

    def due(self, *, last_commit_s: float, now_s: float) -> bool:
        return now_s - last_commit_s >= self.interval_s


def commit_finished(
    consumer: Consumer, trackers: Iterable[PartitionTracker], *, sync: bool
) -> str | None:
    """Commit each tracker's finished prefix that moved since its last commit, with
    explicit offsets (never a bare commit, which would store whatever was consumed).
    Returns what went wrong, if anything; a failed partition is retried next time."""
    due = [t for t in trackers if t.needs_commit()]
    if not due:
        return None
    offsets = [TopicPartition(t.topic, t.partition, t.committable) for t in due]
    try:
        if sync:
            results = consumer.commit(offsets=offsets, asynchronous=False)
            failed = {(tp.topic, tp.partition): str(tp.error) for tp in results or () if tp.error}
        else:
            consumer.commit(offsets=offsets, asynchronous=True)
            failed = {}
    except KafkaException as exc:
        return str(exc)
    for tracker in due:
        if (tracker.topic, tracker.partition) not in failed:
            tracker.committed = tracker.committable
    return "; ".join(f"{t}:{p}: {e}" for (t, p), e in sorted(failed.items())) or None
