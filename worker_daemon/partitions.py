"""An assigned partition's state, and the lag reported for it.

Created on assignment, dropped on revoke or loss. A revoked partition's tracker may
still receive completions from jobs that were running: nothing reads it any more.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaException, TopicPartition

from worker_daemon.lag import LagProbe
from worker_daemon.offsets import PartitionTracker

TP = tuple[str, int]


@dataclass(eq=False)
class AssignedPartition:
    """An assigned partition: completion tracking plus what stats and redelivery need.

    `redelivery_below`: messages under the partition's high watermark at our first fetch
    may have been handled by a previous owner, so their outcome is looked up first.
    """

    topic: str
    partition: int
    tracker: PartitionTracker = field(init=False)
    redelivery_below: int | None = None
    high: int | None = None
    low: int | None = None
    group_committed: int | None = None

    def __post_init__(self) -> None:
        self.tracker = PartitionTracker(self.topic, self.partition)

    def topic_partition(self, offset: int = -1001) -> TopicPartition:
        return TopicPartition(self.topic, self.partition, offset)

    def lag(self) -> int | None:
        """Messages not yet committed: high watermark - committed (ours or the group's,
        else the low watermark, where a new group starts)."""
        known = [
            c for c in (self.tracker.committed, self.group_committed) if c is not None and c >= 0
        ]
        base = max(known) if known else self.low
        if self.high is None or base is None:
            return None
        return max(self.high - base, 0)


def refresh_lag(owned: dict[TP, AssignedPartition], probe: LagProbe, consumer: Consumer) -> None:
    """Take the probe's latest answers (and start its next round) for every partition."""
    probe.refresh(list(owned))
    for key, partition in owned.items():
        partition.group_committed = probe.committed.get(key, partition.group_committed)
        partition.low = probe.low.get(key, partition.low)
        high = probe.high.get(key, -1)
        try:
            # Fresher while fetching; the probe's answer is what counts while paused.
            cached = consumer.get_watermark_offsets(partition.topic_partition(), cached=True)
        except KafkaException:
            cached = None
        if cached is not None:
            high = max(high, cached[1])
        if high >= 0:
            partition.high = high
