"""Backpressure (I3) and graceful shutdown of a worker with work in flight."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
from confluent_kafka.admin import AdminClient

from tests.worker_daemon.conftest import ServiceUnderTest
from tests.worker_daemon.harness import (
    WorkerProcess,
    committed_offsets,
    group_assignment,
    group_state,
    make_producer,
    produce_requests,
    wait_for,
    wait_outcomes,
)


def blocked_requests(service: ServiceUnderTest, count: int) -> list[tuple[str, dict[str, object]]]:
    return [
        (f"user-{i}", {"user": f"user-{i}", "op": "block", "ns": service.ns, "block_s": 120})
        for i in range(count)
    ]


def running(client: redis.Redis, service: ServiceUnderTest) -> int:
    return int(client.get(f"{service.ns}:running") or 0)


@pytest.mark.slow
def test_a_full_worker_pauses_stays_in_the_group_and_reports_lag(
    service_factory: Callable[..., ServiceUnderTest],
    start_worker: Callable[..., WorkerProcess],
    redis_client: redis.Redis,
    kafka_admin: AdminClient,
    kafka_bootstrap: str,
) -> None:
    service = service_factory(partitions=2)
    # A short max.poll.interval: a worker that stopped polling while full would be
    # thrown out of the group well within the time it stays paused here.
    worker = start_worker(
        service, "a", concurrency=4, max_poll_interval_ms=7000, session_timeout_ms=6000
    )
    worker.wait_event("worker.assigned")
    ids = produce_requests(
        make_producer(service.bootstrap), service.topic, blocked_requests(service, 40)
    )
    wait_for(lambda: running(redis_client, service) == 4, what="4 handlers running")

    paused = worker.wait_stats(
        # 4 running and 4 queued in the pool (prefetch): the other 32 wait in Kafka.
        where=lambda e: (
            e["paused"] and e["in_flight"] == e["max_in_flight"] == 8 and e["lag"] == 40
        ),
    )
    assert paused["partitions"] and all(p["lag"] is not None for p in paused["partitions"])
    # Paused for longer than max.poll.interval.ms, and still a member.
    worker.wait_stats(timeout_s=30, where=lambda e: e["ts"] > paused["ts"] + 8 and e["paused"])
    assert group_assignment(kafka_admin, service.name) == {worker.worker_id: [0, 1]}
    assert not worker.find("worker.revoked") and not worker.find("worker.lost")
    assert running(redis_client, service) == 4

    redis_client.rpush(f"{service.ns}:gate", *range(40))
    outcomes = wait_outcomes(redis_client, service.name, ids)
    assert all(o.ok and o.result == {"released": True} for o in outcomes.values())
    assert int(redis_client.get(f"{service.ns}:high")) == 4
    drained = worker.wait_stats(where=lambda e: e["lag"] == 0)
    assert not drained["paused"]
    wait_for(
        lambda: (
            sum(committed_offsets(kafka_bootstrap, service.name, service.topic, 2).values()) == 40
        ),
        what="all 40 offsets committed",
    )


def test_sigterm_finishes_in_flight_work_commits_and_exits_0(
    service_factory: Callable[..., ServiceUnderTest],
    start_worker: Callable[..., WorkerProcess],
    redis_client: redis.Redis,
    kafka_admin: AdminClient,
    kafka_bootstrap: str,
) -> None:
    service = service_factory(partitions=1)
    worker = start_worker(service, "a", concurrency=4)
    worker.wait_event("worker.assigned")
    ids = produce_requests(
        make_producer(service.bootstrap), service.topic, blocked_requests(service, 8)
    )
    wait_for(lambda: running(redis_client, service) == 4, what="4 handlers running")
    worker.wait_stats(where=lambda e: e["in_flight"] == 8)  # 4 more queued

    worker.terminate()
    worker.wait_event("worker.draining")
    redis_client.rpush(f"{service.ns}:gate", *range(4))
    assert worker.wait() == 0

    started = [i.decode() for i in redis_client.lrange(f"{service.ns}:started", 0, -1)]
    assert sorted(started) == sorted(ids[:4])  # nothing new started after SIGTERM
    outcomes = wait_outcomes(redis_client, service.name, ids[:4], timeout_s=5)
    assert all(o.ok for o in outcomes.values())
    assert committed_offsets(kafka_bootstrap, service.name, service.topic, 1) == {0: 4}
    # It left the group (though a static member): its partitions need not wait for its
    # session to time out.
    assert group_state(kafka_admin, service.name) == "EMPTY"
    [summary] = worker.find("worker.stopped")
    assert summary["exit_code"] == 0 and summary["completed"] == 4
    assert summary["returned"] == 4  # prefetched, never started: the next owner runs them
    assert summary["unfinished"] == 0
