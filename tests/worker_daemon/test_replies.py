"""The reply stage: an answer that finds it idle is stored on the answering thread; the
watchdog's answers and a failed inline store go to the reply thread."""

from __future__ import annotations

import io
import queue
import socket
import threading
import uuid

import redis

from memrun.wire.protocol import outcome_key, reply_key
from worker_daemon.decode import Request
from worker_daemon.jobs import Completion, Job, Status
from worker_daemon.logs import EventLog
from worker_daemon.offsets import PartitionTracker
from worker_daemon.outcomes import OutcomeStore
from worker_daemon.replies import ReplyStage

WAIT_S = 10.0


def answered(service: str, offset: int, status: Status = Status.OK) -> Job:
    request_id = f"{service}-{offset}"
    request = Request(
        request_id=request_id,
        key=None,
        attempt=1,
        deadline_ms=None,
        payload={},
        payload_error=None,
        topic=f"memrun.requests.{service}",
        partition=0,
        offset=offset,
        value=b"{}",
        headers={},
    )
    tracker = PartitionTracker(request.topic, 0)
    tracker.submitted(offset)
    return Job(offset, None, offset, tracker, False, request=request, body=b"{}", status=status)


def stage_for(
    client: redis.Redis, service: str, give_up: threading.Event | None = None
) -> tuple[ReplyStage, queue.SimpleQueue[Completion]]:
    completions: queue.SimpleQueue[Completion] = queue.SimpleQueue()
    stage = ReplyStage(
        store=OutcomeStore(client, service=service, reply_ttl_s=60),
        completions=completions,
        run=lambda job: None,
        give_up=give_up or threading.Event(),
        log=EventLog(io.BytesIO()),
        log_requests=True,
    )
    return stage, completions


def test_an_answer_to_an_idle_stage_is_stored_before_put_returns(
    redis_client: redis.Redis,
) -> None:
    service = f"replies{uuid.uuid4().hex[:8]}"
    stage, completions = stage_for(redis_client, service)  # its thread is not started
    job = answered(service, 1)
    stage.put(job)
    assert completions.get_nowait() == (job, Status.OK)
    assert redis_client.get(outcome_key(service, f"{service}-1")) == b"{}"
    redis_client.delete(outcome_key(service, f"{service}-1"), reply_key(service, f"{service}-1"))


def test_the_watchdogs_answer_waits_for_the_reply_thread(redis_client: redis.Redis) -> None:
    service = f"replies{uuid.uuid4().hex[:8]}"
    stage, completions = stage_for(redis_client, service)
    job = answered(service, 1, Status.ABANDONED)
    stage.put(job)  # the poll thread's call: it never waits on Redis
    assert completions.empty()
    assert redis_client.get(outcome_key(service, f"{service}-1")) is None
    stage.start()
    try:
        assert completions.get(timeout=WAIT_S) == (job, Status.ABANDONED)
        assert redis_client.get(outcome_key(service, f"{service}-1")) == b"{}"
    finally:
        stage.stop(WAIT_S)
        redis_client.delete(
            outcome_key(service, f"{service}-1"), reply_key(service, f"{service}-1")
        )


def test_a_failed_inline_store_is_handed_to_the_reply_thread() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    unreachable = redis.Redis(port=port, socket_connect_timeout=1)
    service = f"replies{uuid.uuid4().hex[:8]}"
    give_up = threading.Event()
    stage, completions = stage_for(unreachable, service, give_up)
    stage.put(answered(service, 1))
    assert completions.empty()
    # The reply thread retries until it gives up, then reports the job undelivered.
    give_up.set()
    stage.start()
    completion = completions.get(timeout=WAIT_S)
    assert completion[1] is Status.UNDELIVERED
    stage.stop(WAIT_S)
