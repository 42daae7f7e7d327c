"""Partition watermarks and group offsets for stats, fetched without blocking the loop.

Asking the consumer for watermarks blocks the poll thread, and on a single broker the
request also queues behind the consumer's own long-polling fetch. The probe asks through
a separate admin connection, returns at once, and picks up the answers on a later tick.

The group's committed offsets are read by a consumer of the group that never subscribes,
on a thread of its own (`CommittedReader`), not by the admin client's
`list_consumer_group_offsets`: when the coordinator answers NOT_COORDINATOR or
COORDINATOR_NOT_AVAILABLE (a coordinator that moved, a broker still loading the group),
librdkafka 2.16's admin path asks the consumer-group handle to look the coordinator up
again, and an admin client has none: a NULL dereference in `rd_kafka_cgrp_op` on
librdkafka's own thread kills the process with no traceback (the control plane's lag
reading died so; apps/provisioning/lag.py). A consumer has the handle and retries itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

TP = tuple[str, int]
REQUEST_TIMEOUT_S = 10.0


class LagProbe:
    """`refresh(partitions)` collects the last round's answers and starts the next one;
    `high`, `low` and `committed` (the group's; -1: none yet) hold the latest answers."""

    def __init__(self, admin: AdminClient, committed: CommittedReader) -> None:
        self._admin = admin
        self._committed = committed
        self._pending: list[tuple[dict[TP, int], TP, Future[Any]]] = []
        self.high: dict[TP, int] = {}
        self.low: dict[TP, int] = {}
        self.committed: dict[TP, int] = {}

    def refresh(self, partitions: list[TP]) -> None:
        if self._pending:
            if not all(future.done() for _, _, future in self._pending):
                return
            self._collect()
        self.committed.update(self._committed.latest())
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
        self._committed.ask(partitions)

    def close(self) -> None:
        self._committed.close()

    def _collect(self) -> None:
        pending, self._pending = self._pending, []
        for target, key, future in pending:
            try:
                result = future.result()
            except KafkaException:
                continue  # stale numbers until the next round
            target[key] = result.offset


class CommittedReader:
    """The group's committed offsets of the partitions last asked for, read on a thread of
    its own by a consumer of the group that never subscribes (so it never joins or
    disturbs the group). `ask` and `latest` never block; the consumer is made, used and
    closed on that thread. A round that fails leaves the previous answers."""

    def __init__(self, make_consumer: Callable[[], Consumer]) -> None:
        self._make_consumer = make_consumer
        self._lock = threading.Condition()
        self._wanted: list[TP] | None = None
        self._answers: dict[TP, int] = {}
        self._closed = False
        self._thread: threading.Thread | None = None

    def ask(self, partitions: list[TP]) -> None:
        with self._lock:
            if self._closed:
                return
            self._wanted = list(partitions)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="memrun-committed", daemon=True
                )
                self._thread.start()
            self._lock.notify()

    def latest(self) -> dict[TP, int]:
        with self._lock:
            answers, self._answers = self._answers, {}
            return answers

    def close(self, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout_s)

    def _run(self) -> None:
        consumer = self._make_consumer()
        try:
            while True:
                with self._lock:
                    while self._wanted is None and not self._closed:
                        self._lock.wait()
                    if self._closed:
                        return
                    wanted, self._wanted = self._wanted or [], None
                tps = [TopicPartition(topic, partition) for topic, partition in wanted]
                try:
                    answered = consumer.committed(tps, timeout=REQUEST_TIMEOUT_S)
                except KafkaException:
                    continue  # stale numbers until the next round
                with self._lock:
                    for tp in answered:
                        if tp.error is None:
                            self._answers[(tp.topic, tp.partition)] = max(tp.offset, -1)
        finally:
            consumer.close()
