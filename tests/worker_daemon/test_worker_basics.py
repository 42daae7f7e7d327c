"""A worker serves requests end to end; a foreign producer's messages too."""

from __future__ import annotations

from collections.abc import Callable

import redis
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from memrun.wire.protocol import outcome_key, reply_key
from tests.fixtures.services import kafka_test_config
from tests.worker_daemon.conftest import ServiceUnderTest
from tests.worker_daemon.harness import (
    WorkerProcess,
    committed_offsets,
    make_producer,
    produce_requests,
    wait_for,
    wait_outcomes,
)


def test_a_request_is_served_and_its_caller_woken(
    service_factory: Callable[..., ServiceUnderTest],
    start_worker: Callable[..., WorkerProcess],
    redis_client: redis.Redis,
    kafka_admin: AdminClient,
    kafka_bootstrap: str,
) -> None:
    service = service_factory(partitions=2)
    worker = start_worker(service, "a")
    worker.wait_event("worker.assigned")
    ids = produce_requests(
        make_producer(service.bootstrap),
        service.topic,
        [(f"user-{i}", {"user": f"user-{i}", "op": "echo", "n": i}) for i in range(20)],
    )
    outcomes = wait_outcomes(redis_client, service.name, ids)
    for i, request_id in enumerate(ids):
        out = outcomes[request_id]
        assert out.ok, out.error
        assert out.result["echo"]["n"] == i
        assert out.result["key"] == f"user-{i}"
        assert out.worker == worker.worker_id
        assert out.meta == {"tiers": []}
        assert redis_client.lpop(reply_key(service.name, request_id)) == b"1"
        assert redis_client.ttl(outcome_key(service.name, request_id)) > 0
    wait_for(
        lambda: (
            sum(committed_offsets(kafka_bootstrap, service.name, service.topic, 2).values()) == 20
        ),
        what="offsets of all 20 committed",
    )


def test_a_message_from_a_foreign_producer_is_served_like_any_other(
    service_factory: Callable[..., ServiceUnderTest],
    start_worker: Callable[..., WorkerProcess],
    redis_client: redis.Redis,
) -> None:
    # A plain producer (no memrun headers), as kcat or a Java client would send. kcat itself
    # (Debian's librdkafka 2.0) fails SCRAM against the authenticated broker.
    service = service_factory(partitions=1)
    worker = start_worker(service, "a")
    worker.wait_event("worker.assigned")
    foreign = Producer(kafka_test_config(service.bootstrap))
    foreign.produce(
        service.topic, key=b"user-7", value=b'{"user": "user-7", "op": "echo", "from": "kcat"}'
    )
    assert foreign.flush(30) == 0
    # No request-id header: the id is derived from where the message sits.
    request_id = f"{service.topic}:0:0"
    out = wait_outcomes(redis_client, service.name, [request_id])[request_id]
    assert out.ok
    assert out.result["echo"]["from"] == "kcat"
    assert out.result["key"] == "user-7"
    event = worker.wait_event("request", where=lambda e: e["request_id"] == request_id)
    assert event["status"] == "ok"
    assert event["partition"] == 0 and event["offset"] == 0 and event["key"] == "user-7"


def test_request_lines_past_the_rate_are_counted_not_logged_and_failures_always_are(
    service_factory: Callable[..., ServiceUnderTest],
    start_worker: Callable[..., WorkerProcess],
    redis_client: redis.Redis,
) -> None:
    service = service_factory(partitions=1)
    # Half a line a second: the first successful line may be logged a second in at best.
    worker = start_worker(service, "a", request_log_per_s=0.5)
    worker.wait_event("worker.assigned")
    producer = make_producer(service.bootstrap)
    ids = produce_requests(
        producer, service.topic, [(f"u{i}", {"user": f"u{i}", "op": "echo"}) for i in range(60)]
    )
    wait_outcomes(redis_client, service.name, ids)
    # Answered after all of those, so its line says how many went unlogged before it.
    [failed] = produce_requests(producer, service.topic, [("u", {"user": "u", "op": "raise"})])
    wait_outcomes(redis_client, service.name, [failed])
    last = worker.wait_event("request", where=lambda e: e["request_id"] == failed)
    assert last["status"] != "ok"
    lines = [e for e in worker.find("request") if e["request_id"] in set(ids)]
    unlogged = sum(e.get("unlogged_before", 0) for e in worker.find("request"))
    assert len(lines) < len(ids)
    assert len(lines) + unlogged == len(ids)
