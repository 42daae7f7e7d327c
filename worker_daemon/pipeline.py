"""The run step a pool thread takes for each job: decode -> run the handler -> answer.

The answer (the outcome's JSON, plus a DLQ record for a failure) is handed to the reply
stage, which stores it and reports the job done; the pool thread is free for the next
job at once. Nothing here touches offsets.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from memrun.context import RequestContext, WorkerContext
from memrun.service import HandlerSpec
from memrun.wire.protocol import Outcome, now_ms
from worker_daemon.cache.hotset import partition_scope
from worker_daemon.decode import Request, decode_request
from worker_daemon.executor import Deadlines, HandlerTimeout, Lane, run_handler
from worker_daemon.jobs import Completion, Job, Status
from worker_daemon.logs import EventLog, request_scope
from worker_daemon.metrics import RequestMetrics
from worker_daemon.outcomes import DeadLetters, Failure


def decode_job(job: Job) -> Request:
    message = job.message
    job.request = decode_request(
        topic=message.topic(),
        partition=message.partition(),
        offset=job.offset,
        key=message.key(),
        value=message.value(),
        headers=message.headers(),
    )
    return job.request


class RequestPipeline:
    """Called by a pool thread for each job; never raises. `replies` receives answered
    jobs; `completions` those that end here (not started, or abandoned and back)."""

    def __init__(
        self,
        *,
        handler: HandlerSpec,
        worker: WorkerContext,
        dead_letters: DeadLetters,
        metrics: RequestMetrics,
        replies: Callable[[Job], None],
        completions: queue.SimpleQueue[Completion],
        deadlines: Deadlines[Job],
        timeout_s: float,
        async_cancel_grace_s: float,
        stopping: threading.Event,
        log: EventLog,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._handler = handler
        self._worker = worker
        self._dead_letters = dead_letters
        self._metrics = metrics
        self._replies = replies
        self._completions = completions
        self._deadlines = deadlines
        self._timeout_s = timeout_s
        self._watch_margin_s = async_cancel_grace_s if handler.is_async else 0.0
        self._stopping = stopping
        self._log = log
        self._clock = clock

    def __call__(self, job: Job, lane: Lane) -> None:
        try:
            ended = self._process(job, lane)
        except BaseException as exc:  # a bug here must not lose the slot
            self._log.event("pipeline.error", offset=job.offset, error=repr(exc))
            ended = Status.UNDELIVERED
        if ended is not None:
            self._completions.put((job, ended))

    def _process(self, job: Job, lane: Lane) -> Status | None:
        if self._stopping.is_set():
            return Status.RETURNED  # fetched, never started: its next owner runs it
        request = job.request or decode_job(job)
        timeout_s = self._timeout_s
        if request.deadline_ms is not None:
            timeout_s = min(timeout_s, (request.deadline_ms - now_ms()) / 1000)
        job.timeout_s = timeout_s
        ctx = RequestContext(
            self._worker,
            request_id=request.request_id,
            key=request.key,
            attempt=request.attempt,
            partition=request.partition,
            offset=request.offset,
            deadline_ms=request.deadline_ms,
        )
        started = self._clock()
        result: Any = None
        failure: Failure | None = None
        if request.payload_error is not None:
            failure = Failure.from_exception(request.payload_error)
        elif timeout_s <= 0:
            failure = Failure.timeout(timeout_s, before_start=True)
        else:
            self._deadlines.start(job.seq, job, started + timeout_s + self._watch_margin_s)
            try:
                with request_scope(request.request_id), partition_scope(request.partition):
                    result = run_handler(
                        self._handler, ctx, request.payload, timeout_s=timeout_s, lane=lane
                    )
            except HandlerTimeout:
                failure = Failure.timeout(timeout_s)
            except BaseException as exc:  # SystemExit too: a handler never stops the worker
                failure = Failure.from_exception(exc)
            if not self._deadlines.finish(job.seq):
                return Status.FREED  # the watchdog has answered for it
        self.answer(job, result, failure, (self._clock() - started) * 1000, ctx.tiers)
        return None

    def answer_timeout(self, job: Job) -> None:
        """The watchdog's answer for a job whose handler overran (poll thread)."""
        self.answer(
            job, None, Failure.timeout(job.timeout_s), job.timeout_s * 1000, [], abandoned=True
        )

    def answer(
        self,
        job: Job,
        result: Any,
        failure: Failure | None,
        duration_ms: float,
        tiers: list[str],
        *,
        abandoned: bool = False,
    ) -> None:
        request = job.request
        assert request is not None, "a job is decoded before it runs"
        try:
            body = self._outcome(request, result, failure, duration_ms, tiers).to_json()
        except Exception as exc:  # e.g. a circular structure (RecursionError)
            failure = Failure(type="ResultNotSerializable", message=f"result is not JSON: {exc}")
            body = self._outcome(request, None, failure, duration_ms, tiers).to_json()
        if failure is not None:
            try:
                self._dead_letters.send(request, failure)
            except Exception as exc:  # the caller still gets its outcome
                self._log.event("dlq.error", request_id=request.request_id, error=repr(exc))
        self._metrics.observe(duration_ms=duration_ms, ok=failure is None)
        job.body = body
        job.failure = failure
        job.duration_ms = duration_ms
        # Set before the hand-over: the reply stage reports this status, and an abandoned
        # job's slot must stay taken until its thread comes back.
        job.status = (
            Status.ABANDONED
            if abandoned
            else Status.OK
            if failure is None
            else Status.TIMED_OUT
            if failure.timed_out
            else Status.FAILED
        )
        self._replies(job)

    def _outcome(
        self,
        request: Request,
        result: Any,
        failure: Failure | None,
        duration_ms: float,
        tiers: list[str],
    ) -> Outcome:
        return Outcome(
            request_id=request.request_id,
            ok=failure is None,
            result=result if failure is None else None,
            error=failure.public() if failure is not None else None,
            worker=self._worker.worker_id,
            attempt=request.attempt,
            partition=request.partition,
            offset=request.offset,
            duration_ms=round(duration_ms, 3),
            meta={"tiers": tiers},
        )
