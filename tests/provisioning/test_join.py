"""POST /api/v1/workers/join: a remote worker's single-use join token, with its server id,
exchanged once for its environment; every other attempt refused with a 4xx that says why,
nothing issued, and too many refusals from one address answered 429. The server ids are
checked by the real `hetzner` provisioner against the stand-in of the Hetzner API."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from tests.hetzner.standin import StandIn

pytestmark = pytest.mark.django_db


@pytest.fixture
def worker(service_factory: Any, deploy_settings: Any, hetzner_standin: StandIn) -> Any:
    """A Hetzner worker whose server exists on the stand-in (made as memrun names and
    labels it); `worker.server_id` is that server's id."""
    from apps.provisioning.provisioners.hetzner import server_name
    from apps.workers.services import worker_create

    service = service_factory(provider="hetzner")
    deployment = deploy_settings(service, status="active")
    worker, _ = worker_create(
        service=service, deployment=deployment, name=f"{service.name}-v1-a1b2c3", provider="hetzner"
    )
    worker.server_id = hetzner_standin.add_server(
        name=server_name(worker.name), labels={"memrun-worker": worker.name}
    )
    return worker


def join(token: str, server_id: int) -> Any:
    return Client().post(
        "/api/v1/workers/join",
        {"token": token, "server_id": server_id},
        content_type="application/json",
    )


def test_a_join_answers_the_workers_environment_with_a_new_credential(
    worker: Any, settings: Any
) -> None:
    from apps.provisioning.jointokens import join_token_issue
    from apps.provisioning.specs import worker_spec_build

    response = join(join_token_issue(worker_name=worker.name), worker.server_id)
    assert response.status_code == 200, response.content
    answer = response.json()
    assert answer["worker"] == worker.name
    env = answer["env"]
    expected = worker_spec_build(
        worker=worker,
        credential=env["MEMRUN_WORKER_TOKEN"],
        service=worker.service,
        deployment=worker.deployment,
    ).env
    assert env == expected
    for secret in (settings.HCLOUD_TOKEN, settings.SECRET_KEY):
        assert all(secret not in value for value in env.values())
    assert "DATABASE_URL" not in env and "HCLOUD_TOKEN" not in env

    # The answered credential is the worker's own, and works as such.
    heartbeat = Client().post(
        f"/api/v1/workers/{worker.name}/heartbeat",
        {"state": "booting"},
        content_type="application/json",
        headers={"Authorization": f"Bearer {env['MEMRUN_WORKER_TOKEN']}"},
    )
    assert heartbeat.status_code == 200, heartbeat.content


def test_a_used_token_is_refused_and_issues_nothing(worker: Any) -> None:
    from apps.provisioning.jointokens import join_token_issue

    token = join_token_issue(worker_name=worker.name)
    assert join(token, worker.server_id).status_code == 200
    worker.refresh_from_db()
    credential_hash = worker.credential_hash

    again = join(token, worker.server_id)
    assert again.status_code == 403
    assert "already used" in again.json()["message"]
    assert "env" not in again.json()
    worker.refresh_from_db()
    assert worker.credential_hash == credential_hash


def test_an_expired_token_is_refused(worker: Any, settings: Any) -> None:
    from apps.provisioning.jointokens import join_token_issue

    settings.MEMRUN_JOIN_TOKEN_TTL_S = 60
    token = join_token_issue(worker_name=worker.name, now=timezone.now() - timedelta(seconds=61))
    response = join(token, worker.server_id)
    assert response.status_code == 403
    assert "expired" in response.json()["message"]
    assert "MEMRUN_JOIN_TOKEN_TTL_S" in response.json()["message"]


def test_an_unknown_token_is_refused(worker: Any) -> None:
    response = join("mrj_" + "x" * 43, worker.server_id)
    assert response.status_code == 403
    assert response.json()["message"] == "unknown join token"


def test_a_server_the_stand_in_does_not_know_is_refused_and_the_token_stays_usable(
    worker: Any, hetzner_standin: StandIn
) -> None:
    from apps.provisioning.jointokens import join_token_issue

    token = join_token_issue(worker_name=worker.name)
    stranger = hetzner_standin.add_server(name="not-memrun", labels={})
    for server_id in (999999, stranger):
        response = join(token, server_id=server_id)
        assert response.status_code == 403
        message = response.json()["message"]
        assert f"server {server_id} is not the hetzner server of worker" in message
    assert join(token, worker.server_id).status_code == 200


def test_a_token_of_a_stopped_worker_is_refused(worker: Any) -> None:
    from apps.provisioning.jointokens import join_token_issue
    from apps.workers.services import worker_mark_stopped

    token = join_token_issue(worker_name=worker.name)
    worker_mark_stopped(worker=worker, reason="scaled down")
    response = join(token, worker.server_id)
    assert response.status_code == 403
    assert "can no longer join" in response.json()["message"]


@pytest.mark.parametrize(
    "body",
    [{}, {"token": "mrj_x"}, {"token": "", "server_id": "1"}, {"token": 5, "server_id": []}],
    ids=["empty", "no-server", "empty-token", "wrong-types"],
)
def test_a_malformed_join_is_a_422(body: dict[str, Any]) -> None:
    response = Client().post("/api/v1/workers/join", body, content_type="application/json")
    assert response.status_code == 422


def test_too_many_refused_joins_are_answered_429_even_for_a_good_token(
    worker: Any, settings: Any
) -> None:
    from apps.provisioning.jointokens import join_token_issue

    settings.MEMRUN_JOIN_MAX_FAILURES = 3
    for _ in range(3):
        assert join("mrj_guess", worker.server_id).status_code == 403
    token = join_token_issue(worker_name=worker.name)
    limited = join(token, worker.server_id)
    assert limited.status_code == 429
    assert "too many refused joins" in limited.json()["message"]
    # The window passes: the token, never consumed, works.
    from apps.provisioning.models import JoinFailure

    JoinFailure.objects.update(at=timezone.now() - timedelta(hours=1))
    assert join(token, worker.server_id).status_code == 200


def test_a_cloud_that_cannot_answer_now_is_a_503_that_spends_nothing(
    worker: Any, hetzner_standin: StandIn
) -> None:
    from apps.provisioning.jointokens import join_token_issue
    from apps.provisioning.models import JoinFailure

    token = join_token_issue(worker_name=worker.name)
    hetzner_standin.fault("bad_gateway", method="GET", path="/servers/.*", times=100)
    response = join(token, worker.server_id)
    assert response.status_code == 503
    assert f"cannot confirm server {worker.server_id}" in response.json()["message"]
    assert not JoinFailure.objects.exists()
    hetzner_standin.state.faults.clear()
    assert join(token, worker.server_id).status_code == 200
