"""Several workers in one group: sticky keys (I1), and at-least-once across a kill -9."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable

import pytest
import redis
from confluent_kafka.admin import AdminClient

from tests.worker_daemon.conftest import ServiceUnderTest
from tests.worker_daemon.harness import (
    WorkerProcess,
    committed_offsets,
    group_assignment,
    make_producer,
    produce_requests,
    wait_for,
    wait_outcomes,
)

PARTITIONS = 6


def start_group(
    service: ServiceUnderTest,
    start_worker: Callable[..., WorkerProcess],
    kafka_admin: AdminClient,
    **settings: object,
) -> tuple[list[WorkerProcess], dict[str, list[int]]]:
    """Three workers, once the group is stable with every one of them assigned."""
    workers = [start_worker(service, name, **settings) for name in ("a", "b", "c")]

    def stable() -> dict[str, list[int]] | None:
        for worker in workers:
            worker.check_alive("a stable group")
        assignment = group_assignment(kafka_admin, service.name)
        if assignment is None or len(assignment) != 3 or not all(assignment.values()):
            return None
        return assignment

    return workers, wait_for(stable, timeout_s=60, what="3 workers assigned")


def runs(client: redis.Redis, service: ServiceUnderTest) -> list[dict[str, object]]:
    return [json.loads(raw) for raw in client.lrange(f"{service.ns}:runs", 0, -1)]


@pytest.mark.slow
def test_each_key_is_served_by_exactly_one_worker(
    service_factory: Callable[..., ServiceUnderTest],
    start_worker: Callable[..., WorkerProcess],
    redis_client: redis.Redis,
    kafka_admin: AdminClient,
) -> None:
    service = service_factory(partitions=PARTITIONS)
    _, assignment = start_group(service, start_worker, kafka_admin)
    owner = {p: worker for worker, parts in assignment.items() for p in parts}
    keys = [f"{user}:sales" for user in range(50)]
    ids = produce_requests(
        make_producer(service.bootstrap),
        service.topic,
        [(key, {"user": key, "op": "record", "ns": service.ns}) for key in keys * 4],
    )
    wait_outcomes(redis_client, service.name, ids)

    served_by: dict[str, set[str]] = defaultdict(set)
    for run in runs(redis_client, service):
        served_by[str(run["key"])].add(str(run["worker"]))
        assert run["worker"] == owner[int(run["partition"])]
    assert set(served_by) == set(keys)
    assert all(len(served) == 1 for served in served_by.values()), served_by
    assert len({w for served in served_by.values() for w in served}) == 3
    assert group_assignment(kafka_admin, service.name) == assignment  # still stable


@pytest.mark.slow
def test_a_killed_worker_loses_no_request(
    service_factory: Callable[..., ServiceUnderTest],
    start_worker: Callable[..., WorkerProcess],
    redis_client: redis.Redis,
    kafka_admin: AdminClient,
    kafka_bootstrap: str,
) -> None:
    service = service_factory(partitions=PARTITIONS)
    workers, assignment = start_group(service, start_worker, kafka_admin, concurrency=8)
    ids = produce_requests(
        make_producer(service.bootstrap),
        service.topic,
        [
            (
                f"user-{i % 200}",
                {"user": f"user-{i % 200}", "op": "record", "ns": service.ns, "work_s": 0.01},
            )
            for i in range(1000)
        ],
    )
    wait_for(lambda: redis_client.llen(f"{service.ns}:runs") >= 150, what="150 requests run")
    victim = workers[0]
    victim.kill()
    assert victim.wait() == -9
    # The dead member keeps its partitions until its session times out, so nobody else
    # commits them meanwhile: these are the offsets committed at the kill (or earlier).
    victim_partitions = set(assignment[victim.worker_id])
    committed_at_kill = committed_offsets(kafka_bootstrap, service.name, service.topic, PARTITIONS)

    import time

    print("T kill", time.time())
    outcomes = wait_outcomes(redis_client, service.name, ids, timeout_s=120)
    print("T outcomes", time.time())
    assert all(o.ok for o in outcomes.values())

    by_request: dict[str, list[dict[str, object]]] = defaultdict(list)
    for run in runs(redis_client, service):
        by_request[str(run["id"])].append(run)
    assert set(by_request) == set(ids)
    duplicates = {rid: rs for rid, rs in by_request.items() if len(rs) > 1}
    for request_id, request_runs in duplicates.items():
        partition, offset = int(request_runs[0]["partition"]), int(request_runs[0]["offset"])
        assert partition in victim_partitions, (request_id, request_runs)
        # Only what was in flight or finished but not committed when the victim died.
        assert offset >= committed_at_kill[partition], (request_id, request_runs)
        assert {r["worker"] for r in request_runs} >= {victim.worker_id}
    print("T dups", time.time(), len(duplicates))
    survivors = {w.worker_id for w in workers[1:]}
    wait_for(
        lambda: set(group_assignment(kafka_admin, service.name) or {}) == survivors,
        what="the survivors to own every partition",
    )
    wait_for(
        lambda: (
            sum(
                committed_offsets(kafka_bootstrap, service.name, service.topic, PARTITIONS).values()
            )
            == 1000
        ),
        what="every offset committed",
    )
    print("T end", time.time())
