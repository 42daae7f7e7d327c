"""A partition revoked while the worker was paused comes back consumable (real Kafka)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.fixtures.services import kafka_test_config
from tests.worker_daemon.conftest import ServiceUnderTest
from tests.worker_daemon.harness import make_producer, wait_for
from worker_daemon.consumer import assign_as


@pytest.mark.parametrize("paused", [False, True])
def test_a_partition_given_back_takes_the_pause_state_we_ask_for(
    service_factory: Callable[..., ServiceUnderTest], paused: bool
) -> None:
    service = service_factory(partitions=1)
    consumer = Consumer(
        kafka_test_config(
            service.bootstrap,
            {
                "group.id": f"assign-pause-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            },
        )
    )
    try:
        tp = [TopicPartition(service.topic, 0)]
        # Paused (backpressure), then revoked: librdkafka remembers the pause.
        assign_as(consumer, tp, paused=False)
        assert consumer.poll(0.5) is None  # fetching starts; the topic is empty
        consumer.pause(tp)
        consumer.incremental_unassign(tp)
        assert consumer.poll(0.2) is None
        # Given back.
        assign_as(consumer, [TopicPartition(service.topic, 0)], paused=paused)
        producer = make_producer(service.bootstrap)
        producer.produce(service.topic, key=b"k", value=b"v", partition=0)
        assert producer.flush(30) == 0

        got: list[bytes] = []

        def consumed() -> bool:
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                got.append(message.value() or b"")
            return bool(got)

        if paused:
            # Still paused as asked: nothing arrives while it is, everything once resumed.
            for _ in range(10):
                assert not consumed()
            consumer.resume([TopicPartition(service.topic, 0)])
        wait_for(consumed, timeout_s=30, what="the message on the partition given back")
        assert got == [b"v"]
    finally:
        consumer.close()
