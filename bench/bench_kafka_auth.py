"""The cost of Kafka authentication: the same broker round trip over PLAINTEXT and over
SASL SCRAM-SHA-512 (with ACLs checked on every request), side by side in one run, with
ratios.

The authenticated broker is the one `scripts/services env` describes (KAFKA_*); the
PLAINTEXT one is MEMRUN_BENCH_PLAINTEXT_BOOTSTRAP (default 127.0.0.1:19092), the same
single-node Kafka 4.4 started with MEMRUN_KAFKA_AUTH=0 on the same machine (best an idle
one: the shared development broker carries everyone's tests). A listener cannot serve
both ways, so two brokers are compared; both run the same template and heap.

    eval "$(MEMRUN_KAFKA_PORT=29092 ... bash scripts/services env)"
    .venv/bin/python bench/bench_kafka_auth.py [--requests 2000]

1. connect: a new client's first metadata answer (TCP, then the SASL handshake: SCRAM
   costs a few round trips and the server's key derivation), p50 over a few clients;
2. round trip, one message at a time: produce (acks=all) -> a consumer assigned to the
   partition receives it; the two brokers alternate so both see the same machine;
3. throughput: a batch of messages produced and consumed back.
Never run as a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from memrun.wire.kafka import (
    PLAINTEXT,
    KafkaConnection,
    kafka_client_config,
    kafka_connection_from_env,
)


class Side:
    """One broker: a topic, a producer and a consumer assigned to its one partition."""

    def __init__(self, name: str, connection: KafkaConnection) -> None:
        self.name = name
        self.connection = connection
        self.admin = AdminClient(kafka_client_config(connection))
        self.topic = f"bench.auth.{uuid.uuid4().hex[:10]}"
        self.admin.create_topics([NewTopic(self.topic, num_partitions=1)])[self.topic].result(30)
        self.producer = Producer(
            kafka_client_config(
                connection, {"linger.ms": 0, "acks": "all", "socket.nagle.disable": True}
            )
        )
        self.consumer = Consumer(
            kafka_client_config(
                connection,
                {
                    "group.id": f"bench-{self.topic}",
                    "fetch.wait.max.ms": 1,
                    "fetch.min.bytes": 1,
                    "socket.nagle.disable": True,
                    "enable.auto.commit": False,
                },
            )
        )
        self.consumer.assign([TopicPartition(self.topic, 0, 0)])
        self.round_trip()  # warm: metadata, leader connection, first fetch

    def connect_s(self) -> float:
        started = time.perf_counter()
        AdminClient(kafka_client_config(self.connection)).list_topics(timeout=30)
        return time.perf_counter() - started

    def round_trip(self) -> float:
        marker = uuid.uuid4().bytes
        started = time.perf_counter()
        self.producer.produce(self.topic, value=marker)
        self.producer.flush(30)
        while True:
            message = self.consumer.poll(30)
            if message is not None and message.error() is None and message.value() == marker:
                return time.perf_counter() - started

    def throughput(self, count: int) -> float:
        payload = b"x" * 200
        started = time.perf_counter()
        for _ in range(count):
            self.producer.produce(self.topic, value=payload)
            self.producer.poll(0)
        self.producer.flush(60)
        received = 0
        while received < count:
            received += sum(1 for m in self.consumer.consume(1000, 5) if m.error() is None)
        return count / (time.perf_counter() - started)

    def close(self) -> None:
        self.consumer.close()
        self.admin.delete_topics([self.topic])[self.topic].result(30)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=50_000)
    args = parser.parse_args()
    sasl = kafka_connection_from_env()
    if not sasl.authenticated:
        print("KAFKA_SECURITY_PROTOCOL is not set: export a SASL broker's `scripts/services env`")
        return 2
    plain = dataclasses.replace(
        sasl,
        bootstrap_servers=os.environ.get("MEMRUN_BENCH_PLAINTEXT_BOOTSTRAP", "127.0.0.1:19092"),
        security_protocol=PLAINTEXT,
    )
    sides = [Side("plaintext", plain), Side(sasl.security_protocol.lower(), sasl)]
    try:
        connect = {s.name: [s.connect_s() for _ in range(10)] for s in sides}
        trips: dict[str, list[float]] = {s.name: [] for s in sides}
        for _ in range(args.requests):
            for side in sides:
                trips[side.name].append(side.round_trip())
        rates = {s.name: s.throughput(args.batch) for s in sides}
    finally:
        for side in sides:
            side.close()
    a, b = (s.name for s in sides)
    print(f"{'':24}{a:>14}{b:>16}{'ratio':>9}")

    def row(label: str, x: float, y: float, unit: str) -> None:
        print(f"{label:24}{x:>11.2f} {unit:<3}{y:>12.2f} {unit:<3}{y / x:>8.2f}x")

    row(
        "connect p50",
        statistics.median(connect[a]) * 1e3,
        statistics.median(connect[b]) * 1e3,
        "ms",
    )
    for q in (0.5, 0.99):
        row(f"round trip p{int(q * 100)}", pct(trips[a], q) * 1e3, pct(trips[b], q) * 1e3, "ms")
    row("throughput (msg/s)", rates[a], rates[b], "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
