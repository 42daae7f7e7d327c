"""`run_worker(settings)`: a worker process from settings, with the real clients.

This is what `memrun worker` runs. It prepares the package (a .tar.gz or a folder) and
imports its service, opens the warm cache,
connects Redis and Kafka, checks that the DLQ topic exists, installs signal handlers
(which only set a flag) and runs the `Worker` until it stops; the return value is the
process exit code (0 stopped, 1 could not start, 75 restart me).
"""

from __future__ import annotations

import gc
import signal
import time
from collections.abc import Callable
from types import FrameType

import redis
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient

from memrun.errors import MemrunError
from memrun.service import MemoryService
from memrun.wire.kafka import KafkaConnection, kafka_client_config
from memrun.wire.protocol import dlq_topic
from worker_daemon.cache import CacheSettings, WarmCache
from worker_daemon.handoff import Handoff, HotSetSource
from worker_daemon.logs import EventLog, configure_stdlib_logging
from worker_daemon.package import ServiceLoadError, load_service, prepare
from worker_daemon.runtime import Worker
from worker_daemon.settings import WorkerSettings
from worker_daemon.storage import AsyncStorage, make_s3_client

KAFKA_ADMIN_TIMEOUT_S = 30.0
DLQ_POLL_INTERVAL_S = 0.2


def _freeze_heap() -> None:
    """What a worker has loaded once its init handlers ran (the daemon, the handler's
    modules, what init built: a model, a warm dict) lives as long as the process. Frozen,
    Python's cyclic collector no longer walks it in each full collection: a pause in
    whichever requests are running, 25 ms for the daemon alone on a 2-core VM, growing
    with what init loads. Only here, in the worker's own process: a test that runs a
    Worker in its process (and collects on its main thread) keeps its heap collectable."""
    gc.collect()
    gc.freeze()


def run_worker(
    settings: WorkerSettings,
    *,
    log: EventLog | None = None,
    on_worker: Callable[[Worker], None] | None = None,
    hot_sets: HotSetSource | None = None,
) -> int:
    """`log` defaults to JSON lines on stdout; `on_worker` receives the Worker before it
    runs (a provisioned worker's heartbeat reads its stats and may ask it to stop);
    `hot_sets` answers what other workers read on the partitions this one gains, which
    it then prefetches (the warm handoff, worker_daemon/handoff.py; none without it)."""
    log = log or EventLog(worker=settings.worker_id, service=settings.service)
    configure_stdlib_logging(worker=settings.worker_id, service=settings.service)
    service = load_package(settings, log=log)
    check_dlq_topic(settings.kafka, settings.service)
    deployed = service.config()
    cache_settings = CacheSettings.from_env(
        service.name, disk_bytes=deployed.disk_bytes, memory_bytes=deployed.memory_bytes
    )
    cache = WarmCache.open(cache_settings)
    # ctx.storage reads the same endpoint and credentials as the cache's S3 fetcher.
    storage = AsyncStorage(lambda: make_s3_client(cache_settings.s3_endpoint_url))
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
        kafka_client_config(
            settings.kafka,
            {
                "client.id": f"memrun-worker-{settings.worker_id}-dlq",
                "linger.ms": 5,
                "acks": "all",
                "partitioner": "murmur2_random",
            },
        )
    )
    worker = Worker(
        settings=settings,
        service=service,
        cache=cache,
        redis=redis_client,
        producer=producer,
        log=log,
        storage=storage,
        after_init=_freeze_heap,
        handoff=None
        if hot_sets is None
        else Handoff(
            cache=cache,
            source=hot_sets,
            log=log,
            max_bytes=cache_settings.prefetch_budget_bytes,
            max_s=cache_settings.prefetch_max_s,
        ),
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


def load_package(settings: WorkerSettings, *, log: EventLog | None = None) -> MemoryService:
    """The service in `settings.package_path` (a .tar.gz or a folder), with its PEP 723
    dependencies installed, configured as deployed: `settings.service_config` when given
    (the deployment's, which a settings change does not rebuild the package for), else
    the manifest's (the code's merged with the deploy flags). It must be the service this
    worker was started for."""
    prepared = prepare(
        settings.package_path,
        work_root=settings.work_root,
        expected_sha256=settings.package_sha256,
        log=log,
    )
    service = load_service(prepared)
    if settings.service_config is not None:
        service.apply_config(settings.service_config)
    elif prepared.manifest is not None:
        service.apply_config(prepared.manifest.config)
    if service.name != settings.service:
        raise ServiceLoadError(
            f"the package declares service {service.name!r}, but this worker serves "
            f"{settings.service!r}"
        )
    return service


def check_dlq_topic(
    kafka: KafkaConnection, service: str, *, timeout_s: float = KAFKA_ADMIN_TIMEOUT_S
) -> None:
    """Refuse to start without `memrun.dlq.{service}`, so failures are never dropped for
    want of a topic. The control plane creates it with the service (one place, one
    partition count: apps/services/topics.py); a worker holds no right to create topics.
    A topic just created may take a moment to show in the broker's metadata: it is
    looked for until `timeout_s` has passed. The service's principal sees it through its
    Describe right on the topic."""
    topic = dlq_topic(service)
    admin = AdminClient(kafka_client_config(kafka))
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            topics = admin.list_topics(timeout=timeout_s).topics
        except KafkaException as exc:
            raise MemrunError(
                f"cannot reach Kafka at {kafka.bootstrap_servers}: {exc}; check "
                "KAFKA_BOOTSTRAP_SERVERS and KAFKA_SASL_*"
            ) from exc
        if topic in topics:
            return
        if time.monotonic() >= deadline:
            raise MemrunError(
                f"the dead-letter topic {topic} does not exist: create the service first "
                f"(memrun deploy, or POST /api/v1/services with name {service!r})"
            )
        time.sleep(DLQ_POLL_INTERVAL_S)
