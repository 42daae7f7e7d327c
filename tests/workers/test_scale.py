"""Scaling: the desired count moves within min..max; outside, a 422 names the bound."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from apps.services.models import Service
from memrun.cli.workers import worker_rows

pytestmark = pytest.mark.django_db
JSON = "application/json"


def scale(client: Client, name: str, workers: object):
    return client.post(f"/api/v1/services/{name}/scale", {"workers": workers}, content_type=JSON)


def test_scale_within_bounds(
    service_factory: Callable[..., Service],
    deploy_settings: Callable[..., Any],
    api_client: Client,
    django_capture_on_commit_callbacks,
) -> None:
    service = service_factory()
    deploy_settings(service, min_workers=1, max_workers=3)
    with django_capture_on_commit_callbacks() as callbacks:
        response = scale(api_client, service.name, 3)
    assert response.status_code == 200
    assert response.json()["desired_workers"] == 3
    assert len(callbacks) == 1  # the service's reconcile, started after the commit
    service.refresh_from_db()
    assert service.desired_workers == 3


@pytest.mark.parametrize(("workers", "bound"), [(0, "min_workers (1)"), (4, "max_workers (3)")])
def test_scale_outside_the_bounds_names_the_bound(
    service_factory: Callable[..., Service],
    deploy_settings: Callable[..., Any],
    api_client: Client,
    workers: int,
    bound: str,
) -> None:
    service = service_factory()
    deploy_settings(service, min_workers=1, max_workers=3)
    response = scale(api_client, service.name, workers)
    assert response.status_code == 422
    body = response.json()
    assert bound in body["message"]
    assert body["details"]["min_workers"] == 1 and body["details"]["max_workers"] == 3
    service.refresh_from_db()
    assert service.desired_workers == 1


def test_scale_input_errors(service_factory: Callable[..., Service], api_client: Client) -> None:
    service = service_factory()
    never_deployed = scale(api_client, service.name, 1)
    assert never_deployed.status_code == 409
    assert "deploy it first" in never_deployed.json()["message"]
    assert scale(api_client, service.name, -1).status_code == 422
    assert scale(api_client, service.name, "many").status_code == 422
    assert scale(api_client, "no-such-service", 1).status_code == 404


def test_worker_rows_for_the_cli() -> None:
    rows = worker_rows(
        [
            {
                "name": "w-1",
                "state": "ready",
                "liveness": "suspect",
                "deployment_version": 2,
                "heartbeat_age_s": 41.2,
                "in_flight": 3,
                "partitions": [5, 0, 1, 2],
                "lag": 0,
                "machine": {
                    "server_type": "cpx41",
                    "location": "fsn1",
                    "server_id": 42,
                    "ipv4": "198.51.100.7",
                    "price_monthly_eur": "25.2000",
                },
            },
            {
                "name": "w-2",
                "state": "provisioning",
                "liveness": "unknown",
                "deployment_version": None,
                "heartbeat_age_s": None,
                "in_flight": None,
                "partitions": [],
                "lag": None,
            },
        ]
    )
    assert rows[0][-1] == "MACHINE"
    assert rows[1] == (
        "w-1",
        "ready (suspect)",
        "v2",
        "41s ago",
        "3",
        "0-2,5",
        "0",
        "cpx41@fsn1 #42 198.51.100.7 25.20 EUR/mo",
    )
    # A local process has no machine of its own.
    assert rows[2] == ("w-2", "provisioning", "-", "never", "-", "-", "-", "-")


@pytest.mark.django_db(transaction=True)
def test_the_scale_and_workers_commands(
    service_factory: Callable[..., Service],
    deploy_settings: Callable[..., Any],
    api_token: tuple[object, str],
    live_server: object,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    settings,
) -> None:
    from memrun.cli import main

    settings.MEMRUN_RECONCILE_ON_EVENTS = False
    monkeypatch.setenv("MEMRUN_URL", live_server.url)
    monkeypatch.setenv("MEMRUN_TOKEN", api_token[1])
    service = service_factory()
    deploy_settings(service, min_workers=1, max_workers=2)

    assert main(["scale", service.name, "2"]) == 0
    assert capsys.readouterr().out == f"{service.name}: 2 worker(s) desired (min 1, max 2)\n"
    assert main(["scale", service.name, "5"]) == 1
    assert "outside its bounds, max_workers (2)" in capsys.readouterr().err
    assert main(["workers", service.name]) == 0
    assert capsys.readouterr().out == f"{service.name} has no running workers\n"
