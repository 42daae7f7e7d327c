"""The services API: create, list, get, update and delete over HTTP, with clear errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from apps.services.models import Service

pytestmark = pytest.mark.django_db

JSON = "application/json"


def post(client: Client, body: dict[str, Any]) -> Any:
    return client.post("/api/v1/services", body, content_type=JSON)


def test_create_then_get_and_list(api_client: Client, service_name: Callable[[], str]) -> None:
    name = service_name()
    body = {
        "name": name,
        "memory": "32Gi",
        "disk": "600Gi",
        "max_workers": 4,
        "min_workers": 1,
        "sticky_key": "user_id:dataset_id",
        "partitions": 8,
    }
    created = post(api_client, body)
    assert created.status_code == 201, created.json()
    service = created.json()
    assert service["memory"] == "32Gi" and service["memory_bytes"] == 32 * 2**30
    assert service["request_topic"] == f"memrun.requests.{name}"
    assert service["dlq_topic"] == f"memrun.dlq.{name}"
    assert (service["partitions"], service["desired_workers"]) == (8, 1)

    assert api_client.get(f"/api/v1/services/{name}").json() == service
    assert api_client.get("/api/v1/services").json() == [service]


def test_list_needs_a_fixed_number_of_queries(
    api_client: Client, service_factory: Callable[..., Service], django_assert_max_num_queries
) -> None:
    for _ in range(5):
        service_factory()
    # token lookup, last-used write, services
    with django_assert_max_num_queries(3):
        response = api_client.get("/api/v1/services")
    assert len(response.json()) == 5


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"memory": "32Qi"}, "memory", "not a size"),
        ({"memory": True}, "memory", ""),
        ({"sticky_key": "user-id"}, "sticky_key", "not a field name"),
        ({"partitions": 2, "max_workers": 3}, "partitions", "cannot exceed partitions"),
        ({"colour": "blue"}, "colour", "Extra inputs are not permitted"),
        ({"max_workers": "many"}, "max_workers", "integer"),
        ({"name": "Has Spaces"}, "name", "not valid"),
    ],
)
def test_invalid_input_is_422_naming_the_field(
    api_client: Client,
    service_name: Callable[[], str],
    body: dict[str, Any],
    field: str,
    says: str,
) -> None:
    response = post(api_client, {"name": service_name(), **body})
    assert response.status_code == 422
    error = response.json()
    assert set(error) == {"message", "details"}
    assert list(error["details"]["fields"]) == [field]
    assert field in error["message"]
    assert says in error["message"]


def test_a_missing_name_is_422(api_client: Client) -> None:
    response = post(api_client, {"memory": "1Gi"})
    assert response.status_code == 422
    assert list(response.json()["details"]["fields"]) == ["name"]


def test_duplicate_name_is_409(api_client: Client, service_factory: Callable[..., Service]) -> None:
    service = service_factory()
    response = post(api_client, {"name": service.name, "partitions": 4})
    assert response.status_code == 409
    assert list(response.json()["details"]["fields"]) == ["name"]


def test_broker_down_is_503(
    api_client: Client, service_name: Callable[[], str], kafka_down: str
) -> None:
    response = post(api_client, {"name": service_name(), "partitions": 4})
    assert response.status_code == 503
    assert kafka_down in response.json()["message"]
    assert not Service.objects.exists()


def test_patch_changes_only_what_is_sent(
    api_client: Client, service_factory: Callable[..., Service]
) -> None:
    service = service_factory(memory="8Gi", sticky_key="user_id")
    response = api_client.patch(
        f"/api/v1/services/{service.name}", {"max_workers": 3, "disk": "1Ti"}, content_type=JSON
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["max_workers"], body["disk"], body["memory"]) == (3, "1Ti", "8Gi")
    assert body["sticky_key"] == "user_id"


def test_patch_refuses_a_new_partition_count(
    api_client: Client, service_factory: Callable[..., Service]
) -> None:
    service = service_factory(partitions=4)
    url = f"/api/v1/services/{service.name}"
    refused = api_client.patch(url, {"partitions": 16}, content_type=JSON)
    assert refused.status_code == 422
    assert "fixed at creation" in refused.json()["message"]
    assert list(refused.json()["details"]["fields"]) == ["partitions"]
    assert api_client.patch(url, {"partitions": 4}, content_type=JSON).status_code == 200


def test_patch_refuses_a_rename(
    api_client: Client, service_factory: Callable[..., Service]
) -> None:
    service = service_factory()
    response = api_client.patch(
        f"/api/v1/services/{service.name}", {"name": "other"}, content_type=JSON
    )
    assert response.status_code == 422
    assert list(response.json()["details"]["fields"]) == ["name"]


def test_delete(api_client: Client, service_factory: Callable[..., Service]) -> None:
    service = service_factory()
    assert api_client.delete(f"/api/v1/services/{service.name}").status_code == 204
    assert api_client.get(f"/api/v1/services/{service.name}").status_code == 404


def test_unknown_service_is_404_with_the_error_shape(api_client: Client) -> None:
    for response in (
        api_client.get("/api/v1/services/nope"),
        api_client.patch("/api/v1/services/nope", {}, content_type=JSON),
        api_client.delete("/api/v1/services/nope"),
    ):
        assert response.status_code == 404
        assert response.json() == {
            "message": "no service named 'nope'; list them with GET /api/v1/services",
            "details": {"name": "nope"},
        }
