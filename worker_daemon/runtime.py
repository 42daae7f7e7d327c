"""`Worker`: one worker process's request path, wired from settings and its dependencies.

Programmatic use (what `memrun worker` does, see `worker_daemon.main`):

    worker = Worker(settings=..., service=svc, cache=cache, redis=redis_client,
                    producer=confluent_kafka.Producer({...}))
    exit_code = worker.run()          # blocks; init handlers, then consume
    worker.request_stop()             # from a signal handler or another thread
    worker.stats()                    # JSON-able, any thread

Every outside dependency (broker clients, Redis, the cache, the clock, where stats go)
is passed in, so a test hands in the real thing or a local one without patching. Stats
never go to the log stream: a provisioned worker's heartbeat reads `stats()`, and
`settings.stats_path` keeps the newest snapshot in a local file.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from memrun.context import DataCache, ObjectStorage, WorkerContext
from memrun.service import MemoryService
from memrun.wire.kafka import kafka_client_config
from memrun.wire.protocol import consumer_group, request_topic
from worker_daemon.consumer import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_RESTART,
    ConsumeLoop,
    group_config,
)
from worker_daemon.executor import Deadlines, HandlerPool
from worker_daemon.handoff import Handoff
from worker_daemon.jobs import Completion, Job
from worker_daemon.lag import CommittedReader, LagProbe
from worker_daemon.logs import EventLog
from worker_daemon.metrics import RequestMetrics
from worker_daemon.outcomes import DeadLetters, OutcomeStore, RedisLike
from worker_daemon.pipeline import RequestPipeline
from worker_daemon.replies import ReplyStage
from worker_daemon.settings import WorkerSettings
from worker_daemon.statsfile import stats_write

EXIT_INIT_FAILED = EXIT_FAILED
__all__ = ["EXIT_INIT_FAILED", "EXIT_OK", "EXIT_RESTART", "Worker"]


class Worker:
    """Runs `service`'s init handlers with a `WorkerContext`, then serves its requests
    until `request_stop()` (exit 0) or until too many handlers were abandoned (75).

    `on_stats` receives `stats()` every `settings.stats_interval_s` on the poll thread
    (default: written to `settings.stats_path` when set, else nothing); it must return
    quickly. `handoff`, when given, is told the partitions each assignment gains and
    prefetches what their previous owners read (worker_daemon/handoff.py).
    """

    def __init__(
        self,
        *,
        settings: WorkerSettings,
        service: MemoryService,
        cache: DataCache,
        redis: RedisLike,
        producer: Producer,
        consumer_factory: Callable[[dict[str, Any]], Consumer] = Consumer,
        admin_factory: Callable[[dict[str, Any]], AdminClient] = AdminClient,
        log: EventLog | None = None,
        on_stats: Callable[[dict[str, Any]], None] | None = None,
        storage: ObjectStorage | None = None,
        handoff: Handoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        after_init: Callable[[], None] = lambda: None,
    ) -> None:
        handler = service.request_handler
        if handler is None:
            raise ValueError(f"service {service.name!r} has no @svc.handler()")
        self.settings = settings
        self.service = service
        deployed = service.config()
        self.concurrency = settings.concurrency or deployed.concurrency
        self.timeout_s = settings.timeout_s or float(deployed.timeout_seconds)
        self.prefetch = self.concurrency if settings.prefetch is None else settings.prefetch
        self._cache = cache
        self._handoff = handoff
        self._producer = producer
        self._consumer_factory = consumer_factory
        self._admin_factory = admin_factory
        self._after_init = after_init
        self._log = log or EventLog(worker=settings.worker_id, service=service.name)
        self._on_stats = on_stats or self._write_stats
        self._clock = clock
        self._metrics = RequestMetrics(clock=clock)
        self.context = WorkerContext(
            service=service.name, worker_id=settings.worker_id, cache=cache, storage=storage
        )
        self._completions: queue.SimpleQueue[Completion] = queue.SimpleQueue()
        self._deadlines: Deadlines[Job] = Deadlines()
        self._stopping = threading.Event()
        self._give_up = threading.Event()
        self._replies = ReplyStage(
            store=OutcomeStore(redis, service=service.name, reply_ttl_s=settings.reply_ttl_s),
            completions=self._completions,
            run=self._submit,
            give_up=self._give_up,
            log=self._log,
            log_requests=settings.log_requests,
            request_log_per_s=settings.request_log_per_s,
        )
        self._pipeline = RequestPipeline(
            handler=handler,
            worker=self.context,
            dead_letters=DeadLetters(producer, service=service.name, worker_id=settings.worker_id),
            metrics=self._metrics,
            replies=self._replies.put,
            completions=self._completions,
            deadlines=self._deadlines,
            timeout_s=self.timeout_s,
            async_cancel_grace_s=settings.async_cancel_grace_s,
            stopping=self._stopping,
            log=self._log,
            clock=clock,
        )
        self._pool = HandlerPool(self.concurrency, self._pipeline, name=f"memrun-{service.name}")
        self._loop: ConsumeLoop | None = None
        # Called (on the poll thread, so it must only flag) when partitions are revoked.
        self.on_revoked: Callable[[], None] = lambda: None
        self._state = "starting"
        self._stop_requested = False

    def run(self) -> int:
        self._log.event(
            "worker.starting",
            concurrency=self.concurrency,
            timeout_s=self.timeout_s,
            group_protocol=self.settings.group_protocol,
            group_instance_id=group_config(self.settings).get("group.instance.id"),
        )
        self._state = "initializing"
        try:
            self._run_init_handlers()
        except BaseException as exc:  # SystemExit in an init handler is a failed init too
            self._log.event("worker.init_failed", error_type=type(exc).__name__, error=str(exc))
            self._log.flush()
            self._state = "stopped"
            return EXIT_INIT_FAILED
        if self._stop_requested:
            self._state = "stopped"
            return EXIT_OK
        self._after_init()  # the process's own set-up once init is done (main.py: gc)
        consumer = self._consumer_factory(self._consumer_config())
        lag_probe = self._lag_probe()
        self._loop = ConsumeLoop(
            consumer=consumer,
            topic=request_topic(self.service.name),
            pool=self._pool,
            pipeline=self._pipeline,
            replies=self._replies,
            completions=self._completions,
            deadlines=self._deadlines,
            producer=self._producer,
            settings=self.settings,
            concurrency=self.concurrency,
            prefetch=self.prefetch,
            log=self._log,
            stopping=self._stopping,
            give_up=self._give_up,
            lag_probe=lag_probe,
            on_stats_tick=self._emit_stats,
            on_gained=self._handoff.partitions_gained if self._handoff else lambda parts: None,
            on_revoked=lambda: self.on_revoked(),
            on_closing=self._handoff.stop if self._handoff else lambda: None,
            clock=self._clock,
        )
        if self._stop_requested:
            self._loop.request_stop()
        self._pool.start()
        self._replies.start()
        if self._handoff is not None:
            self._handoff.start()  # the loop stops it as it closes (on_closing)
        try:
            return self._loop.run()
        finally:
            lag_probe.close()

    def request_stop(self) -> None:
        """Stop fetching, finish in-flight work, commit, leave. Only sets flags, so it is
        safe from a signal handler."""
        self._stop_requested = True
        if self._loop is not None:
            self._loop.request_stop()

    def stats(self) -> dict[str, Any]:
        """State, in-flight, counts, assigned partitions with lag, paused, request
        numbers (`RequestMetrics.snapshot`), cache, and the settings it runs; JSON-able."""
        stats: dict[str, Any] = {
            "worker": self.settings.worker_id,
            "service": self.service.name,
            # What this worker runs, so the control plane can see it agrees (I10).
            "config": self.service.config().to_dict(),
        }
        if self._loop is None:
            stats.update(state=self._state, in_flight=0, assigned=0)
        else:
            stats.update(self._loop.stats())
        stats["requests"] = self._metrics.snapshot()
        try:
            stats["cache"] = self._cache.stats()
        except Exception as exc:  # stats must never stop the worker
            stats["cache"] = {"error": repr(exc)}
        return stats

    def _submit(self, job: Job) -> None:
        self._pool.submit(job)

    def _run_init_handlers(self) -> None:
        for spec in self.service.init_handlers:
            started = self._clock()
            if spec.is_async:
                asyncio.run(spec.fn(self.context))
            else:
                spec.fn(self.context)
            self._log.event(
                "worker.init_handler",
                handler=spec.fn.__name__,
                duration_ms=round((self._clock() - started) * 1000, 3),
            )

    def _lag_probe(self) -> LagProbe:
        committed_config = kafka_client_config(
            self.settings.kafka,
            {
                "group.id": consumer_group(self.service.name),
                "client.id": f"memrun-worker-{self.settings.worker_id}-offsets",
                "enable.auto.commit": False,
                "log_level": 2,
            },
        )
        return LagProbe(
            self._admin_factory(kafka_client_config(self.settings.kafka)),
            CommittedReader(lambda: self._consumer_factory(committed_config)),
        )

    def _consumer_config(self) -> dict[str, Any]:
        settings = self.settings
        config: dict[str, Any] = kafka_client_config(
            settings.kafka,
            {
                "group.id": consumer_group(self.service.name),
                "client.id": f"memrun-worker-{settings.worker_id}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                **group_config(settings),
                "max.poll.interval.ms": settings.max_poll_interval_ms,
                # An idle fetch holds the connection this long; a sync commit (revoke,
                # shutdown) on a single broker queues behind it.
                "fetch.wait.max.ms": 100,
                "on_commit": self._on_commit,
                "error_cb": self._on_client_error,
            },
        )
        return config

    def _on_commit(self, error: Any, partitions: Any) -> None:
        if self._loop is not None:
            self._loop.on_commit(error, partitions)

    def _on_client_error(self, error: Any) -> None:
        self._log.event("kafka.client_error", code=error.name(), error=error.str())

    def _emit_stats(self) -> None:
        self._on_stats(self.stats())

    def _write_stats(self, stats: dict[str, Any]) -> None:
        if self.settings.stats_path is None:
            return
        try:
            stats_write(self.settings.stats_path, stats)
        except OSError as exc:  # a full or read-only disk must not stop the worker
            self._log.event("worker.stats_write_failed", error=str(exc))
