"""The invoke front door: refusal of services nothing can serve, batches, overload
bounds, and the per-process caches (no query in the steady state, revocation bounded)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.services.models import ApiToken
from memrun import Client as MemrunClient

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def create(api_client: Client, deploy_settings: Callable[..., Any]) -> Callable[..., None]:
    """`create(name, deployed=True)`: a service made through the API and, unless `deployed`
    is False, given an active deployment's settings (sticky key `user`, up to 2 workers)
    but no worker: invoke refuses it (409) unless the caller queues."""
    from apps.services.models import Service

    def make(name: str, *, deployed: bool = True) -> None:
        body = {"name": name, "partitions": 4}
        created = api_client.post("/api/v1/services", body, content_type="application/json")
        assert created.status_code == 201, created.content
        if deployed:
            service = Service.objects.get(name=name)
            deploy_settings(service, status="active", sticky_key="user", max_workers=2)

    return make


def post(client: Client, path: str, body: Any) -> Any:
    return client.post(path, json.dumps(body), content_type="application/json")


def test_a_never_deployed_service_is_a_409_unless_the_caller_queues(
    create: Callable[..., None], api_client: Client, service_name: Callable[[], str]
) -> None:
    name = service_name()
    create(name, deployed=False)
    refused = post(api_client, f"/api/v1/services/{name}/invoke?wait=30", {"user": "u"})
    assert refused.status_code == 409
    assert "never been deployed" in refused.json()["message"]
    assert "queue=true" in refused.json()["message"]
    assert refused.json()["details"]["reason"] == "never_deployed"
    queued = post(api_client, f"/api/v1/services/{name}/invoke?wait=0&queue=true", {"user": "u"})
    assert queued.status_code == 202 and queued.json()["status"] == "queued"
    # Bad input is still reported as such, before the refusal.
    broken = api_client.post(
        f"/api/v1/services/{name}/invoke", b"{not json", content_type="application/json"
    )
    assert broken.status_code == 400


def test_a_batch_answers_in_order_each_routed_by_its_own_key(
    api_client: Client,
    served: str,
) -> None:
    payloads = [{"user": f"u{i}", "op": "echo", "n": i} for i in range(40)]
    response = post(api_client, f"/api/v1/services/{served}/invoke-batch?queue=true", payloads)
    assert response.status_code == 200, response.content
    results = response.json()["results"]
    assert [r["result"]["echo"]["n"] for r in results] == list(range(40))
    assert [r["result"]["key"] for r in results] == [f"u{i}" for i in range(40)]
    assert len({r["request_id"] for r in results}) == 40


def test_a_batch_not_done_within_wait_gives_the_ids_to_poll(
    create: Callable[..., None], api_client: Client, service_name: Callable[[], str]
) -> None:
    name = service_name()
    create(name)
    response = post(
        api_client, f"/api/v1/services/{name}/invoke-batch?wait=0&queue=true", [{"user": "a"}] * 3
    )
    assert response.status_code == 202
    ids = [r["request_id"] for r in response.json()["results"]]
    assert len(set(ids)) == 3
    for request_id in ids:
        assert api_client.get(f"/api/v1/requests/{request_id}").json()["status"] == "queued"


def test_bad_batches_are_refused_with_what_is_wrong(
    create: Callable[..., None], api_client: Client, service_name: Callable[[], str], settings: Any
) -> None:
    name = service_name()
    create(name)
    path = f"/api/v1/services/{name}/invoke-batch?queue=true"
    not_a_list = post(api_client, path, {"user": "u"})
    assert not_a_list.status_code == 422 and "JSON array" in not_a_list.json()["message"]
    missing = post(api_client, path, [{"user": "u"}, {"user": "v"}, {"nope": 1}])
    assert missing.status_code == 422
    assert missing.json()["details"]["index"] == 2 and "payload 2" in missing.json()["message"]
    settings.MEMRUN_INVOKE_BATCH_MAX = 2
    too_many = post(api_client, path, [{"user": "u"}] * 3)
    assert too_many.status_code == 422 and "1 to 2" in too_many.json()["message"]
    empty = post(api_client, path, [])
    assert empty.status_code == 422
    broken = api_client.post(path, b"[{", content_type="application/json")
    assert broken.status_code == 400


def test_past_the_backlog_limit_invoke_is_a_429_with_retry_after(
    create: Callable[..., None], api_client: Client, service_name: Callable[[], str], settings: Any
) -> None:
    settings.MEMRUN_INVOKE_BACKLOG_PER_SERVICE = 3
    name = service_name()
    create(name)
    path = f"/api/v1/services/{name}/invoke?wait=0&queue=true"
    for _ in range(3):
        assert post(api_client, path, {"user": "u"}).status_code == 202
    refused = post(api_client, path, {"user": "u"})
    assert refused.status_code == 429
    assert int(refused["Retry-After"]) >= 1
    assert refused.json()["details"] == {"service": name, "backlog": 3, "limit": 3}
    batch = post(api_client, f"/api/v1/services/{name}/invoke-batch?queue=true", [{"user": "u"}])
    assert batch.status_code == 429


def test_past_the_waiting_bound_invoke_answers_at_once_with_the_id(
    create: Callable[..., None], api_client: Client, service_name: Callable[[], str], settings: Any
) -> None:
    settings.MEMRUN_INVOKE_WAITING_PER_TOKEN = 0
    name = service_name()
    create(name)
    started = time.monotonic()
    response = post(api_client, f"/api/v1/services/{name}/invoke?wait=120&queue=true", {"user": 1})
    # A functional bound, far below the wait asked for: the caller was not made to wait.
    assert time.monotonic() - started < 30
    assert response.status_code == 202
    request_id = response.json()["request_id"]
    assert api_client.get(f"/api/v1/requests/{request_id}").json()["status"] == "queued"


def test_a_warm_invoke_touches_no_database(
    api_client: Client,
    served: str,
) -> None:
    path = f"/api/v1/services/{served}/invoke?wait=30&queue=true"
    with CaptureQueriesContext(connection) as cold:
        assert post(api_client, path, {"user": "u", "op": "echo"}).status_code == 200
    assert len(cold.captured_queries) >= 1  # the token and the service were looked up
    with CaptureQueriesContext(connection) as warm:
        for _ in range(3):
            assert post(api_client, path, {"user": "u", "op": "echo"}).status_code == 200
    assert warm.captured_queries == []


def test_a_revoked_token_stops_working_within_the_cache_bound(
    create: Callable[..., None],
    api_client: Client,
    api_token: tuple[ApiToken, str],
    service_name: Callable[[], str],
    settings,
) -> None:
    settings.MEMRUN_LOOKUP_CACHE_TTL_S = 1
    name = service_name()
    create(name)
    path = f"/api/v1/services/{name}/invoke?wait=0&queue=true"
    assert post(api_client, path, {"user": "u"}).status_code == 202  # now cached
    # Revoked behind this process's back (as if the invalidation message were lost):
    # the cache's TTL is the bound.
    ApiToken.objects.filter(pk=api_token[0].pk).update(revoked_at=timezone.now())
    deadline = time.monotonic() + settings.MEMRUN_LOOKUP_CACHE_TTL_S + 1
    while post(api_client, path, {"user": "u"}).status_code != 401:
        assert time.monotonic() < deadline, "a revoked token still worked past the bound"


def test_revoking_through_the_api_takes_effect_at_once(
    create: Callable[..., None],
    api_client: Client,
    api_token: tuple[ApiToken, str],
    service_name: Callable[[], str],
    user,
) -> None:
    from apps.services.tokens import apitoken_create

    other, secret = apitoken_create(user=user, name="second")
    second = Client(headers={"Authorization": f"Bearer {secret}"})
    name = service_name()
    create(name)
    path = f"/api/v1/services/{name}/invoke?wait=0&queue=true"
    assert post(second, path, {"user": "u"}).status_code == 202
    assert api_client.delete(f"/api/v1/tokens/{other.pk}").status_code == 204
    assert post(second, path, {"user": "u"}).status_code == 401


def test_client_map_runs_every_payload_in_order(
    live_server: Any,
    api_token: tuple[ApiToken, str],
    served: str,
) -> None:
    client = MemrunClient(live_server.url, api_token[1])
    payloads = [{"user": f"m{i % 7}", "op": "echo", "n": i} for i in range(25)]
    results = client.map(served, payloads, batch_size=10, queue=True)
    assert [r["echo"]["n"] for r in results] == list(range(25))
    assert [r["key"] for r in results] == [f"m{i % 7}" for i in range(25)]


def test_cli_invoke_batch_prints_one_outcome_per_line_in_order(
    live_server: Any,
    api_token: tuple[ApiToken, str],
    served: str,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from memrun.cli import main

    monkeypatch.setenv("MEMRUN_URL", live_server.url)
    monkeypatch.setenv("MEMRUN_TOKEN", api_token[1])
    lines = [json.dumps({"user": f"c{i}", "op": "echo", "n": i}) for i in range(5)]
    lines.insert(2, "")
    batch = tmp_path / "in.jsonl"
    batch.write_text("\n".join(lines) + "\n")
    assert main(["invoke", served, "--batch", str(batch), "--queue"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [o["result"]["echo"]["n"] for o in out] == list(range(5))
    assert all(o["status"] == "done" and o["ok"] for o in out)
    batch.write_text('{"user": 1}\n{not json\n')
    assert main(["invoke", served, "--batch", str(batch)]) == 1
    assert "line 2: not valid JSON" in capsys.readouterr().err


def test_invoke_reads_worker_states_by_their_values() -> None:
    from apps.services import targets
    from apps.workers.models import WorkerState

    assert targets._READY == WorkerState.READY
    assert set(targets._STARTING) == {WorkerState.PROVISIONING, WorkerState.BOOTING}
