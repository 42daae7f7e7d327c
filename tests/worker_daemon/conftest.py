"""Fixtures for the worker request path: a unique service with its topics, and workers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from memrun.wire.protocol import dlq_topic, request_topic
from tests.fixtures.services import KAFKA_TIMEOUT_S, wait_for_topic_leaders
from tests.worker_daemon.harness import WorkerProcess, make_package, worker_env


@dataclass
class ServiceUnderTest:
    name: str
    topic: str
    partitions: int
    bootstrap: str
    redis_url: str
    ns: str  # prefix of every Redis key the test handler writes
    tmp: Path


@pytest.fixture
def service_factory(
    kafka_admin: AdminClient,
    kafka_bootstrap: str,
    redis_url: str,
    unique_name: str,
    tmp_path: Path,
    redis_client: redis.Redis,
) -> Iterator[Callable[..., ServiceUnderTest]]:
    """`make(partitions=N) -> ServiceUnderTest`: a unique service name with its request
    and DLQ topics created (memrun creates topics; the broker does not)."""
    topics: list[str] = []
    namespaces: list[str] = []

    def make(partitions: int = 1) -> ServiceUnderTest:
        name = f"w{unique_name}{len(topics)}"
        new = [
            NewTopic(request_topic(name), num_partitions=partitions, replication_factor=1),
            NewTopic(dlq_topic(name), num_partitions=1, replication_factor=1),
        ]
        for topic, future in kafka_admin.create_topics(new).items():
            future.result(timeout=KAFKA_TIMEOUT_S)
            topics.append(topic)
        wait_for_topic_leaders(kafka_admin, request_topic(name), partitions)
        wait_for_topic_leaders(kafka_admin, dlq_topic(name), 1)
        ns = f"test:{name}"
        namespaces.append(ns)
        return ServiceUnderTest(
            name, request_topic(name), partitions, kafka_bootstrap, redis_url, ns, tmp_path / name
        )

    yield make

    for ns in namespaces:
        keys = list(redis_client.scan_iter(match=f"{ns}:*", count=1000))
        if keys:
            redis_client.delete(*keys)
    if topics:
        for name, future in kafka_admin.delete_topics(topics).items():
            try:
                future.result(timeout=KAFKA_TIMEOUT_S)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise RuntimeError(f"could not delete topic {name}") from exc


@pytest.fixture
def start_worker() -> Iterator[Callable[..., WorkerProcess]]:
    """`start(service, worker_id, handler="sync_ops.py", **settings) -> WorkerProcess`;
    settings become MEMRUN_* variables. Every worker is stopped at teardown."""
    started: list[WorkerProcess] = []

    def start(
        service: ServiceUnderTest, worker_id: str, *, handler: str = "sync_ops.py", **settings: Any
    ) -> WorkerProcess:
        package = service.tmp / f"package-{handler}"
        if not package.exists():
            make_package(package, service=service.name, handler=handler)
        env = worker_env(
            service=service.name,
            bootstrap=service.bootstrap,
            redis_url=service.redis_url,
            cache_root=service.tmp / f"cache-{worker_id}",
            **settings,
        )
        worker = WorkerProcess(
            service=service.name,
            package=package,
            worker_id=f"{service.name}-{worker_id}",
            env=env,
            log_path=service.tmp / f"{worker_id}.log",
        )
        started.append(worker)
        return worker

    yield start

    for worker in started:
        worker.stop()
