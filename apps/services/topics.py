"""A service's Kafka topics: `memrun.requests.{name}` and `memrun.dlq.{name}`."""

from __future__ import annotations

import logging
import threading
import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic, TopicMetadata
from django.conf import settings

from apps.common.errors import DomainError
from apps.common.kafka import control_plane_kafka_config
from memrun.wire import protocol

logger = logging.getLogger(__name__)


# One admin client per configuration, for the life of the process. A client dropped with a
# request still in flight (a result that timed out) can be freed by the garbage collector
# on librdkafka's own thread, which crashes the process (confluent-kafka-python #2129);
# kept, it is never freed, and each call also saves a connection to the broker.
_admins: dict[tuple[tuple[str, object], ...], AdminClient] = {}
_admins_lock = threading.Lock()


def kafka_admin(*, timeout_s: float) -> AdminClient:
    """The control plane's admin client with `timeout_s` socket timeouts (shared).

    No `logger` in any Kafka client's config: confluent-kafka routes librdkafka's log lines
    to the poll queue only after the client is made, and a line logged by one of
    librdkafka's threads before that (a refused connection is logged within microseconds)
    or while the client is being destroyed calls into Python on that thread without the
    client's call state, which dereferences NULL and kills the process (no Python
    traceback: it happens on a C thread). An admin client is never polled either, so the
    lines only piled up. librdkafka's own printing to stderr is held to critical lines
    (a cached client of an unreachable broker would print a refusal a second forever):
    failures reach us, and are logged, as errors of the calls."""
    timeout_ms = int(timeout_s * 1000)
    config = control_plane_kafka_config(
        {
            "socket.connection.setup.timeout.ms": timeout_ms,
            "socket.timeout.ms": timeout_ms,
            "log_level": 2,
        }
    )
    key = tuple(sorted(config.items(), key=lambda item: item[0]))
    with _admins_lock:
        admin = _admins.get(key)
        if admin is None:
            admin = _admins[key] = AdminClient(config)
        return admin


def topics_ensure(*, service: str, partitions: int) -> None:
    """Create the service's request topic with `partitions` partitions, and its DLQ with as
    many (a dead letter can keep its partition). Topics already there are fine when the
    request topic has `partitions` partitions: a service re-created under an old name
    reuses them.

    DomainError 503 when the broker cannot be reached or refuses, 409 when the request
    topic exists with another partition count.
    """
    timeout_s = settings.MEMRUN_KAFKA_TIMEOUT_S
    admin = kafka_admin(timeout_s=timeout_s)
    request_topic = protocol.request_topic(service)
    try:
        existing = admin.list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        raise _unreachable(exc) from None
    _check_partitions(existing.get(request_topic), topic=request_topic, partitions=partitions)
    missing = [
        NewTopic(topic, num_partitions=partitions, replication_factor=-1)
        for topic in (request_topic, protocol.dlq_topic(service))
        if topic not in existing
    ]
    if not missing:
        return
    futures = admin.create_topics(missing, request_timeout=timeout_s, operation_timeout=timeout_s)
    for topic, future in futures.items():
        try:
            future.result(timeout=timeout_s * 2)
        except KafkaException as exc:
            if _code(exc) != KafkaError.TOPIC_ALREADY_EXISTS:
                raise _unreachable(exc, topic=topic) from None
            # Made by someone else after our look, or made just before it but not yet in
            # this broker's metadata (KRaft publishes it asynchronously): check its count.
            if topic == request_topic:
                _check_partitions(
                    _wait_visible(admin, topic, timeout_s), topic=topic, partitions=partitions
                )
            continue
        except TimeoutError as exc:
            raise _unreachable(exc, topic=topic) from None
        logger.info("created Kafka topic %s with %d partitions", topic, partitions)
    _wait_for_leaders(admin, [topic.topic for topic in missing], partitions, timeout_s)


def _check_partitions(current: TopicMetadata | None, *, topic: str, partitions: int) -> None:
    """DomainError 409 when `topic` exists with another partition count than `partitions`."""
    if current is None or len(current.partitions) == partitions:
        return
    raise DomainError(
        f"Kafka topic {topic} already exists with {len(current.partitions)} "
        f"partitions, not {partitions}: create the service with "
        f"partitions={len(current.partitions)}, or delete the topic first",
        status=409,
        details={
            "fields": {"partitions": [f"the existing topic has {len(current.partitions)}"]},
            "topic": topic,
            "topic_partitions": len(current.partitions),
        },
    )


def _wait_visible(admin: AdminClient, topic: str, timeout_s: float) -> TopicMetadata | None:
    """`topic`'s metadata once this broker lists it with all its partitions; None if it
    does not within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            found = admin.list_topics(topic=topic, timeout=timeout_s).topics.get(topic)
        except KafkaException:
            return None
        if found is not None and found.error is None and found.partitions:
            return found
        time.sleep(0.05)
    return None


def _wait_for_leaders(
    admin: AdminClient, topics: list[str], partitions: int, timeout_s: float
) -> None:
    """Return once every partition of `topics` has a leader, so the caller can produce at
    once; after `timeout_s`, go on anyway (the producer waits for metadata itself)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            found = admin.list_topics(timeout=timeout_s).topics
        except KafkaException:
            break
        if all(
            topic in found
            and len(found[topic].partitions) == partitions
            and all(p.leader >= 0 for p in found[topic].partitions.values())
            for topic in topics
        ):
            return
        time.sleep(0.05)
    logger.warning("Kafka topics %s have no leader yet; going on", ", ".join(topics))


def _code(exc: KafkaException) -> int | None:
    error = exc.args[0] if exc.args else None
    return error.code() if isinstance(error, KafkaError) else None


def _unreachable(exc: Exception, *, topic: str | None = None) -> DomainError:
    error = exc.args[0] if exc.args else None
    reason = error.str() if isinstance(error, KafkaError) else str(exc) or "timed out"
    what = f"could not create topic {topic}" if topic else "is unreachable"
    return DomainError(
        f"Kafka at {settings.KAFKA_BOOTSTRAP_SERVERS} {what} ({reason}); nothing was saved. "
        "Start it with `bash scripts/services up` or set KAFKA_BOOTSTRAP_SERVERS, then retry",
        status=503,
        details={"kafka": settings.KAFKA_BOOTSTRAP_SERVERS, "reason": reason},
    )
