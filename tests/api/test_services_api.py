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


def test_create_then_get_and_list(
    api_client: Client, service_name: Callable[[], str], deploy_settings: Callable[..., Any]
) -> None:
    name = service_name()
    created = post(api_client, {"name": name, "partitions": 8, "desired_workers": 2})
    assert created.status_code == 201, created.json()
    service = created.json()
    assert service["request_topic"] == f"memrun.requests.{name}"
    assert service["dlq_topic"] == f"memrun.dlq.{name}"
    assert (service["partitions"], service["desired_workers"]) == (8, 2)
    assert (service["config"], service["version"]) == (None, None)  # not deployed yet

    assert api_client.get(f"/api/v1/services/{name}").json() == service
    assert api_client.get("/api/v1/services").json() == [service]

    deploy_settings(Service.objects.get(name=name), memory="32Gi", sticky_key="user_id")
    shown = api_client.get(f"/api/v1/services/{name}").json()
    assert shown["version"] == 1
    assert shown["config"]["memory_bytes"] == 32 * 2**30
    assert shown["config"]["sticky_key"] == "user_id"


def test_list_needs_a_fixed_number_of_queries(
    api_client: Client,
    service_factory: Callable[..., Service],
    deploy_settings: Callable[..., Any],
    django_assert_max_num_queries,
) -> None:
    for _ in range(5):
        deploy_settings(service_factory())
    # token lookup, last-used write, services, their live deployments
    with django_assert_max_num_queries(4):
        response = api_client.get("/api/v1/services")
    assert [service["version"] for service in response.json()] == [1] * 5


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"memory": "32Gi"}, "memory", "settings come with its code"),
        ({"sticky_key": None}, "sticky_key", "memrun deploy handler.py"),
        ({"partitions": 0}, "partitions", "greater than or equal to 1"),
        ({"partitions": 2**40}, "partitions", "less than or equal to"),
        ({"desired_workers": -1}, "desired_workers", "greater than or equal to 0"),
        ({"colour": "blue"}, "colour", "Extra inputs are not permitted"),
        ({"provider": "aws"}, "provider", "not a valid choice"),
        ({"server_type": None}, "server_type", "valid string"),
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
    assert not Service.objects.exists()


def test_a_missing_name_is_422(api_client: Client) -> None:
    response = post(api_client, {"partitions": 4})
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


def test_patch_of_a_setting_deploys_it_and_of_the_fleet_changes_the_service(
    api_client: Client, service_factory: Callable[..., Service], deploy_settings: Callable[..., Any]
) -> None:
    service = service_factory()
    deploy_settings(service, status="active", memory="8Gi", sticky_key="user_id")
    response = api_client.patch(
        f"/api/v1/services/{service.name}",
        {"max_workers": 3, "disk": "1Ti", "desired_workers": 3, "location": "fsn1"},
        content_type=JSON,
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["version"] == 2
    config = body["config"]
    assert (config["max_workers"], config["disk_bytes"], config["memory_bytes"]) == (
        3,
        2**40,
        8 * 2**30,
    )
    assert config["sticky_key"] == "user_id"
    assert (body["desired_workers"], body["location"]) == (3, "fsn1")
    v2 = api_client.get(f"/api/v1/services/{service.name}/deployments/2").json()
    assert v2["message"] == "settings of v1 changed: disk 50Gi -> 1Ti; max_workers 1 -> 3"
    assert v2["created_by"] == "alice" and v2["config"] == config


def test_patch_of_a_setting_before_the_first_deploy_is_409_saying_how(
    api_client: Client, service_factory: Callable[..., Service]
) -> None:
    service = service_factory()
    response = api_client.patch(
        f"/api/v1/services/{service.name}", {"concurrency": 4}, content_type=JSON
    )
    assert response.status_code == 409
    assert "Deploy first" in response.json()["message"]
    assert list(response.json()["details"]["fields"]) == ["concurrency"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"server_type": None}, "server_type"),
        ({"provider": None}, "provider"),
        ({"desired_workers": None}, "desired_workers"),
        ({"concurrency": None}, "concurrency"),
        ({"memory": None}, "memory"),
        ({"memory": ["1Gi"]}, "memory"),
        ({"timeout_seconds": "soon"}, "timeout_seconds"),
        ({"max_workers": 2**40}, "max_workers"),
        ({"location": "x" * 33}, "location"),
        ({"provider": "aws"}, "provider"),
    ],
)
def test_patch_with_a_null_or_wrong_type_is_422(
    api_client: Client,
    service_factory: Callable[..., Service],
    deploy_settings: Callable[..., Any],
    body: dict[str, Any],
    field: str,
) -> None:
    service = service_factory()
    deploy_settings(service)
    response = api_client.patch(f"/api/v1/services/{service.name}", body, content_type=JSON)
    assert response.status_code == 422, response.json()
    assert list(response.json()["details"]["fields"]) == [field]
    assert service.deployments.count() == 1


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
