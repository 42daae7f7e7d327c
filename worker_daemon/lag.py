"""Partition watermarks and group offsets for stats, fetched without blocking the loop.

Asking the consumer for watermarks blocks the poll thread, and on a single broker the
request also queues behind the consumer's own long-polling fetch. The probe asks through
a separate admin connection, returns at once, and picks up the answers on a later tick.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

TP = tuple[str, int]
REQUEST_TIMEOUT_S = 10.0


class LagProbe:
    """`refresh(partitions)` collects the last round's answers and starts the next one;
    `high`, `low` and `committed` (the group's; -1: none yet) hold the latest answers."""

    def __init__(self, admin: AdminClient, group: str) -> None:
        self._admin = admin
        self._group = group
        self._pending: list[tuple[dict[TP, int] | None, TP | None, Future[Any]]] = []
        self.high: dict[TP, int] = {}
        self.low: dict[TP, int] = {}
        self.committed: dict[TP, int] = {}

    def refresh(self, partitions: list[TP]) -> None:
        if self._pending:
            if not all(future.done() for _, _, future in self._pending):
                return
            self._collect()
        if not partitions:
            return
        tps = [TopicPartition(topic, partition) for topic, partition in partitions]
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        earliest = OffsetSpec.earliest()  # type: ignore[no-untyped-call]
        for target, spec in ((self.high, latest), (self.low, earliest)):
            futures = self._admin.list_offsets(
                {tp: spec for tp in tps}, request_timeout=REQUEST_TIMEOUT_S
            )
            self._pending.extend(
                (target, (tp.topic, tp.partition), future) for tp, future in futures.items()
            )
        groups = self._admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(self._group, tps)], request_timeout=REQUEST_TIMEOUT_S
        )
        self._pending.extend((None, None, future) for future in groups.values())

    def _collect(self) -> None:
        pending, self._pending = self._pending, []
        for target, key, future in pending:
            try:
                result = future.result()
            except KafkaException:
                continue  # stale numbers until the next round
            if target is not None and key is not None:
                target[key] = result.offset
            else:
                for tp in result.topic_partitions:
                    self.committed[(tp.topic, tp.partition)] = max(tp.offset, -1)
