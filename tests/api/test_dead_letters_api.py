"""Dead letters end to end, against real Kafka and real worker processes: a handler that
raises for one key leaves a record on the DLQ, listed and inspected through the API; a
fixed version is started; replaying the record makes the request succeed."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from apps.services.models import DeadLetterReplay
from tests.worker_daemon.harness import WorkerProcess, make_package, wait_for, worker_env

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def start(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> Iterator[Callable[[str, str], WorkerProcess]]:
    """`start(service, handler)`: a worker process running `handler` for `service`."""
    started: list[WorkerProcess] = []

    def run(service: str, handler: str) -> WorkerProcess:
        package = make_package(tmp_path / handler, service=service, handler=handler)
        env = worker_env(
            service=service, bootstrap=kafka_bootstrap, redis_url=redis_url, cache_root=tmp_path
        )
        worker = WorkerProcess(
            service=service,
            package=package,
            worker_id=f"{service}-{handler}",
            env=env,
            log_path=tmp_path / f"{handler}.log",
        )
        started.append(worker)
        worker.wait_event("worker.assigned")
        return worker

    yield run
    for worker in started:
        worker.stop()


@pytest.fixture
def name(
    api_client: Client, service_name: Callable[[], str], deploy_settings: Callable[..., Any]
) -> str:
    """A service created through the API, deployed with sticky key `user`."""
    from apps.services.models import Service

    name = service_name()
    created = api_client.post(
        "/api/v1/services", {"name": name, "partitions": 2}, content_type="application/json"
    )
    assert created.status_code == 201, created.content
    deploy_settings(Service.objects.get(name=name), status="active", sticky_key="user")
    return name


def invoke(client: Client, name: str, payload: object) -> dict[str, Any]:
    # Queued: these workers run by hand, with no deployment behind them.
    response = client.post(
        f"/api/v1/services/{name}/invoke?wait=30&queue=true",
        json.dumps(payload),
        content_type="application/json",
    )
    assert response.status_code == 200, response.content
    body: dict[str, Any] = response.json()
    return body


def dead_letters(client: Client, name: str, **query: object) -> dict[str, Any]:
    response = client.get(f"/api/v1/services/{name}/dead-letters", query)
    assert response.status_code == 200, response.content
    body: dict[str, Any] = response.json()
    return body


def test_a_failed_request_is_listed_inspected_and_replayed_after_a_fix(
    api_client: Client, name: str, start: Callable[[str, str], WorkerProcess]
) -> None:
    v1 = start(name, "picky_v1.py")
    assert invoke(api_client, name, {"user": "good"})["ok"] is True
    failed = invoke(api_client, name, {"user": "bad", "n": 7})
    assert failed["ok"] is False and "cannot serve bad" in failed["error"]["message"]

    listed = wait_for(
        lambda: dead_letters(api_client, name)["items"], what="the failed request on the DLQ"
    )
    [letter] = listed
    assert letter["request_id"] == failed["request_id"]
    assert letter["key"] == "bad" and letter["attempt"] == 1
    assert letter["error_type"] == "ValueError" and not letter["timed_out"]
    assert "cannot serve bad" in letter["error_message"]
    assert letter["worker"] == v1.worker_id and letter["failed_at"]

    detail = api_client.get(f"/api/v1/services/{name}/dead-letters/{letter['id']}").json()
    assert json.loads(detail["payload"]) == {"user": "bad", "n": 7}
    assert "Traceback" in detail["traceback"] and "ValueError" in detail["traceback"]
    assert detail["replays"] == []

    v1.terminate()
    assert v1.wait() == 0
    start(name, "picky_v2.py")

    response = api_client.post(
        f"/api/v1/services/{name}/dead-letters/replay",
        {"ids": [letter["id"]]},
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    [replay] = response.json()
    assert replay["dead_letter_id"] == letter["id"] and replay["attempt"] == 2
    assert replay["original_request_id"] == failed["request_id"]
    outcome = api_client.get(f"/api/v1/requests/{replay['request_id']}?wait=30").json()
    assert outcome["status"] == "done" and outcome["ok"] is True, outcome
    assert outcome["result"] == {"user": "bad", "version": 2, "attempt": 2}

    detail = api_client.get(f"/api/v1/services/{name}/dead-letters/{letter['id']}").json()
    [recorded] = detail["replays"]
    assert recorded["request_id"] == replay["request_id"] and recorded["actor"]
    assert DeadLetterReplay.objects.get().actor == recorded["actor"]
    # The replay succeeded: nothing new on the DLQ.
    assert [d["id"] for d in dead_letters(api_client, name)["items"]] == [letter["id"]]


def test_dead_letters_page_newest_first(
    api_client: Client, name: str, start: Callable[[str, str], WorkerProcess]
) -> None:
    start(name, "picky_v1.py")
    ids = [invoke(api_client, name, {"user": f"bad-{i}"})["request_id"] for i in range(5)]
    wait_for(lambda: len(dead_letters(api_client, name)["items"]) == 5, what="5 dead letters")

    seen: list[str] = []
    page = dead_letters(api_client, name, limit=2)
    pages = 1
    while True:
        assert len(page["items"]) <= 2
        seen += [d["request_id"] for d in page["items"]]
        if page["next_cursor"] is None:
            break
        page = dead_letters(api_client, name, limit=2, before=page["next_cursor"])
        pages += 1
    assert seen == ids[::-1] and pages == 3


def test_unknown_dead_letters_and_bad_input_are_clear_4xx(api_client: Client, name: str) -> None:
    base = f"/api/v1/services/{name}/dead-letters"
    assert dead_letters(api_client, name) == {"items": [], "next_cursor": None}
    for unknown in ("0-999999", "not-an-id"):
        response = api_client.get(f"{base}/{unknown}")
        assert response.status_code == 404 and "no dead letter" in response.json()["message"]
    replay = api_client.post(
        f"{base}/replay", {"ids": ["1-12345"]}, content_type="application/json"
    )
    assert replay.status_code == 404 and "1-12345" in replay.json()["message"]
    assert not DeadLetterReplay.objects.exists()
    empty = api_client.post(f"{base}/replay", {"ids": []}, content_type="application/json")
    assert empty.status_code == 422
    assert api_client.get(base, {"before": "garbage"}).status_code == 422
    assert api_client.get(base, {"limit": 0}).status_code == 422
    assert api_client.get("/api/v1/services/nope/dead-letters").status_code == 404
