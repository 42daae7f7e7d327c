"""Fixtures for the Hetzner backend: a serving stand-in of the Hetzner Cloud API, and the
appliance's HCLOUD_* settings pointed at it (short timeouts, so faults cost seconds)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from apps.provisioning.provisioners import hetzner
from tests.hetzner.standin import DEFAULT_TOKEN, StandIn, standin_running


@pytest.fixture
def hetzner_standin(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[StandIn]:
    """A stand-in with a firewall, a private network and an SSH key made beforehand (as an
    operator would), and the settings that point the `hetzner` provisioner at it."""
    # A 429 of an earlier test holds this process until its reset; each test starts clear.
    monkeypatch.setattr(hetzner, "_blocked_until", 0.0)
    with standin_running(action_duration_s=0.3) as standin:
        standin.create_timeout_s = 2.0
        standin.resource_add("firewalls", name="memrun-workers")
        standin.resource_add("networks", name="memrun-private", ip_range="10.0.0.0/16")
        standin.resource_add("ssh_keys", name="ops", public_key="ssh-ed25519 AAAA ops")
        settings.HCLOUD_TOKEN = DEFAULT_TOKEN
        settings.HCLOUD_API_ENDPOINT = standin.url
        settings.HCLOUD_LOCATION = "fsn1"
        settings.HCLOUD_IMAGE = "debian-12"
        settings.HCLOUD_SSH_KEYS = ["ops"]
        settings.HCLOUD_FIREWALL = "memrun-workers"
        settings.HCLOUD_NETWORK = "memrun-private"
        settings.HCLOUD_TIMEOUT_S = 1.0
        settings.HCLOUD_ACTION_TIMEOUT_S = 20.0
        settings.HCLOUD_REQUESTS_PER_PASS = 60
        yield standin
