"""Choosing a service's machines: `memrun deploy --provider hetzner [--server-type]
[--location]`, the deploy API's query and the web form set them, checked against what
the Hetzner API (the stand-in) lists and against the settings' memory and disk."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from apps.services.models import Service
from tests.hetzner.standin import StandIn

pytestmark = pytest.mark.django_db


def handler(name: str, *, memory: str = "4Gi", disk: str = "50Gi") -> bytes:
    return (
        "from memrun import MemoryService\n\n"
        f'svc = MemoryService("{name}", memory="{memory}", disk="{disk}", max_workers=2)\n\n\n'
        "@svc.handler()\n"
        "def run(ctx, request):\n    return request\n"
    ).encode()


@pytest.fixture
def deploy(
    api_client: Client, settings: Any, tmp_path: Path, hetzner_standin: StandIn
) -> Callable[..., Any]:
    settings.MEMRUN_HOME = tmp_path / "home"
    settings.MEMRUN_ARTIFACTS_URL = (tmp_path / "artifacts").as_uri()
    settings.MEMRUN_RECONCILE_ON_EVENTS = False

    def post(name: str, query: str = "", **sizes: str) -> Any:
        return api_client.post(
            f"/api/v1/services/{name}/deployments?{query}",
            handler(name, **sizes),
            content_type="text/x-python",
        )

    return post


def test_deploy_sets_provider_type_and_location(
    deploy: Callable[..., Any], service_name: Callable[[], str]
) -> None:
    name = service_name()
    answer = deploy(name, "provider=hetzner&server_type=cpx41&location=nbg1")
    assert answer.status_code == 201, answer.json()
    service = Service.objects.get(name=name)
    assert (service.provider, service.server_type, service.location) == (
        "hetzner",
        "cpx41",
        "nbg1",
    )
    # A redeploy without them leaves them as they are; with one, changes only that one.
    assert deploy(name).status_code == 201
    assert deploy(name, "location=hel1").status_code == 201
    service.refresh_from_db()
    assert (service.provider, service.server_type, service.location) == (
        "hetzner",
        "cpx41",
        "hel1",
    )


@pytest.mark.parametrize(
    ("query", "sizes", "message"),
    [
        ("provider=hetzner&server_type=cpx99", {}, "unknown server type 'cpx99' in fsn1"),
        ("provider=hetzner&location=mars1", {}, "unknown Hetzner location 'mars1'"),
        (
            "provider=hetzner",
            {"memory": "512Gi"},
            "no server type in fsn1 has 512 GiB of RAM and 50 GiB of disk; the largest is ccx63",
        ),
        ("provider=hetzner&server_type=cx22", {}, "server type cx22 has 4 GiB of RAM and 40"),
        ("provider=aws", {}, "provider"),
    ],
)
def test_a_bad_machine_choice_is_a_clear_422_and_stores_nothing(
    deploy: Callable[..., Any],
    service_name: Callable[[], str],
    query: str,
    sizes: dict[str, str],
    message: str,
) -> None:
    name = service_name()
    answer = deploy(name, query, **sizes)
    assert answer.status_code == 422, answer.json()
    assert message in answer.json()["message"]
    assert not Service.objects.filter(name=name).exists()


def test_hetzner_without_a_token_is_a_409(
    deploy: Callable[..., Any], service_name: Callable[[], str], settings: Any
) -> None:
    settings.HCLOUD_TOKEN = ""
    answer = deploy(service_name(), "provider=hetzner")
    assert answer.status_code == 409
    assert "HCLOUD_TOKEN is not set" in answer.json()["message"]


def test_patching_the_fleet_is_checked_too(
    deploy: Callable[..., Any], service_name: Callable[[], str], api_client: Client
) -> None:
    name = service_name()
    assert deploy(name, memory="16Gi").status_code == 201
    small = api_client.patch(
        f"/api/v1/services/{name}",
        {"provider": "hetzner", "server_type": "cpx21"},
        content_type="application/json",
    )
    assert small.status_code == 422
    assert "server type cpx21 has 4 GiB of RAM" in small.json()["message"]
    fits = api_client.patch(
        f"/api/v1/services/{name}", {"provider": "hetzner"}, content_type="application/json"
    )
    assert fits.status_code == 200 and fits.json()["provider"] == "hetzner"


def test_the_web_form_sets_the_machines(
    deploy: Callable[..., Any], service_name: Callable[[], str], user: Any
) -> None:
    name = service_name()
    browser = Client()
    browser.force_login(user)
    page = browser.get("/deploy/").content.decode()
    assert '<select name="provider">' in page and 'name="server_type"' in page
    answer = browser.post(
        "/deploy/",
        {
            "service": name,
            "source": handler(name).decode(),
            "provider": "hetzner",
            "server_type": "cpx99",
        },
        headers={"X-CSRFToken": "x"},
    )
    assert answer.status_code == 422
    assert "unknown server type" in answer.content.decode()
    answer = browser.post(
        "/deploy/",
        {"service": name, "source": handler(name).decode(), "provider": "hetzner"},
    )
    assert answer.status_code == 302, answer.content.decode()[:2000]
    service = Service.objects.get(name=name)
    assert (service.provider, service.server_type) == ("hetzner", "")


def test_the_cli_sends_the_machine_flags() -> None:
    from memrun.cli import build_parser

    args = build_parser().parse_args(
        ["deploy", "h.py", "--provider", "hetzner", "--server-type", "cpx41", "--location", "fsn1"]
    )
    assert (args.provider, args.server_type, args.location) == ("hetzner", "cpx41", "fsn1")
