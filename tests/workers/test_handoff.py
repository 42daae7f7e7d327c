"""The warm handoff's control-plane side: workers report hot sets in heartbeats, and a
worker that gains partitions asks for them with its own credential (its service only)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from apps.services.models import Service
from tests.workers.test_heartbeat import beat, make_worker

pytestmark = pytest.mark.django_db


def hot(url: str, last: float, size: int = 100, version: str = '"e1"') -> list[Any]:
    return [url, size, version, last]


def handoff(credential: str, name: str, partitions: str) -> tuple[int, dict[str, Any]]:
    response = Client().get(
        f"/api/v1/workers/{name}/handoff",
        {"partitions": partitions},
        headers={"Authorization": f"Bearer {credential}"},
    )
    return response.status_code, response.json()


def test_a_gaining_worker_gets_the_other_workers_newest_hot_sets_of_its_partitions(
    service_factory: Callable[..., Service],
) -> None:
    service, other_service = service_factory(), service_factory()
    old_a, cred_a = make_worker(service, "a")
    old_b, cred_b = make_worker(service, "b")
    new, cred_new = make_worker(service, "new")
    stranger, cred_stranger = make_worker(other_service, "x")
    assert (
        beat(
            cred_a,
            old_a.name,
            hot_sets={
                "1": [hot("s3://b/one", 30.0), hot("s3://b/shared", 10.0, version='"old"')],
                "2": [hot("s3://b/two", 20.0)],
                "9": [hot("s3://b/nine", 99.0)],
            },
        )[0]
        == 200
    )
    # b owned partition 1 later: its newer read of the shared object wins.
    assert (
        beat(
            cred_b,
            old_b.name,
            hot_sets={
                "1": [hot("s3://b/shared", 40.0, version='"new"')],
            },
        )[0]
        == 200
    )
    assert beat(cred_stranger, stranger.name, hot_sets={"1": [hot("s3://other/x", 50.0)]})[0] == 200
    assert beat(cred_new, new.name, hot_sets={"1": [hot("s3://b/mine", 60.0)]})[0] == 200

    with CaptureQueriesContext(connection) as queries:
        status, body = handoff(cred_new, new.name, "1,2")
    assert status == 200, body
    assert body["hot_sets"] == {
        "1": [hot("s3://b/shared", 40.0, version='"new"'), hot("s3://b/one", 30.0)],
        "2": [hot("s3://b/two", 20.0)],
    }
    assert len(queries) <= 3  # the credential, the worker, the reports: none per worker


def test_the_handoff_is_for_the_worker_itself_and_refuses_bad_partitions(
    service_factory: Callable[..., Service],
) -> None:
    service = service_factory()
    worker, credential = make_worker(service, "a")
    other, _ = make_worker(service, "b")
    status, body = handoff(credential, other.name, "1")
    assert status == 403 and "another worker" in body["message"]
    for bad in ("", "x", "-1", "1,,y", ",".join(str(p) for p in range(5000))):
        status, body = handoff(credential, worker.name, bad)
        assert status == 422 and "partitions" in body["message"], (bad, body)
    missing = Client().get(
        f"/api/v1/workers/{worker.name}/handoff", headers={"Authorization": f"Bearer {credential}"}
    )
    assert missing.status_code == 422


def test_a_malformed_hot_set_in_a_heartbeat_is_refused_with_a_4xx(
    service_factory: Callable[..., Service],
) -> None:
    worker, credential = make_worker(service_factory(), "a")
    for bad in ({"1": "not a list"}, {"1": ["not a list"]}, ["list"]):
        status, _ = beat(credential, worker.name, hot_sets=bad)
        assert 400 <= status < 500, bad
