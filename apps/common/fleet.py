"""Checks of a service's machine choice, supplied by a higher app.

Whether `provider=hetzner, server_type=cpx41, location=fsn1` can run a service of 16 GiB
is the provisioning app's knowledge (it asks the cloud's API), but the services app
records the choice; provisioning registers its check here in `AppConfig.ready()`, and the
services app runs every registered check before it records a choice (the layers import
only downward: apps/common/events.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class FleetChoice:
    """A service's machines: provider, server type and location ("" = the default or
    chosen from the sizes), and the memory and disk its settings ask for (0 = unknown
    yet, before the first deploy)."""

    provider: str
    server_type: str
    location: str
    memory_bytes: int = 0
    disk_bytes: int = 0


_checks: list[Callable[[FleetChoice], None]] = []


def fleet_check_register(*, check: Callable[[FleetChoice], None]) -> None:
    """Run `check` on every choice from now on (twice registered: once run)."""
    if check not in _checks:
        _checks.append(check)


def fleet_check(*, choice: FleetChoice) -> None:
    """DomainError (from a check) unless every registered check accepts `choice`."""
    for check in list(_checks):
        check(choice)
