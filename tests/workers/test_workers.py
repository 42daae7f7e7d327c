"""Workers: registered with a scoped credential of their own, listed with their service."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
from django.test import Client

from apps.common.errors import DomainError
from apps.services.models import Service
from apps.services.services import deployment_create
from apps.services.tokens import apitoken_authenticate
from apps.workers.models import Worker
from apps.workers.services import worker_create

pytestmark = pytest.mark.django_db


def test_worker_keeps_only_the_hash_of_its_credential(
    service_factory: Callable[..., Service],
) -> None:
    worker, credential = worker_create(service=service_factory(), name="w-1", address="10.0.0.2")
    assert credential.startswith("mrw_")
    stored = Worker.objects.get(pk=worker.pk)
    assert stored.credential_hash == hashlib.sha256(credential.encode()).hexdigest()
    assert stored.state == Worker.State.PROVISIONING
    # A worker's credential is not an API token: it opens no user API.
    assert apitoken_authenticate(secret=credential) is None


def test_worker_names_are_unique(service_factory: Callable[..., Service]) -> None:
    service = service_factory()
    worker_create(service=service, name="w-1")
    with pytest.raises(DomainError) as exc:
        worker_create(service=service, name="w-1")
    assert exc.value.status == 409


def test_list_is_one_query_and_filters_by_service(
    service_factory: Callable[..., Service],
    api_client: Client,
    django_assert_max_num_queries,
) -> None:
    services = [service_factory(), service_factory()]
    for service in services:
        deployment = deployment_create(
            service=service, sha256="f" * 64, size_bytes=1, artifact_url="file:///tmp/a"
        )
        for n in range(3):
            worker_create(service=service, deployment=deployment, name=f"{service.name}-{n}")
    # token lookup, last-used write, workers (with service and deployment joined)
    with django_assert_max_num_queries(3):
        everyone = api_client.get("/api/v1/workers").json()
    assert len(everyone) == 6
    assert everyone[0]["service"] == services[0].name
    assert everyone[0]["deployment_version"] == 1

    # token lookup, the service, its workers
    with django_assert_max_num_queries(3):
        response = api_client.get(f"/api/v1/workers?service={services[1].name}")
    assert [w["service"] for w in response.json()] == [services[1].name] * 3


def test_list_for_an_unknown_service_is_404(api_client: Client) -> None:
    response = api_client.get("/api/v1/workers?service=nope")
    assert response.status_code == 404
    assert "nope" in response.json()["message"]
