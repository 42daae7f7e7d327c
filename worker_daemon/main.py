"""`run_worker(settings)`: a worker process from settings, with the real clients.

This is what `memrun worker` runs. It prepares the package (a .tar.gz or a folder) and
imports its service, opens the warm cache,
connects Redis and Kafka, makes sure the DLQ topic exists, installs signal handlers
(which only set a flag) and runs the `Worker` until it stops; the return value is the
process exit code (0 stopped, 1 could not start, 75 restart me).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType

import redis
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from memrun.errors import MemrunError
from memrun.service import MemoryService
from memrun.wire.protocol import dlq_topic
from worker_daemon.cache import CacheSettings, WarmCache
from worker_daemon.logs import EventLog, configure_stdlib_logging
from worker_daemon.package import ServiceLoadError, load_service, prepare
from worker_daemon.runtime import Worker
from worker_daemon.settings import WorkerSettings

KAFKA_ADMIN_TIMEOUT_S = 30.0


def run_worker(
    settings: WorkerSettings,
    *,
    log: EventLog | None = None,
    on_worker: Callable[[Worker], None] | None = None,
) -> int:
    """`log` defaults to JSON lines on stdout; `on_worker` receives the Worker before it
    runs (a provisioned worker's heartbeat reads its stats and may ask it to stop)."""
    log = log or EventLog(worker=settings.worker_id, service=settings.service)
    configure_stdlib_logging(worker=settings.worker_id, service=settings.service)
    service = load_package(settings)
    try:
        ensure_dlq_topic(settings.kafka_bootstrap_servers, settings.service)
    except KafkaException as exc:
        raise MemrunError(
            f"cannot reach Kafka at {settings.kafka_bootstrap_servers}: {exc}; "
            "check KAFKA_BOOTSTRAP_SERVERS"
        ) from exc
    cache = WarmCache.open(
        CacheSettings.from_env(
            service.name, disk_bytes=service.disk_bytes, memory_bytes=service.memory_bytes
        )
    )
    redis_client = redis.Redis.from_url(
        settings.redis_url, socket_timeout=10, socket_connect_timeout=5
    )
    try:
        redis_client.ping()
    except redis.RedisError as exc:
        cache.close()
        raise MemrunError(
            f"cannot reach Redis at {settings.redis_url}: {exc}; check REDIS_URL"
        ) from exc
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "client.id": f"memrun-worker-{settings.worker_id}-dlq",
            "linger.ms": 5,
            "acks": "all",
            "partitioner": "murmur2_random",
        }
    )
    worker = Worker(
        settings=settings,
        service=service,
        cache=cache,
        redis=redis_client,
        producer=producer,
        log=log,
    )
    if on_worker is not None:
        on_worker(worker)

    def stop(signum: int, frame: FrameType | None) -> None:
        worker.request_stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return worker.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        cache.close()
        redis_client.close()


def load_package(settings: WorkerSettings) -> MemoryService:
    """The service in `settings.package_path` (a .tar.gz or a folder), with its PEP 723
    dependencies installed, configured as deployed (the manifest's config: the code's
    merged with the deploy flags); it must be the service this worker was started for."""
    prepared = prepare(
        settings.package_path,
        work_root=settings.work_root,
        expected_sha256=settings.package_sha256,
    )
    service = load_service(prepared)
    if prepared.manifest is not None:
        service.apply_config(prepared.manifest.config)
    if service.name != settings.service:
        raise ServiceLoadError(
            f"the package declares service {service.name!r}, but this worker serves "
            f"{settings.service!r}"
        )
    return service


def ensure_dlq_topic(bootstrap_servers: str, service: str) -> None:
    """Create `memrun.dlq.{service}` if missing, so failures are never dropped for want
    of a topic (the broker does not create topics on its own)."""
    topic = dlq_topic(service)
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    if topic in admin.list_topics(timeout=KAFKA_ADMIN_TIMEOUT_S).topics:
        return
    future = admin.create_topics([NewTopic(topic, num_partitions=1)])[topic]
    try:
        future.result(timeout=KAFKA_ADMIN_TIMEOUT_S)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise
