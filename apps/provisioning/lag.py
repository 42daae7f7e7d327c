"""A service's consumer lag, measured by the control plane from Kafka itself.

Lag of a partition = its end offset - the group's committed offset (from the earliest
offset when the group has not committed there: the workers start from the earliest).
Read with the control plane's admin client (apps/services/topics.kafka_admin, which
carries the broker's security settings): one offsets round trip for the partitions'
ends and starts, whatever the partition count. The group's commits are read by a consumer
of that group that never joins it (`Consumer.committed`), not by the admin client's
`list_consumer_group_offsets`: when the group's coordinator answers NOT_COORDINATOR or
COORDINATOR_NOT_AVAILABLE (a fresh broker, a new group), librdkafka 2.16's admin path asks
the consumer-group handle to look the coordinator up again, and an admin client has none:
a NULL dereference in `rd_kafka_cgrp_op` on librdkafka's thread kills the process (the CI
test process died so twice, gdb stack: rd_kafka_admin_worker ->
rd_kafka_ListConsumerGroupOffsetsResponse_parse -> rd_kafka_handle_OffsetFetch ->
rd_kafka_cgrp_op).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]
from django.conf import settings

from apps.common.kafka import control_plane_kafka_config
from apps.services.topics import kafka_admin
from memrun.wire import protocol

logger = logging.getLogger(__name__)

RETRY_BACKOFF_S = 0.2
# Answers of a broker still settling a new topic or group (librdkafka does not flag them
# retriable in admin results).
SETTLING = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR,
}


@dataclass(frozen=True)
class Lag:
    """`total` over all partitions; `partitions_with_lag` how many have any;
    `backlog_starts` the first offset not yet committed of each partition with lag (where
    apps/provisioning/queuetime.py reads the oldest waiting message)."""

    total: int
    partitions_with_lag: int
    per_partition: dict[int, int]
    backlog_starts: dict[int, int]


def service_lag(*, service: str, partitions: int) -> Lag | None:
    """The lag of `service`'s consumer group on its request topic; None when Kafka does
    not answer in time (logged: the autoscaler then holds, it never guesses). A retriable
    refusal (a partition whose leader the broker does not know yet, as just after the
    topic was made) is asked again, within MEMRUN_KAFKA_TIMEOUT_S."""
    timeout_s = settings.MEMRUN_KAFKA_TIMEOUT_S
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return _measure(service, partitions, timeout_s)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            retriable = isinstance(error, KafkaError) and (
                error.retriable() or error.code() in SETTLING
            )
            if not retriable or time.monotonic() + RETRY_BACKOFF_S > deadline:
                logger.warning("could not measure the lag of %s: %s", service, exc)
                return None
        except TimeoutError as exc:
            logger.warning("could not measure the lag of %s: %s", service, exc)
            return None
        time.sleep(RETRY_BACKOFF_S)


def _measure(service: str, partitions: int, timeout_s: float) -> Lag:
    topic = protocol.request_topic(service)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    admin = kafka_admin(timeout_s=timeout_s)
    ends: list[dict[int, int]] = []
    for spec in (OffsetSpec.latest(), OffsetSpec.earliest()):  # type: ignore[no-untyped-call]
        futures = admin.list_offsets({tp: spec for tp in tps}, request_timeout=timeout_s)
        ends.append(
            {tp.partition: f.result(timeout=timeout_s * 2).offset for tp, f in futures.items()}
        )
    committed = _committed(protocol.consumer_group(service), tps, timeout_s)
    high, low = ends
    per_partition = {}
    starts = {}
    for partition in range(partitions):
        start = committed.get(partition, -1)
        if start < 0:
            start = low.get(partition, 0)
        per_partition[partition] = max(high.get(partition, 0) - start, 0)
        if per_partition[partition]:
            starts[partition] = start
    return Lag(
        total=sum(per_partition.values()),
        partitions_with_lag=len(starts),
        per_partition=per_partition,
        backlog_starts=starts,
    )


def _committed(group: str, tps: list[TopicPartition], timeout_s: float) -> dict[int, int]:
    """`group`'s committed offsets of `tps` (-1 where none), through a consumer of the
    group that never subscribes, so it never joins or disturbs the workers' group."""
    timeout_ms = int(timeout_s * 1000)
    consumer = Consumer(
        control_plane_kafka_config(
            {
                "group.id": group,
                "enable.auto.commit": False,
                "socket.connection.setup.timeout.ms": timeout_ms,
                "socket.timeout.ms": timeout_ms,
                "log_level": 2,
            }
        )
    )
    try:
        return {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=timeout_s)}
    finally:
        consumer.close()
