"""The stand-in answers as Hetzner documents: error bodies, auth, pagination, label
selectors, uniqueness, faults on demand, and action progress."""

from __future__ import annotations

import pytest
import requests
from hcloud import APIException, Client
from hcloud.images import Image
from hcloud.server_types import ServerType

from tests.hetzner.standin import DEFAULT_TOKEN, SERVER_TYPES, StandIn, standin_running


@pytest.fixture
def standin() -> StandIn:
    with standin_running(action_duration_s=60) as running:
        yield running


def client(standin: StandIn) -> Client:
    return Client(token=DEFAULT_TOKEN, api_endpoint=standin.url, timeout=5)


def test_errors_have_hetzner_shape(standin: StandIn) -> None:
    anonymous = requests.get(f"{standin.url}/servers", timeout=5)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "unauthorized"
    headers = {"Authorization": f"Bearer {DEFAULT_TOKEN}"}
    missing = requests.get(f"{standin.url}/servers/999999", headers=headers, timeout=5)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    bad = requests.post(
        f"{standin.url}/servers",
        headers=headers,
        json={"name": "not a hostname", "server_type": "cpx11", "image": "debian-12"},
        timeout=5,
    )
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_input"
    assert int(bad.headers["RateLimit-Limit"]) == 3600
    assert int(bad.headers["RateLimit-Remaining"]) < 3600

    api = client(standin)
    api.servers.create(
        name="one", server_type=ServerType(name="cpx11"), image=Image(name="debian-12")
    )
    with pytest.raises(APIException) as error:
        api.servers.create(
            name="one", server_type=ServerType(name="cpx11"), image=Image(name="debian-12")
        )
    assert error.value.code == "uniqueness_error"


def test_lists_paginate_and_filter_by_labels(standin: StandIn) -> None:
    for i in range(60):
        standin.add_server(name=f"s{i}", labels={"memrun-service": "a" if i % 2 else "b"})
    api = client(standin)
    page = api.servers.get_list(page=1, per_page=25)
    assert len(page.servers) == 25
    assert page.meta.pagination.next_page == 2 and page.meta.pagination.total_entries == 60
    assert len(api.servers.get_all()) == 60  # hcloud follows next_page
    assert len(api.servers.get_all(label_selector="memrun-service=a")) == 30
    assert len(api.servers.get_all(label_selector="memrun-service!=a")) == 30
    assert api.servers.get_all(label_selector="memrun-worker") == []
    assert standin.calls["GET /servers"] >= 6


def test_actions_progress_as_they_are_polled_and_can_fail(standin: StandIn) -> None:
    api = client(standin)
    made = api.servers.create(
        name="slow", server_type=ServerType(name="cx22"), image=Image(name="debian-12")
    )
    assert made.action.status == "running" and made.server.status == "initializing"
    first = api.actions.get_by_id(made.action.id)
    second = api.actions.get_by_id(made.action.id)
    assert (first.status, first.progress) == ("running", 50)
    assert (second.status, second.progress) == ("success", 100)
    assert api.servers.get_by_id(made.server.id).status == "running"

    standin.fault("action_error", method="POST", path="/servers")
    failing = api.servers.create(
        name="broken", server_type=ServerType(name="cx22"), image=Image(name="debian-12")
    )
    api.actions.get_by_id(failing.action.id)
    failed = api.actions.get_by_id(failing.action.id)
    assert failed.status == "error" and failed.error["code"] == "action_failed"


def test_faults_on_demand(standin: StandIn) -> None:
    headers = {"Authorization": f"Bearer {DEFAULT_TOKEN}"}
    requests.post(
        f"{standin.url.removesuffix('/v1')}/_standin/faults",
        json={"kind": "rate_limit", "path": "/locations", "reset_s": 30},
        timeout=5,
    ).raise_for_status()
    limited = requests.get(f"{standin.url}/locations", headers=headers, timeout=5)
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert limited.headers["RateLimit-Remaining"] == "0"
    assert int(limited.headers["RateLimit-Reset"]) > 0
    assert requests.get(f"{standin.url}/locations", headers=headers, timeout=5).ok

    standin.fault("gateway_timeout", path="/locations")
    assert requests.get(f"{standin.url}/locations", headers=headers, timeout=5).status_code == 504
    with pytest.raises(ValueError, match="unknown fault"):
        standin.fault("meteor")


def test_server_types_carry_prices_per_location(standin: StandIn) -> None:
    types = {t.name: t for t in client(standin).server_types.get_all()}
    assert set(types) == set(SERVER_TYPES)
    cpx41 = types["cpx41"]
    assert (cpx41.cores, cpx41.memory, cpx41.disk) == (8, 16, 240)
    fsn1 = next(p for p in cpx41.prices if p["location"] == "fsn1")
    assert fsn1["price_monthly"]["net"] == "25.2000"
