"""Time in queue: how long the oldest request a service's workers have not yet committed
has waited in Kafka, measured by the control plane.

Lag counts messages; it cannot tell ten quick requests from ten that each take a minute.
The age of the message at a partition's committed offset can: it is the timestamp Kafka
keeps with the message (the producer's create time, or the broker's append time when the
topic says so). The control plane reads that one message per partition with a backlog,
the offsets coming from the lag it measured the same pass (apps/provisioning/lag.py): one
consumer, assigned to those partitions at those offsets, takes the first message of each
from one fetch (the batch that holds it, no prefetch past it), pauses the partition and,
once every head is read, stops. It joins no group and commits nothing, so it never
disturbs the workers' group.

The committed offset trails the workers by up to their commit interval (one second,
worker_daemon/offsets.py) and includes the request running now, so the age reads high by
about that much: a maximum should be well above both.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, TopicPartition
from django.conf import settings

from apps.common.kafka import control_plane_kafka_config
from memrun.wire import protocol

logger = logging.getLogger(__name__)

# Bytes per partition in a fetch: at least the largest batch our producers make
# (librdkafka's batch.size, 1 MB). A first batch larger than this comes back cut, and
# librdkafka asks again only after a back-off: 64 partitions with 60 KB batches took
# ten seconds under a 4 KiB limit, 0.15 s under 64 KiB. Requests' batches are usually
# far smaller (the control plane does not linger), and only one batch per partition comes.
HEAD_FETCH_BYTES = 1024 * 1024
CONSUME_BATCH = 1000

# One consumer per configuration, for the life of the process, used under its lock: it
# saves a connection and a SASL handshake on every pass, and a consumer kept is never
# freed by the garbage collector on one of librdkafka's threads (which crashes the
# process: confluent-kafka-python #1761), nor closed on a thread that did not make it.
_consumers: dict[tuple[tuple[str, object], ...], tuple[Consumer, threading.Lock]] = {}
_consumers_lock = threading.Lock()


def queue_heads(*, service: str, starts: dict[int, int]) -> dict[int, int] | None:
    """The timestamp (milliseconds since the epoch) of the first message at or after
    `starts[partition]` on `service`'s request topic, for each partition in `starts` that
    answers within MEMRUN_KAFKA_TIMEOUT_S. A message whose offset was deleted by
    retention is replaced by the oldest one left. None when Kafka answers for none of
    them (logged: the autoscaler then decides on lag alone)."""
    if not starts:
        return {}
    timeout_s = settings.MEMRUN_KAFKA_TIMEOUT_S
    topic = protocol.request_topic(service)
    consumer, lock = _consumer(timeout_s=timeout_s)
    heads: dict[int, int] = {}
    read: set[int] = set()
    with lock:
        assigned = [TopicPartition(topic, p, offset) for p, offset in starts.items()]
        consumer.assign(assigned)
        try:
            deadline = time.monotonic() + timeout_s
            while len(read) < len(starts) and time.monotonic() < deadline:
                wait_s = min(0.1, max(deadline - time.monotonic(), 0))
                # In bulk: the rest of each head's batch arrives with it, and is skipped.
                for message in consumer.consume(num_messages=CONSUME_BATCH, timeout=wait_s):
                    partition = message.partition()
                    if message.topic() != topic or partition not in starts or partition in read:
                        continue  # left over from an earlier pass, or a head already read
                    error = message.error()
                    if error is not None:
                        # Retention emptied the partition since the lag was read.
                        if error.code() == KafkaError._PARTITION_EOF:
                            read.add(partition)
                        continue
                    offset = message.offset()
                    if offset is None or offset < starts[partition]:
                        continue
                    read.add(partition)
                    consumer.pause([TopicPartition(topic, partition)])  # its head is known
                    kind, stamp = message.timestamp()
                    if kind != TIMESTAMP_NOT_AVAILABLE and stamp >= 0:
                        heads[partition] = stamp
        finally:
            # A pause outlives the assignment: the next pass must find them fetching.
            consumer.resume(assigned)
            consumer.unassign()
    if not read:
        logger.warning(
            "could not read the oldest waiting request of %s within %ss", service, timeout_s
        )
        return None
    return heads


def queue_seconds(*, heads: dict[int, int] | None, now: datetime) -> float | None:
    """How long the oldest of `heads` has waited at `now`, in seconds (never negative: a
    producer's clock may run ahead); 0 when nothing waits, None when unknown."""
    if heads is None:
        return None
    if not heads:
        return 0.0
    return max(now.timestamp() - min(heads.values()) / 1000, 0.0)


def _consumer(*, timeout_s: float) -> tuple[Consumer, threading.Lock]:
    timeout_ms = int(timeout_s * 1000)
    config = control_plane_kafka_config(
        {
            # librdkafka wants a group id; with assign() and no commit it is never used
            # with the broker's group coordinator.
            "group.id": "memrun-control-plane-queuetime",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
            "max.partition.fetch.bytes": HEAD_FETCH_BYTES,
            # No prefetch past the first batch of a partition (a limit on the queue's
            # bytes would do worse: it is shared, and over it librdkafka stops fetching
            # every partition for fetch.queue.backoff.ms, a second by default).
            "queued.min.messages": 1,
            "fetch.wait.max.ms": 100,
            "socket.connection.setup.timeout.ms": timeout_ms,
            "socket.timeout.ms": timeout_ms,
            "logger": logger,
        }
    )
    key = tuple(sorted(config.items(), key=lambda item: item[0]))
    with _consumers_lock:
        found = _consumers.get(key)
        if found is None:
            found = _consumers[key] = (Consumer(config), threading.Lock())
        return found
