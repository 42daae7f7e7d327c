"""GET /api/v1/health: no auth; 200 when the database, Redis and Kafka all answer, 503
otherwise, always with each component's own result."""

from __future__ import annotations

import time

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db

COMPONENTS = {"database", "redis", "kafka"}


def health(client: Client) -> tuple[int, dict]:
    response = client.get("/api/v1/health")
    return response.status_code, response.json()


def test_all_reachable_is_200(client: Client, kafka_bootstrap: str, redis_url: str) -> None:
    status, body = health(client)
    assert status == 200, body
    assert body["ok"] is True
    assert set(body["details"]) == COMPONENTS
    assert all(component["ok"] for component in body["details"].values())


@pytest.mark.parametrize("down", ["redis", "kafka"])
def test_one_unreachable_component_is_503_and_named(
    client: Client, kafka_bootstrap: str, redis_url: str, settings, down: str
) -> None:
    if down == "redis":
        settings.REDIS_URL = "redis://127.0.0.1:1/0"
    else:
        settings.KAFKA_BOOTSTRAP_SERVERS = "127.0.0.1:1"
    started = time.monotonic()
    status, body = health(client)
    assert time.monotonic() - started < 5
    assert status == 503
    assert body["ok"] is False and down in body["message"]
    assert {name for name, c in body["details"].items() if not c["ok"]} == {down}
    assert body["details"][down]["detail"]
