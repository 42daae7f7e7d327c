"""Every error of the API has one shape, {"message": str, "details": {...}}: domain errors,
input validation, and what Django and ninja's router answer without raising."""

from __future__ import annotations

import pytest
from django.test import Client

from apps.services.requestids import request_id_new

pytestmark = pytest.mark.django_db


def assert_shape(body: dict) -> None:
    assert set(body) == {"message", "details"}
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["details"], dict)


def test_unknown_path_is_404(api_client: Client) -> None:
    response = api_client.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert_shape(response.json())
    assert "/api/v1/docs" in response.json()["message"]


def test_wrong_method_is_405_with_the_allowed_ones(api_client: Client) -> None:
    response = api_client.put("/api/v1/services", {}, content_type="application/json")
    assert response.status_code == 405
    assert_shape(response.json())
    assert response.json()["details"]["allowed"] == ["GET", "POST"]
    assert response["Allow"]


def test_malformed_json_is_400(api_client: Client) -> None:
    response = api_client.post("/api/v1/services", "{nope", content_type="application/json")
    assert response.status_code == 400
    assert_shape(response.json())


def test_a_bad_query_value_is_422_naming_it(api_client: Client) -> None:
    response = api_client.delete("/api/v1/tokens/not-a-number")
    assert response.status_code == 422
    assert_shape(response.json())
    assert list(response.json()["details"]["fields"]) == ["token_id"]


def test_pages_outside_the_api_keep_django_errors(client: Client) -> None:
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    assert not response["Content-Type"].startswith("application/json")


def test_docs_and_schema_are_served(client: Client) -> None:
    assert client.get("/api/v1/docs").status_code == 200
    schema = client.get("/api/v1/openapi.json").json()
    assert "/api/v1/services" in schema["paths"]


def test_a_redis_password_never_reaches_an_error_body(api_client: Client, settings) -> None:
    # A real client for an unreachable Redis whose URL carries a password, as a
    # production REDIS_URL does (each event loop builds its client from the setting, and
    # the test client runs each request on a new loop).
    settings.REDIS_URL = "redis://default:hunter2-secret@127.0.0.1:1/0"
    # A well-formed id (requestids.py), so the look-up reaches Redis.
    request_id = request_id_new(service="some-service", caller=None)
    response = api_client.get(f"/api/v1/requests/{request_id}")
    assert response.status_code == 503
    assert_shape(response.json())
    assert "hunter2-secret" not in response.content.decode()
    assert "redis://***@127.0.0.1:1/0" in response.json()["message"]
