"""A hostile service for the Kafka isolation tests: with its own worker's Kafka
credentials (the environment its worker daemon was started with) it attacks another
service, `request["victim"]`, and answers with the Kafka error code each attempt got
("ok" if one succeeded)."""

import os
import time

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from memrun import MemoryService
from memrun.wire import protocol
from memrun.wire.kafka import kafka_client_config, kafka_connection_from_env

svc = MemoryService(os.environ["MEMRUN_SERVICE"], max_workers=1, concurrency=2, timeout_seconds=90)
ATTEMPT_S = 10.0
# The victim's partition count (the default: the tests create it so).
PARTITIONS = 64


def config(extra=None):
    return kafka_client_config(kafka_connection_from_env(), extra)


def code_of(exc):
    error = exc.args[0] if exc.args else None
    return error.name() if isinstance(error, KafkaError) else repr(exc)


def consume(victim, *, group, topic, subscribe):
    """The first error (or "ok" for a message) a consumer in `group` gets on `topic`."""
    errors = []
    consumer = Consumer(
        config(
            {
                "group.id": group,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "error_cb": lambda error: errors.append(error.name()),
            }
        )
    )
    try:
        if subscribe:
            consumer.subscribe([topic])
        else:
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        deadline = time.monotonic() + ATTEMPT_S
        while time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is not None:
                return "ok" if message.error() is None else message.error().name()
            interesting = [e for e in errors if "AUTHORIZATION" in e]
            if interesting:
                return interesting[0]
        if subscribe:
            return "timeout"
        # Nothing fetched (librdkafka calls a partition it may not see unknown): ask the
        # broker for the topic, which it describes or refuses with a code.
        found = consumer.list_topics(topic, timeout=ATTEMPT_S).topics.get(topic)
        if found is None or found.error is None:
            return "timeout"
        return found.error.name()
    finally:
        consumer.close()


def produce(topic):
    results = []
    producer = Producer(config({"message.timeout.ms": int(ATTEMPT_S * 1000)}))
    producer.produce(
        topic,
        key=b"forged",
        value=b'{"forged": true}',
        on_delivery=lambda error, message: results.append("ok" if error is None else error.name()),
    )
    producer.flush(ATTEMPT_S + 5)
    return results[0] if results else "timeout"


def admin_call(make_futures):
    admin = AdminClient(config())
    try:
        for future in make_futures(admin):
            future.result(timeout=ATTEMPT_S)
    except KafkaException as exc:
        return code_of(exc)
    return "ok"


def attack(kind, victim):
    own = svc.name
    if kind == "join_group":  # B's group, on A's own topic
        return consume(
            victim,
            group=protocol.consumer_group(victim),
            topic=protocol.request_topic(own),
            subscribe=True,
        )
    if kind == "consume_topic":  # B's topic, in A's own group
        return consume(
            victim,
            group=protocol.consumer_group(own),
            topic=protocol.request_topic(victim),
            subscribe=False,
        )
    if kind == "read_dlq":
        return consume(
            victim,
            group=protocol.consumer_group(own),
            topic=protocol.dlq_topic(victim),
            subscribe=False,
        )
    if kind == "produce":
        return produce(protocol.request_topic(victim))
    if kind == "create_topic":
        return admin_call(
            lambda admin: admin.create_topics(
                [NewTopic(f"memrun.requests.{own}-stolen", num_partitions=1)]
            ).values()
        )
    if kind == "alter_acls":
        grant = AclBinding(
            ResourceType.TOPIC,
            protocol.request_topic(victim),
            ResourcePatternType.LITERAL,
            f"User:svc-{own}",
            "*",
            AclOperation.READ,
            AclPermissionType.ALLOW,
        )
        return admin_call(lambda admin: admin.create_acls([grant]).values())
    if kind == "alter_credentials":
        upsert = UserScramCredentialUpsertion(
            f"svc-{victim}", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192), b"mine"
        )
        return admin_call(lambda admin: admin.alter_user_scram_credentials([upsert]).values())
    raise ValueError(kind)


@svc.handler(sticky_key="user")
def handle(ctx, request):
    if "attack" in request:
        return {"attack": request["attack"], "got": attack(request["attack"], request["victim"])}
    return {"worker": ctx.worker_id, "user": request["user"]}
