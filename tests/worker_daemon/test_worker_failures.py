"""Handler failures become error outcomes and DLQ records; the worker keeps serving (I4)."""

from __future__ import annotations

import json
from collections.abc import Callable

import redis

from memrun.wire.protocol import encode_headers, new_request_id, now_ms
from tests.worker_daemon.conftest import ServiceUnderTest
from tests.worker_daemon.harness import (
    WorkerProcess,
    make_producer,
    produce_requests,
    read_dlq,
    wait_for,
    wait_outcomes,
)


def test_sync_handler_failures_are_answered_and_dead_lettered(
    service_factory: Callable[..., ServiceUnderTest],
    start_worker: Callable[..., WorkerProcess],
    redis_client: redis.Redis,
) -> None:
    service = service_factory(partitions=2)
    worker = start_worker(service, "a", timeout_s=1)
    worker.wait_event("worker.assigned")
    producer = make_producer(service.bootstrap)
    ns = service.ns
    cases = {
        "raise": ({"op": "raise", "message": "bad input"}, "ValueError", "bad input"),
        "exit": ({"op": "exit", "code": 4}, "SystemExit", "4"),
        "fatal": ({"op": "fatal"}, "Fatal", "not an Exception"),
        "cycle": ({"op": "cycle"}, "ResultNotSerializable", "result is not JSON"),
        "timeout": ({"op": "block", "ns": ns, "block_s": 5}, "HandlerTimeout", "deadline"),
    }
    ids = produce_requests(
        producer,
        service.topic,
        [
            (f"user-{name}", {"user": f"user-{name}", **payload})
            for name, (payload, _, _) in cases.items()
        ],
    )
    by_case = dict(zip(cases, ids, strict=True))
    not_json_id = new_request_id()
    producer.produce(
        service.topic,
        key=b"user-x",
        value=b"{not json",
        headers=encode_headers(request_id=not_json_id, deadline_ms=now_ms() + 60_000),
    )
    expired_id = new_request_id()
    producer.produce(
        service.topic,
        key=b"user-y",
        value=b'{"user": "user-y", "op": "echo"}',
        headers=encode_headers(request_id=expired_id, deadline_ms=now_ms() - 1),
    )
    producer.flush(30)
    outcomes = wait_outcomes(redis_client, service.name, [*ids, not_json_id, expired_id])

    for name, (_, error_type, message) in cases.items():
        out = outcomes[by_case[name]]
        assert not out.ok, name
        assert out.error is not None
        assert out.error["type"] == error_type, (name, out.error)
        assert message in out.error["message"], (name, out.error)
    assert outcomes[not_json_id].error["type"] == "InvalidPayload"
    assert outcomes[expired_id].error["type"] == "HandlerTimeout"
    assert "before it started" in outcomes[expired_id].error["message"]

    # Still serving, and the timed-out handler was abandoned (its thread came back later).
    [after] = produce_requests(producer, service.topic, [("user-z", {"user": "user-z"})])
    assert wait_outcomes(redis_client, service.name, [after])[after].ok
    worker.wait_event("worker.abandoned_handler")

    records = {r["request_id"]: r for r in read_dlq(service.bootstrap, service.name, count=7)}
    assert set(records) == {*ids, not_json_id, expired_id}
    record = records[by_case["raise"]]
    assert record["error"]["type"] == "ValueError"
    assert "Traceback" in record["error"]["traceback"]
    assert json.loads(record["payload"])["op"] == "raise"
    assert record["worker"] == worker.worker_id
    assert record["key"] == "user-raise"
    assert record["attempt"] == 1
    assert record["topic"] == service.topic and record["offset"] >= 0
    assert records[not_json_id]["payload"] == "{not json"
    assert records[by_case["timeout"]]["error"]["timed_out"] is True

    # Numbers go to the stats (file here, heartbeat when provisioned), never the log.
    stats = worker.wait_stats(where=lambda e: e["requests"]["total"] == 8)
    assert stats["state"] == "running" and stats["completed"] >= 1
    requests = stats["requests"]
    assert requests["errors"] == 7 and sum(requests["latency_counts"]) == 8
    assert 0 < requests["last_minute"]["requests"] <= 8
    assert not worker.find("worker.stats")
    worker.terminate()
    assert worker.wait() == 0
    [summary] = worker.find("worker.stopped")
    assert summary["failed"] == 5 and summary["timed_out"] == 2 and summary["abandoned"] == 1


def test_async_handlers_are_cancelled_at_their_deadline(
    service_factory: Callable[..., ServiceUnderTest],
    start_worker: Callable[..., WorkerProcess],
    redis_client: redis.Redis,
) -> None:
    service = service_factory(partitions=1)
    worker = start_worker(service, "a", handler="async_ops.py", timeout_s=30)
    worker.wait_event("worker.assigned")
    producer = make_producer(service.bootstrap)
    # The deadline header is sooner than the service's timeout: it wins.
    [hang] = produce_requests(
        producer,
        service.topic,
        [("u1", {"user": "u1", "op": "hang", "ns": service.ns})],
        deadline_ms=now_ms() + 1500,
    )
    [boom, echo] = produce_requests(
        producer,
        service.topic,
        [("u2", {"user": "u2", "op": "raise"}), ("u3", {"user": "u3", "op": "echo"})],
    )
    outcomes = wait_outcomes(redis_client, service.name, [hang, boom, echo])
    assert outcomes[hang].error["type"] == "HandlerTimeout"
    assert outcomes[boom].error == {"type": "RuntimeError", "message": "async boom"}
    assert outcomes[echo].ok
    wait_for(
        lambda: redis_client.lrange(f"{service.ns}:cancelled", 0, -1) == [hang.encode()],
        what="the hanging handler to see its cancellation",
    )
    assert {r["request_id"] for r in read_dlq(service.bootstrap, service.name, count=2)} == {
        hang,
        boom,
    }
    assert not worker.find("worker.abandoned_handler")


def test_a_worker_with_most_threads_abandoned_exits_to_be_restarted(
    service_factory: Callable[..., ServiceUnderTest],
    start_worker: Callable[..., WorkerProcess],
    redis_client: redis.Redis,
) -> None:
    service = service_factory(partitions=1)
    worker = start_worker(service, "a", timeout_s=1, concurrency=4)
    worker.wait_event("worker.assigned")
    ids = produce_requests(
        make_producer(service.bootstrap),
        service.topic,
        [
            (f"u{i}", {"user": f"u{i}", "op": "block", "ns": service.ns, "block_s": 600})
            for i in range(3)
        ],
    )
    assert worker.wait(timeout_s=60) == 75
    outcomes = wait_outcomes(redis_client, service.name, ids, timeout_s=5)
    assert all(o.error["type"] == "HandlerTimeout" for o in outcomes.values())
    [summary] = worker.find("worker.stopped")
    assert summary["exit_code"] == 75 and summary["abandoned"] == 3
