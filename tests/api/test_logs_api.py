"""The worker logs API: workers post only their own lines; users read a worker's or a
service's lines page by page, in a bounded number of queries."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from apps.services.models import Service
from apps.workers.models import Worker, WorkerLogLine
from apps.workers.services import worker_create, worker_mark_dead, worker_mark_stopped

pytestmark = pytest.mark.django_db

JSON = "application/json"


@pytest.fixture(autouse=True)
def no_prune_on_ingest(settings: Any) -> None:
    settings.MEMRUN_LOG_PRUNE_EVERY_LINES = 10**15


@pytest.fixture
def service(service_factory: Callable[..., Service]) -> Service:
    return service_factory()


@pytest.fixture
def worker(service: Service) -> tuple[Worker, Client]:
    """A worker and a client that sends its credential."""
    worker, credential = worker_create(service=service, name=f"{service.name}-a")
    return worker, Client(headers={"Authorization": f"Bearer {credential}"})


def lines(start: datetime, count: int, **fields: Any) -> list[dict[str, Any]]:
    return [
        {"ts": (start + timedelta(seconds=n)).timestamp(), "message": f"line {n}", **fields}
        for n in range(count)
    ]


def post(client: Client, name: str, body: Any) -> Any:
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return client.post(f"/api/v1/workers/{name}/logs", data, content_type=JSON)


def test_a_worker_posts_its_own_lines(worker: tuple[Worker, Client]) -> None:
    me, client = worker
    now = timezone.now()
    body = {
        "lines": [
            {
                "ts": now.isoformat(),
                "level": "error",
                "event": "request",
                "request_id": "r1",
                "message": "boom",
                "fields": {"status": "failed"},
            },
            {"ts": now.timestamp(), "message": "plain"},
        ]
    }
    response = post(client, me.name, body)
    assert response.status_code == 201, response.content
    assert response.json() == {"accepted": 2}
    stored = list(WorkerLogLine.objects.filter(worker=me).order_by("pk"))
    assert [(s.level, s.event, s.request_id, s.message) for s in stored] == [
        ("error", "request", "r1", "boom"),
        ("info", "log", "", "plain"),
    ]
    assert stored[0].fields == {"status": "failed"}
    assert abs(stored[1].ts - now) < timedelta(milliseconds=1)


def test_a_worker_may_not_post_for_another(service: Service, worker: tuple[Worker, Client]) -> None:
    _me, client = worker
    them, _ = worker_create(service=service, name=f"{service.name}-b")
    response = post(client, them.name, {"lines": lines(timezone.now(), 1)})
    assert response.status_code == 403
    assert "another worker" in response.json()["message"]
    assert not WorkerLogLine.objects.filter(worker=them).exists()


def test_user_tokens_and_unknown_credentials_cannot_post(
    api_client: Client, worker: tuple[Worker, Client]
) -> None:
    me, _client = worker
    body = {"lines": lines(timezone.now(), 1)}
    assert post(api_client, me.name, body).status_code == 401
    assert post(Client(), me.name, body).status_code == 401
    unknown = Client(headers={"Authorization": "Bearer mrw_not-a-worker-credential"})
    assert post(unknown, me.name, body).status_code == 401
    assert not WorkerLogLine.objects.exists()


def test_a_stopped_worker_delivers_its_last_lines_within_the_grace_only(
    settings: Any, worker: tuple[Worker, Client]
) -> None:
    me, client = worker
    worker_mark_stopped(worker=me, reason="test")
    heartbeat = client.post(
        f"/api/v1/workers/{me.name}/heartbeat", {"state": "ready"}, content_type=JSON
    )
    assert heartbeat.status_code == 401  # it may no longer act: only its last lines arrive
    assert post(client, me.name, {"lines": lines(timezone.now(), 2)}).status_code == 201

    grace = timedelta(seconds=settings.MEMRUN_WORKER_LOG_GRACE_S)
    Worker.objects.filter(pk=me.pk).update(
        state_changed_at=timezone.now() - grace - timedelta(seconds=1)
    )
    assert post(client, me.name, {"lines": lines(timezone.now(), 1)}).status_code == 401
    assert WorkerLogLine.objects.filter(worker=me).count() == 2


def test_a_dead_workers_credential_is_refused_at_once(worker: tuple[Worker, Client]) -> None:
    me, client = worker
    worker_mark_dead(worker=me, reason="no heartbeat")
    assert post(client, me.name, {"lines": lines(timezone.now(), 1)}).status_code == 401
    assert not WorkerLogLine.objects.exists()


def test_a_bad_line_is_422_naming_it(worker: tuple[Worker, Client]) -> None:
    me, client = worker
    bad = lines(timezone.now(), 2)
    bad[1]["level"] = "loud"
    response = post(client, me.name, {"lines": bad})
    assert response.status_code == 422
    assert list(response.json()["details"]["fields"]) == ["lines.1.level"]
    assert post(client, me.name, b"{not json").status_code == 422
    assert not WorkerLogLine.objects.exists()


def test_oversized_batches_are_413(worker: tuple[Worker, Client]) -> None:
    me, client = worker
    too_many = post(client, me.name, {"lines": lines(timezone.now(), 1001)})
    assert too_many.status_code == 413
    assert too_many.json()["details"] == {"lines": 1001, "limit": 1000}

    big = {"lines": [{"ts": 0, "message": "x" * (1024 * 1024)}]}
    too_big = post(client, me.name, big)
    assert too_big.status_code == 413
    assert too_big.json()["details"]["limit"] == 1024 * 1024
    assert not WorkerLogLine.objects.exists()


def test_reading_a_worker_page_by_page_in_bounded_queries(
    api_client: Client, worker: tuple[Worker, Client], django_assert_max_num_queries: Any
) -> None:
    me, client = worker
    start = timezone.now() - timedelta(minutes=5)
    assert post(client, me.name, {"lines": lines(start, 25, request_id="r1")}).status_code == 201
    assert post(client, me.name, {"lines": lines(start, 5, level="error")}).status_code == 201

    url = f"/api/v1/workers/{me.name}/logs"
    seen: list[str] = []
    since = str(start.timestamp())
    while True:
        # token, last-used, the worker, high water, late lines, the page
        with django_assert_max_num_queries(6):
            page = api_client.get(url, {"since": since, "request_id": "r1", "limit": 10}).json()
        seen += [line["message"] for line in page["lines"]]
        since = page["next_since"]
        if not page["more"]:
            break
    assert seen == [f"line {n}" for n in range(25)]
    assert page["lines"][-1]["worker"] == me.name

    errors = api_client.get(url, {"level": "error"}).json()["lines"]
    assert [line["level"] for line in errors] == ["error"] * 5
    tail = api_client.get(url, {"limit": 3}).json()
    assert [line["message"] for line in tail["lines"]] == ["line 22", "line 23", "line 24"]


def test_the_service_view_merges_its_workers(
    api_client: Client,
    service: Service,
    worker: tuple[Worker, Client],
    django_assert_max_num_queries: Any,
) -> None:
    me, client = worker
    them, credential = worker_create(service=service, name=f"{service.name}-b")
    start = timezone.now() - timedelta(minutes=1)
    post(client, me.name, {"lines": [lines(start, 3)[n] for n in (0, 2)]})
    post(
        Client(headers={"Authorization": f"Bearer {credential}"}),
        them.name,
        {"lines": [lines(start, 3)[1]]},
    )

    with django_assert_max_num_queries(5):
        page = api_client.get(f"/api/v1/services/{service.name}/logs").json()
    assert [(line["worker"], line["message"]) for line in page["lines"]] == [
        (me.name, "line 0"),
        (them.name, "line 1"),
        (me.name, "line 2"),
    ]


def test_unknown_names_and_bad_queries(api_client: Client, worker: tuple[Worker, Client]) -> None:
    me, _client = worker
    assert api_client.get("/api/v1/workers/nobody/logs").status_code == 404
    assert api_client.get("/api/v1/services/nothing/logs").status_code == 404
    bad_since = api_client.get(f"/api/v1/workers/{me.name}/logs", {"since": "soon"})
    assert bad_since.status_code == 422
    assert list(bad_since.json()["details"]["fields"]) == ["since"]
    bad_limit = api_client.get(f"/api/v1/workers/{me.name}/logs", {"limit": 5000})
    assert bad_limit.status_code == 422
    assert list(bad_limit.json()["details"]["fields"]) == ["limit"]


def test_the_service_view_narrows_to_one_of_its_workers(
    api_client: Client,
    service: Service,
    worker: tuple[Worker, Client],
    service_factory: Callable[..., Service],
) -> None:
    me, client = worker
    them, credential = worker_create(service=service, name=f"{service.name}-b")
    stranger, _ = worker_create(service=service_factory(), name=f"{service.name}-z")
    start = timezone.now()
    post(client, me.name, {"lines": lines(start, 2)})
    post(
        Client(headers={"Authorization": f"Bearer {credential}"}),
        them.name,
        {"lines": lines(start, 1)},
    )

    url = f"/api/v1/services/{service.name}/logs"
    mine = api_client.get(url, {"worker": me.name}).json()["lines"]
    assert {line["worker"] for line in mine} == {me.name} and len(mine) == 2
    elsewhere = api_client.get(url, {"worker": stranger.name})
    assert elsewhere.status_code == 404
    assert f"in service {service.name!r}" in elsewhere.json()["message"]
