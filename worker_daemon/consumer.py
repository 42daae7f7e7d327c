"""The consume loop: owns the consumer's lifecycle and moves messages through the steps.

One thread (the caller of `run`, normally the main thread) polls Kafka, hands messages
to the pool, reads completions, commits finished prefixes and watches deadlines. It
never runs a handler. The pool has `concurrency` threads, so at most that many handlers
run at once (I3); up to `prefetch` more jobs wait in its queue so a freed thread never
waits for the poll thread. When every slot is taken the loop waits for one, and if none
frees within `pause_after_full_s` it pauses its partitions and keeps polling, so the
group sees a live member and the backlog stays in Kafka as lag.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from worker_daemon.executor import Deadlines, HandlerPool
from worker_daemon.jobs import Completion, Job, Status
from worker_daemon.lag import LagProbe
from worker_daemon.logs import EventLog
from worker_daemon.offsets import CommitPolicy, commit_finished
from worker_daemon.partitions import TP, AssignedPartition, refresh_lag
from worker_daemon.pipeline import RequestPipeline
from worker_daemon.replies import ReplyStage
from worker_daemon.settings import WorkerSettings

EXIT_OK = 0
EXIT_FAILED = 1
# EX_TEMPFAIL: too many abandoned handler threads; the supervisor should restart us.
EXIT_RESTART = 75
REPLIES_STOP_TIMEOUT_S = 10.0
LEAVE_TIMEOUT_S = 5.0
WATCHDOG_INTERVAL_S = 0.1
LOG_FLUSH_INTERVAL_S = 0.2


def group_config(settings: WorkerSettings) -> dict[str, Any]:
    """The consumer's group settings for `settings.group_protocol`.

    "consumer" (KIP-848): the broker assigns partitions with its sticky `uniform` assignor
    and sends each member its changes in heartbeat responses, every
    group.consumer.heartbeat.interval.ms (scripts/services: 250 ms). A scale-up moves a
    partition in two heartbeats (the old owner is told to revoke and acknowledges; the new
    owner is told to take it) with no JoinGroup round and no member waiting for the whole
    group, where the classic protocol's cooperative-sticky needs two JoinGroup rounds that
    librdkafka spaces at least ~1 s apart. The session timeout and heartbeat interval are
    the broker's then; librdkafka refuses the classic settings with it.

    No static membership (group.instance.id) with it: a KIP-848 static member's leave is
    always temporary (epoch -2: its partitions wait a whole session timeout for it, even
    when it unsubscribes to drain), and a restarted one is fenced (UNRELEASED_INSTANCE_ID,
    fatal) while its crashed predecessor's session lasts. A dynamic member leaves for good
    on stop, so a drained worker's partitions move at once.
    """
    if settings.group_protocol == "consumer":
        return {"group.protocol": "consumer"}
    config: dict[str, Any] = {
        "group.protocol": "classic",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": settings.session_timeout_ms,
        "heartbeat.interval.ms": settings.group_heartbeat_interval_ms,
    }
    if settings.group_instance_id:
        config["group.instance.id"] = settings.group_instance_id
    return config


def assign_as(consumer: Consumer, partitions: list[TopicPartition], *, paused: bool) -> None:
    """Take `partitions` and set their pause to `paused`, whatever they had before.

    librdkafka keeps a partition's application pause across unassign and assign: one
    revoked while this worker was paused (backpressure) and given back later would stay
    paused for good, and the requests on it would wait forever (an autoscale scale-down
    did exactly that). So a gained partition is resumed explicitly when we are not paused.
    """
    consumer.incremental_assign(partitions)
    if partitions:
        (consumer.pause if paused else consumer.resume)(partitions)


class ConsumeLoop:
    def __init__(
        self,
        *,
        consumer: Consumer,
        topic: str,
        pool: HandlerPool[Job],
        pipeline: RequestPipeline,
        replies: ReplyStage,
        completions: queue.SimpleQueue[Completion],
        deadlines: Deadlines[Job],
        producer: Producer,
        settings: WorkerSettings,
        concurrency: int,
        prefetch: int,
        log: EventLog,
        stopping: threading.Event,
        give_up: threading.Event,
        lag_probe: LagProbe,
        on_stats_tick: Callable[[], None],
        on_gained: Callable[[list[int]], None] = lambda partitions: None,
        on_revoked: Callable[[], None] = lambda: None,
        on_closing: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._consumer = consumer
        self._topic = topic
        self._pool = pool
        self._pipeline = pipeline
        self._replies = replies
        self._completions = completions
        self._deadlines = deadlines
        self._producer = producer
        self._settings = settings
        self._concurrency = concurrency
        self._max_in_flight = concurrency + prefetch
        self._policy = CommitPolicy(interval_s=settings.commit_interval_s)
        self._log = log
        self._stopping = stopping
        self._give_up = give_up
        self._lag_probe = lag_probe
        self._on_stats_tick = on_stats_tick
        self._on_gained = on_gained
        self._on_revoked = on_revoked
        self._on_closing = on_closing
        self._clock = clock

        self.state = "starting"
        self._stop_requested = False
        self._owned: dict[TP, AssignedPartition] = {}
        self._backlog: deque[Message] = deque()
        self._in_flight = 0
        self._abandoned_now = 0
        self._paused = False
        self._full_since: float | None = None
        self._seq = 0
        self.counts = {status: 0 for status in Status}
        self.abandoned_total = 0
        now = clock()
        self._started_s = now
        self._last_commit_s = now
        self._next_watch_s = now
        self._next_flush_s = now
        self._next_stats_s = now + settings.stats_interval_s

    # -- lifecycle -------------------------------------------------------------------

    def request_stop(self) -> None:
        """Safe from a signal handler: only sets a flag the loop reads."""
        self._stop_requested = True

    def run(self) -> int:
        """Consume until asked to stop (0) or too many handlers are abandoned (75)."""
        self._consumer.subscribe(
            [self._topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self.state = "running"
        self._log.event("worker.consuming", topic=self._topic, concurrency=self._concurrency)
        self._log.flush()
        exit_code = EXIT_OK
        try:
            while not self._stop_requested:
                if self._abandoned_now * 2 > self._concurrency:
                    exit_code = EXIT_RESTART
                    self._log.event("worker.restart_needed", abandoned=self._abandoned_now)
                    break
                self._step()
            self._drain()
        except KafkaException as exc:  # fatal for the client (e.g. a fenced instance id)
            exit_code = EXIT_FAILED
            self._log.event("worker.kafka_fatal", error=str(exc))
        finally:
            self._close(exit_code)
        return exit_code

    def _step(self) -> None:
        self._take_completions()
        free = self._max_in_flight - self._in_flight
        if free > 0:
            self._full_since = None
            if self._paused:
                self._set_paused(False)
            if self._backlog:
                for _ in range(min(free, len(self._backlog))):
                    self._dispatch(self._backlog.popleft())
            else:
                for message in self._fetch(free):
                    self._dispatch(message)
        else:
            self._wait_for_slot()
        self._housekeeping()

    def _fetch(self, limit: int) -> list[Message]:
        # consume(n, timeout) waits for all n or the timeout: take what is queued without
        # waiting, and only block (poll) for the first message of an idle spell.
        messages = self._consumer.consume(limit, 0)
        if messages:
            return messages
        first = self._consumer.poll(self._settings.poll_timeout_s)
        if first is None:
            return []
        return [first, *self._consumer.consume(limit - 1, 0)] if limit > 1 else [first]

    def _wait_for_slot(self) -> None:
        now = self._clock()
        if self._full_since is None:
            self._full_since = now
        pause_at = self._full_since + self._settings.pause_after_full_s
        if not self._paused and now >= pause_at:
            self._set_paused(True)
        if self._paused:
            self._keep_polling()
            self._wait_completion(self._settings.poll_timeout_s)
        else:
            self._wait_completion(pause_at - now)

    def _keep_polling(self) -> None:
        """Serve rebalance callbacks while paused; anything delivered waits its turn."""
        self._backlog.extend(self._consumer.consume(self._max_in_flight, 0))

    def _drain(self) -> None:
        self.state = "draining"
        self._stopping.set()  # queued jobs are handed back unstarted
        self._log.event("worker.draining", in_flight=self._in_flight)
        self._log.flush()
        self._set_paused(True)
        deadline = self._clock() + self._settings.grace_period_s
        while self._in_flight > self._abandoned_now and self._clock() < deadline:
            self._keep_polling()
            self._wait_completion(min(self._settings.poll_timeout_s, deadline - self._clock()))
            self._housekeeping()
        self._give_up.set()
        self._take_completions()

    def _close(self, exit_code: int) -> None:
        self.state = "stopping"
        self._on_closing()  # what runs beside the loop ends before its summary line
        self._commit(self._owned.values(), sync=True)
        unfinished = self._in_flight - self._abandoned_now
        self._producer.flush(5.0)
        try:
            if exit_code == EXIT_OK and self._settings.leave_group_on_stop:
                # A static member (group.instance.id) does not leave on close; unsubscribing
                # first makes it leave, so its partitions move now, not at session timeout.
                self._consumer.unsubscribe()
                deadline = self._clock() + LEAVE_TIMEOUT_S
                while self._consumer.assignment() and self._clock() < deadline:
                    self._consumer.poll(0.05)  # serves the revoke; the leave follows it
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:
            self._log.event("worker.close_error", error=str(exc))
        self._pool.stop()
        self._replies.stop(REPLIES_STOP_TIMEOUT_S)
        self.state = "stopped"
        self._log.event(
            "worker.stopped",
            exit_code=exit_code,
            uptime_s=round(self._clock() - self._started_s, 1),
            unfinished=unfinished,
            abandoned_now=self._abandoned_now,
            **self._counts_view(),
        )
        self._log.flush()

    # -- dispatch and completion ------------------------------------------------------

    def _dispatch(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            self._on_kafka_error(error)
            return
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        assert topic is not None and partition is not None and offset is not None
        owned = self._owned.get((topic, partition))
        if owned is None:
            return  # revoked since it was fetched: its new owner will see it
        if self._paused:
            self._backlog.append(message)
            return
        owned.tracker.submitted(offset)
        self._seq += 1
        self._in_flight += 1
        job = Job(
            self._seq, message, offset, owned.tracker, self._may_be_redelivered(owned, offset)
        )
        if job.recheck:
            self._replies.put(job)  # looked up first; the reply stage runs it if new
        else:
            self._pool.submit(job)

    def _may_be_redelivered(self, owned: AssignedPartition, offset: int) -> bool:
        if owned.redelivery_below is None:
            try:
                _, high = self._consumer.get_watermark_offsets(
                    owned.topic_partition(), cached=True
                ) or (-1, -1)
            except KafkaException:
                high = -1
            if high < 0:
                return True
            owned.redelivery_below = high
        return offset < owned.redelivery_below

    def _take_completions(self) -> None:
        completions = self._completions
        while not completions.empty():
            self._complete(completions.get_nowait())

    def _wait_completion(self, timeout_s: float) -> None:
        try:
            completion = self._completions.get(timeout=max(timeout_s, 0.0))
        except queue.Empty:
            return
        self._complete(completion)
        self._take_completions()

    def _complete(self, completion: Completion) -> None:
        job, status = completion
        self.counts[status] += 1
        if status.frees_slot:
            self._in_flight -= 1
            if status is Status.FREED:
                self._abandoned_now -= 1
        if status.finishes:
            # A tracker of a revoked partition is no longer referenced: harmless to update.
            job.tracker.finished(job.offset)

    def _watch_deadlines(self, now: float) -> None:
        for job in self._deadlines.expired(now):
            # Its thread stays in the handler; the slot stays taken until it returns.
            self._pipeline.answer_timeout(job)
            self._abandoned_now += 1
            self.abandoned_total += 1
            self._log.event(
                "worker.abandoned_handler",
                request_id=job.request.request_id if job.request else None,
                partition=job.tracker.partition,
                offset=job.offset,
                abandoned_now=self._abandoned_now,
            )

    # -- pause, commit, stats ---------------------------------------------------------

    def _set_paused(self, paused: bool) -> None:
        if paused == self._paused:
            return
        self._paused = paused
        partitions = [owned.topic_partition() for owned in self._owned.values()]
        if partitions:
            (self._consumer.pause if paused else self._consumer.resume)(partitions)
        self._log.event("worker.paused" if paused else "worker.resumed", in_flight=self._in_flight)

    def _housekeeping(self) -> None:
        now = self._clock()
        if now >= self._next_watch_s:
            self._next_watch_s = now + WATCHDOG_INTERVAL_S
            if len(self._deadlines):
                self._watch_deadlines(now)
        if self._policy.due(last_commit_s=self._last_commit_s, now_s=now):
            self._commit(self._owned.values(), sync=False)
        if now >= self._next_stats_s:
            self._next_stats_s = now + self._settings.stats_interval_s
            refresh_lag(self._owned, self._lag_probe, self._consumer)
            self._on_stats_tick()
        self._producer.poll(0)
        if now >= self._next_flush_s:
            self._next_flush_s = now + LOG_FLUSH_INTERVAL_S
            self._log.flush()

    def _commit(self, owned: Iterable[AssignedPartition], *, sync: bool) -> None:
        self._last_commit_s = self._clock()
        error = commit_finished(self._consumer, [o.tracker for o in owned], sync=sync)
        if error is not None:
            self._log.event("commit.error", error=error, sync=sync)

    def on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """Kafka's commit callback: a failed async commit is retried by the next one."""
        failed = [tp for tp in partitions if error is not None or tp.error]
        for tp in failed:
            owned = self._owned.get((tp.topic, tp.partition))
            if owned is not None:
                owned.tracker.committed = -1
        if failed:
            self._log.event(
                "commit.error",
                error=str(error) if error else str(failed[0].error),
                partitions=[f"{tp.topic}:{tp.partition}" for tp in failed],
            )

    def _counts_view(self) -> dict[str, int]:
        counts = self.counts
        return {
            "completed": counts[Status.OK],
            "failed": counts[Status.FAILED],
            "timed_out": counts[Status.TIMED_OUT] + counts[Status.ABANDONED],
            "abandoned": self.abandoned_total,
            "skipped": counts[Status.SKIPPED],
            "undelivered": counts[Status.UNDELIVERED],
            "returned": counts[Status.RETURNED],
        }

    def stats(self) -> dict[str, Any]:
        """A JSON-able snapshot; safe to call from any thread (reads only)."""
        partitions = []
        for owned in list(self._owned.values()):
            partitions.append(
                {
                    "topic": owned.topic,
                    "partition": owned.partition,
                    "committed": owned.tracker.committed,
                    "high": owned.high,
                    "lag": owned.lag(),
                    "unfinished": owned.tracker.unfinished,
                }
            )
        lags = [p["lag"] for p in partitions if p["lag"] is not None]
        return {
            "state": self.state,
            "in_flight": self._in_flight,
            "concurrency": self._concurrency,
            "max_in_flight": self._max_in_flight,
            "paused": self._paused,
            "abandoned_now": self._abandoned_now,
            **self._counts_view(),
            "assigned": len(partitions),
            "lag": sum(lags) if lags else None,
            "partitions": partitions,
        }

    # -- rebalance callbacks (run inside consume/poll, on this thread) -----------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        assign_as(consumer, partitions, paused=self._paused)
        for tp in partitions:
            self._owned[(tp.topic, tp.partition)] = AssignedPartition(tp.topic, tp.partition)
        self._log_assignment("worker.assigned", partitions)
        if self.state == "running":  # a draining worker has no use for a prefetch
            # Only queues: the warm handoff prefetches on its own thread (handoff.py).
            self._on_gained([tp.partition for tp in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = [o for tp in partitions if (o := self._owned.get((tp.topic, tp.partition)))]
        if self.state != "stopping":
            # Let running messages of these partitions finish, so their new owner does not
            # run them again; bounded, because the new owner waits for this member: the
            # broker (KIP-848) hands a partition on once its old owner acknowledges the
            # revoke, and the classic protocol's second round waits for every member.
            deadline = self._clock() + self._settings.revoke_wait_s
            while any(o.tracker.unfinished for o in revoked) and self._clock() < deadline:
                self._wait_completion(WATCHDOG_INTERVAL_S)
                self._watch_deadlines(self._clock())
        self._commit(revoked, sync=True)
        consumer.incremental_unassign(partitions)
        self._forget(partitions)
        self._log_assignment("worker.revoked", partitions)
        # The next owner asks for these partitions' hot sets: report ours now, not in 10 s.
        self._on_revoked()

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Lost partitions may already belong to another member: never commit them.
        consumer.incremental_unassign(partitions)
        self._forget(partitions)
        self._log_assignment("worker.lost", partitions)

    def _forget(self, partitions: list[TopicPartition]) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        for key in gone:
            self._owned.pop(key, None)
        if self._backlog:
            self._backlog = deque(
                m for m in self._backlog if (m.topic(), m.partition()) not in gone
            )

    def _log_assignment(self, event: str, partitions: list[TopicPartition]) -> None:
        self._log.event(
            event,
            partitions=sorted(tp.partition for tp in partitions),
            assigned=sorted(p for _, p in self._owned),
        )
        self._log.flush()

    def _on_kafka_error(self, error: KafkaError) -> None:
        self._log.event("kafka.error", code=error.name(), error=error.str())
        if error.fatal():
            raise KafkaException(error)
