"""Heartbeats: a worker reports itself with its own credential only, its state changes are
recorded, and the answer asks it to drain when the control plane decided so."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from apps.services.models import Service
from apps.services.services import deployment_create
from apps.workers.models import Worker, WorkerEvent
from apps.workers.services import (
    worker_create,
    worker_drain,
    worker_heartbeat,
    worker_mark_dead,
)

pytestmark = pytest.mark.django_db
JSON = "application/json"


@pytest.fixture
def service(service_factory: Callable[..., Service]) -> Service:
    return service_factory()


def make_worker(service: Service, suffix: str = "a") -> tuple[Worker, str]:
    deployment = service.deployments.first() or deployment_create(
        service=service, sha256="a" * 64, size_bytes=1, artifact_url="file:///tmp/x"
    )
    return worker_create(service=service, deployment=deployment, name=f"{service.name}-{suffix}")


def beat(credential: str | None, name: str, **body: object) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {credential}"} if credential else {}
    response = Client().post(
        f"/api/v1/workers/{name}/heartbeat",
        {"state": "ready", **body},
        content_type=JSON,
        headers=headers,
    )
    return response.status_code, response.json()


def test_a_worker_reports_itself_and_is_told_to_run(service: Service) -> None:
    worker, credential = make_worker(service)
    status, body = beat(
        credential,
        worker.name,
        state="booting",
        deployment_id=worker.deployment_id,
        stats={"handled": 0},
    )
    assert (status, body) == (200, {"action": "run"})
    status, body = beat(credential, worker.name, in_flight=3, partitions=[2, 0], lag=7)
    assert (status, body) == (200, {"action": "run"})

    worker.refresh_from_db()
    assert worker.state == Worker.State.READY
    assert worker.ready_at is not None and worker.last_heartbeat_at is not None
    assert worker.stats["in_flight"] == 3 and worker.stats["partitions"] == [2, 0]
    assert worker.stats["lag"] == 7
    events = list(WorkerEvent.objects.filter(worker=worker).values_list("from_state", "to_state"))
    assert events == [("", "provisioning"), ("provisioning", "booting"), ("booting", "ready")]


def test_credentials_are_per_worker(service: Service, api_token: tuple[object, str]) -> None:
    worker, credential = make_worker(service, "a")
    _, other_credential = make_worker(service, "b")

    status, body = beat(other_credential, worker.name)
    assert status == 403 and "another worker" in body["message"]
    assert beat(None, worker.name)[0] == 401
    assert beat("mrw_not-a-real-one", worker.name)[0] == 401
    # A user's API token is not a worker credential, and the other way round.
    assert beat(api_token[1], worker.name)[0] == 401
    user_route = Client().get("/api/v1/services", headers={"Authorization": f"Bearer {credential}"})
    assert user_route.status_code == 401
    worker.refresh_from_db()
    assert worker.last_heartbeat_at is None


def test_a_finished_worker_is_refused(service: Service) -> None:
    worker, credential = make_worker(service)
    assert beat(credential, worker.name)[0] == 200
    worker_mark_dead(worker=worker, reason="silent")
    assert beat(credential, worker.name)[0] == 401


def test_drain_is_answered_until_the_worker_says_stopped(service: Service) -> None:
    worker, credential = make_worker(service)
    beat(credential, worker.name)
    assert worker_drain(worker=worker, reason="scaled to 0")
    assert beat(credential, worker.name) == (200, {"action": "drain"})
    # Whatever it reports meanwhile, it stays draining.
    assert beat(credential, worker.name, state="ready") == (200, {"action": "drain"})
    worker.refresh_from_db()
    assert worker.state == Worker.State.DRAINING

    assert beat(credential, worker.name, state="stopped", exit_code=0)[0] == 200
    worker.refresh_from_db()
    assert worker.state == Worker.State.STOPPED
    assert worker.events.last().reason == "the worker stopped"
    assert beat(credential, worker.name)[0] == 401


def test_a_failed_start_is_recorded_with_its_reason(service: Service) -> None:
    worker, credential = make_worker(service)
    status, _ = beat(
        credential, worker.name, state="stopped", exit_code=1, error="ValueError: boom"
    )
    assert status == 200
    worker.refresh_from_db()
    assert worker.state == Worker.State.STOPPED and worker.ready_at is None
    assert worker.stats["exit_code"] == 1
    assert worker.events.last().reason == "the worker exited with code 1: ValueError: boom"


def test_an_unknown_state_is_422(service: Service) -> None:
    worker, credential = make_worker(service)
    status, body = beat(credential, worker.name, state="dead")
    assert status == 422 and "state" in body["details"]["fields"]


def test_a_heartbeat_that_changes_the_state_wakes_reconcile(
    service: Service, django_capture_on_commit_callbacks, settings, monkeypatch
) -> None:
    from apps.provisioning import tasks

    woken: list[int] = []
    monkeypatch.setattr(tasks.reconcile_service, "delay", woken.append)
    settings.MEMRUN_RECONCILE_ON_EVENTS = True
    worker, _ = make_worker(service)
    now = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        worker_heartbeat(worker=worker, state="booting", stats={}, now=now)
    assert woken == []
    with django_capture_on_commit_callbacks(execute=True):
        worker_heartbeat(worker=worker, state="ready", stats={}, now=now + timedelta(seconds=1))
        worker_heartbeat(worker=worker, state="ready", stats={}, now=now + timedelta(seconds=2))
    assert woken == [service.pk]


def test_a_value_the_database_cannot_store_is_a_422(service: Service) -> None:
    """Found by tests/api/test_no_5xx.py: PostgreSQL refuses a NUL in JSON text."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("SQLite stores NUL characters")
    worker, credential = make_worker(service)
    status, body = beat(credential, worker.name, stats={"note": "a\x00b"})
    assert status == 422, body
    assert "cannot be stored" in body["message"] and "NUL" in body["message"]
