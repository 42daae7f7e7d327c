"""The reply stage: one thread doing all of a worker's Redis I/O, batched.

Pool threads hand over answered jobs; the poll thread hands over jobs to check (may
they have been answered before?) and the watchdog's answers. Each round takes everything
waiting, up to `max_batch`, and sends it as one round trip, so a busy worker pays a
fraction of a round trip per request. Answered jobs are then logged and reported to the
poll thread; checked ones go to the pool, or, if an outcome exists, are reported done
without running.

A quiet worker has nothing to batch: a pool thread whose answer finds the stage idle
(no round under way, nothing waiting) stores it itself, once, instead of waking the
reply thread, which saves a thread hop on the request's path (~0.15 ms at p50, more at
p99 on a busy machine) and the wake-up's CPU. If that store fails the job goes to the
reply thread, which retries. The poll thread never stores inline: it never waits on
Redis.

Each answered request is a `request` log line, up to `request_log_per_s` successful ones a
second (a burst of a second's worth): past it a line per request would cost the worker, the
log shipping and the control plane's database more than a no-op request itself. Failures
and redeliveries are always logged; a logged line says how many successful requests went
unlogged since the previous one (`unlogged_before`), so counts stay exact.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from worker_daemon.jobs import Completion, Job, Status
from worker_daemon.logs import EventLog
from worker_daemon.outcomes import OutcomeStore
from worker_daemon.pipeline import decode_job

MAX_RETRY_DELAY_S = 2.0


class ReplyStage:
    def __init__(
        self,
        *,
        store: OutcomeStore,
        completions: queue.SimpleQueue[Completion],
        run: Callable[[Job], None],
        give_up: threading.Event,
        log: EventLog,
        log_requests: bool,
        request_log_per_s: float = 50.0,
        max_batch: int = 256,
    ) -> None:
        self._store = store
        self._completions = completions
        self._run = run
        self._give_up = give_up
        self._log = log
        self._log_requests = log_requests
        self._log_budget = _RateBudget(request_log_per_s)
        self._unlogged = 0
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        # Held through every round, by the reply thread or a pool thread storing inline:
        # the store's connection, the log budget and `_unlogged` have one user at a time.
        self._round_lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name="memrun-replies", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, job: Job) -> None:
        """An answered job (`body` set) to store, or a job to check before it runs.

        A pool thread's answer (not abandoned) is stored on the calling thread when the
        stage is idle; anything else is queued for the reply thread."""
        if (
            job.body is not None
            and job.status is not Status.ABANDONED
            and self._queue.empty()
            and self._round_lock.acquire(blocking=False)
        ):
            try:
                if self._round([job], retry=False):
                    return
            finally:
                self._round_lock.release()
        self._queue.put(job)

    def stop(self, timeout_s: float) -> None:
        """Finish what was handed over (or give up per `give_up`), then end the thread."""
        self._queue.put(None)
        self._thread.join(timeout_s)

    def _serve(self) -> None:
        get, pending = self._queue.get, self._queue
        while True:
            first = get()
            batch: list[Job] = []
            stopping = first is None
            if first is not None:
                batch.append(first)
            while not stopping and len(batch) < self._max_batch and not pending.empty():
                job = pending.get_nowait()
                if job is None:
                    stopping = True
                else:
                    batch.append(job)
            if batch:
                with self._round_lock:
                    try:
                        self._round(batch)
                    except BaseException as exc:  # never lose the jobs' slots
                        self._log.event("replies.error", error=repr(exc))
                        for job in batch:
                            self._completions.put((job, Status.UNDELIVERED))
            if stopping:
                with self._round_lock:
                    self._store.close()
                return

    def _round(self, batch: list[Job], *, retry: bool = True) -> bool:
        """Store and check `batch` and report each job; False (nothing reported) if the
        store failed and `retry` is off. Called with `_round_lock` held."""
        checks = [job for job in batch if job.body is None]
        answers = [job for job in batch if job.body is not None]
        for job in checks:
            if job.request is None:
                decode_job(job)
        found = self._exchange(
            [job.request.request_id for job in checks if job.request],
            [(job.request.request_id, job.body) for job in answers if job.request and job.body],
            retry=retry,
        )
        if found is None and not retry:
            return False
        if found is None:  # gave up on Redis: run the checks (at least once), keep the rest
            for job in checks:
                self._run(job)
            for job in answers:
                if job.status is not Status.ABANDONED:  # its slot is still held
                    self._completions.put((job, Status.UNDELIVERED))
            return True
        existing, stored = found
        for job, exists in zip(checks, existing, strict=True):
            if exists:
                self._log_request(job, Status.SKIPPED, duplicate=False)
                self._completions.put((job, Status.SKIPPED))
            else:
                self._run(job)
        for job, first in zip(answers, stored, strict=True):
            self._log_request(job, job.status, duplicate=not first)
            self._completions.put((job, job.status))
        return True

    def _exchange(
        self, check_ids: list[str], stores: list[tuple[str, bytes]], *, retry: bool
    ) -> tuple[list[bool], list[bool]] | None:
        """Retried with backoff while Redis fails, until `give_up` (then None); tried
        once without `retry` (None: it failed, and the reply thread will try again)."""
        delay_s = 0.05
        while True:
            try:
                return self._store.exchange(check_ids, stores)
            except Exception as exc:
                if not retry:
                    return None
                self._log.event("reply.error", error=repr(exc), batch=len(check_ids) + len(stores))
                if self._give_up.wait(delay_s):
                    return None
                delay_s = min(delay_s * 2, MAX_RETRY_DELAY_S)

    def _log_request(self, job: Job, status: Status, *, duplicate: bool) -> None:
        failure = job.failure
        if not self._log_requests and failure is None and status is not Status.SKIPPED:
            return
        if failure is None and status is not Status.SKIPPED and not self._log_budget.take():
            self._unlogged += 1
            return
        request = job.request
        assert request is not None
        fields: dict[str, Any] = {
            "request_id": request.request_id,
            "key": request.key,
            "partition": request.partition,
            "offset": request.offset,
            "duration_ms": round(job.duration_ms, 3),
            "status": status.value,
        }
        if failure is not None:
            fields["error_type"] = failure.type
            fields["error"] = failure.message
        if duplicate:
            fields["duplicate"] = True
        if self._unlogged:
            fields["unlogged_before"], self._unlogged = self._unlogged, 0
        self._log.event("request", **fields)


class _RateBudget:
    """A token bucket: `per_s` a second, holding at most a second's worth. Used by the
    reply thread only."""

    def __init__(self, per_s: float) -> None:
        self._per_s = per_s
        self._tokens = per_s
        self._at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._per_s, self._tokens + (now - self._at) * self._per_s)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False
