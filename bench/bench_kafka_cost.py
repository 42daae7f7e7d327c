"""Kafka's CPU per message and one-caller latency, with nothing but Kafka in the path.

    eval "$(bash scripts/services env)"; .venv/bin/python bench/bench_kafka_cost.py \\
        --kafka-pid PID 64,1,100,800 64,0,0,800 8,1,100,800 64,1,100,lone

Each case is PARTITIONS,FETCH_MIN_BYTES,FETCH_WAIT_MAX_MS,RATE: a fresh topic of PARTITIONS,
single messages produced as the web's invoke producer produces them (murmur2 keys over 1,000
users, nagle off), consumed as the worker consumes (poll, then take what is queued; commit
every second) with the given fetch settings. RATE is messages/s for --seconds (the broker's
CPU seconds per message, from /proc/PID/stat, PID the broker's: other clients of the broker
count too, so use a private one: `scripts/services up kafka` on moved ports), or `lone`: one
message at a time, --lone of them, each produced when the last was consumed (p50/p99 of
produce -> consumed). FETCH_MIN_BYTES 0 runs no consumer (the produce side alone).
Never run as a test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memrun.wire.kafka import kafka_client_config, kafka_connection_from_env
from memrun.wire.protocol import PARTITIONER

CONNECTION = kafka_connection_from_env()


def cpu_s(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Consuming:
    """A worker-like consumer on its own thread; `seen` maps a value to when it arrived."""

    def __init__(self, topic: str, fetch_min_bytes: int, fetch_wait_max_ms: int) -> None:
        self.topic = topic
        self.config = kafka_client_config(
            CONNECTION,
            {
                "group.id": topic,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "fetch.min.bytes": fetch_min_bytes,
                "fetch.wait.max.ms": fetch_wait_max_ms,
            },
        )
        self.seen: dict[bytes, float] = {}
        self.arrived = threading.Event()
        self.assigned = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def run(self) -> None:
        # Made, used and closed on this thread (a client must not be dropped on another).
        consumer = Consumer(self.config)
        consumer.subscribe([self.topic], on_assign=lambda c, p: self.assigned.set())
        committed = time.monotonic()
        while not self.stopping.is_set():
            first = consumer.poll(0.1)
            messages = [first, *consumer.consume(1000, 0)] if first is not None else []
            now = time.perf_counter()
            for message in messages:
                if message.error() is None:
                    self.seen[message.value()] = now
            if messages:
                self.arrived.set()
                if time.monotonic() - committed > 1:
                    consumer.commit(asynchronous=True)
                    committed = time.monotonic()
        consumer.close()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()


def run_case(spec: str, *, pid: int, seconds: float, lone: int) -> dict[str, object]:
    partitions, fetch_min_bytes, fetch_wait_max_ms, rate = spec.split(",")
    admin = AdminClient(kafka_client_config(CONNECTION, {}))
    topic = f"bench-kafka-cost-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(topic, num_partitions=int(partitions), replication_factor=1)])[
        topic
    ].result()
    consuming = None
    if int(fetch_min_bytes):
        consuming = Consuming(topic, int(fetch_min_bytes), int(fetch_wait_max_ms))
        if not consuming.assigned.wait(60):
            raise TimeoutError("the consumer got no partitions in 60 s")
    producer = Producer(
        kafka_client_config(
            CONNECTION, {"partitioner": PARTITIONER, "linger.ms": 0, "socket.nagle.disable": True}
        )
    )

    def produce(n: int, value: bytes) -> None:
        producer.produce(topic, key=f"u{n % 1000}".encode(), value=value)
        producer.poll(0)

    result: dict[str, object] = {"case": spec}
    cpu_before, started = cpu_s(pid), time.monotonic()
    if rate == "lone":
        if consuming is None:
            raise ValueError(f"{spec}: a lone case needs a consumer (FETCH_MIN_BYTES >= 1)")
        latencies, lost = [], 0
        for n in range(lone):
            value = f"lone-{n}".encode()
            consuming.arrived.clear()
            sent = time.perf_counter()
            produce(n, value)
            give_up = time.monotonic() + 10
            while value not in consuming.seen and time.monotonic() < give_up:
                consuming.arrived.wait(0.5)
                consuming.arrived.clear()
            if value in consuming.seen:
                latencies.append((consuming.seen[value] - sent) * 1000)
            else:
                lost += 1
        sent_count = lone
        result |= {
            "p50_ms": round(percentile(latencies, 0.5), 2),
            "p99_ms": round(percentile(latencies, 0.99), 2),
            "lost": lost,
        }
    else:
        interval, due, sent_count = 1 / float(rate), time.monotonic(), 0
        while time.monotonic() - started < seconds:
            produce(sent_count, f"rate-{sent_count}".encode())
            sent_count += 1
            due += interval
            time.sleep(max(0.0, due - time.monotonic()))
        producer.flush()
        if consuming is not None:
            deadline = time.monotonic() + 60
            while len(consuming.seen) < sent_count and time.monotonic() < deadline:
                time.sleep(0.05)
        result["rate"] = round(sent_count / (time.monotonic() - started))
    result["kafka_cpu_ms_per_message"] = round((cpu_s(pid) - cpu_before) * 1000 / sent_count, 3)
    if consuming is not None:
        consuming.stop()
    producer.flush()
    admin.delete_topics([topic])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="+", help="PARTITIONS,FETCH_MIN_BYTES,FETCH_WAIT_MS,RATE")
    parser.add_argument("--kafka-pid", type=int, required=True, help="the broker's process")
    parser.add_argument("--seconds", type=float, default=15, help="each rate case")
    parser.add_argument("--lone", type=int, default=300, help="messages in a lone case")
    args = parser.parse_args()
    for spec in args.cases:
        print(json.dumps(run_case(spec, pid=args.kafka_pid, seconds=args.seconds, lone=args.lone)))


if __name__ == "__main__":
    main()
