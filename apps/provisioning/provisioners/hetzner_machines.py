"""Hetzner server types as memrun sees them: their size and net price in one location,
the cheapest that fits a service, and what the worker list shows of a server."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from hcloud.server_types import ServerType
from hcloud.servers import BoundServer

from apps.common.errors import DomainError

GIB = 1024**3


@dataclass(frozen=True)
class MachineType:
    """A server type as offered in one location."""

    name: str
    cores: int
    memory_bytes: int
    disk_bytes: int
    price_hourly_eur: Decimal
    price_monthly_eur: Decimal


def machine_type_choose(
    *, types: list[MachineType], memory_bytes: int, disk_bytes: int, location: str
) -> MachineType:
    """The cheapest type with at least `memory_bytes` of RAM and `disk_bytes` of disk
    (ties: fewer cores, then name); DomainError 422 naming the largest when none fits."""
    fitting = [t for t in types if t.memory_bytes >= memory_bytes and t.disk_bytes >= disk_bytes]
    if fitting:
        return min(fitting, key=lambda t: (t.price_monthly_eur, t.cores, t.name))
    if not types:
        raise DomainError(
            f"no server type is offered in location {location!r}",
            status=422,
            details={"location": location},
        )
    largest = max(types, key=lambda t: (t.memory_bytes, t.disk_bytes))
    raise DomainError(
        f"no server type in {location} has {memory_bytes / GIB:g} GiB of RAM and "
        f"{disk_bytes / GIB:g} GiB of disk; the largest is {largest.name} "
        f"({largest.memory_bytes / GIB:g} GiB RAM, {largest.disk_bytes / GIB:g} GiB disk): "
        "lower the service's memory or disk",
        status=422,
        details={
            "memory_bytes": memory_bytes,
            "disk_bytes": disk_bytes,
            "largest": largest.name,
            "location": location,
        },
    )


def machine_of(server: BoundServer) -> dict[str, Any]:
    """What the worker list shows of a server: id, type, location, addresses, status,
    creation time, and the type's prices in its location (EUR, net)."""
    location = (server.location.name if server.location is not None else None) or ""
    machine: dict[str, Any] = {
        "server_id": server.id,
        "server_type": "",
        "location": location,
        "status": server.status,
        "created": server.created.isoformat() if server.created else None,
        "ipv4": None,
        "ipv6": None,
        "private_ips": [net.ip for net in server.private_net or []],
        "price_hourly_eur": None,
        "price_monthly_eur": None,
    }
    if server.public_net is not None:
        if server.public_net.ipv4 is not None:
            machine["ipv4"] = server.public_net.ipv4.ip
        if server.public_net.ipv6 is not None:
            machine["ipv6"] = server.public_net.ipv6.ip
    if server.server_type is not None:
        machine["server_type"] = server.server_type.data_model.name
        priced = machine_type_offered(server.server_type.data_model, location)
        if priced is not None:
            machine["price_hourly_eur"] = str(priced.price_hourly_eur)
            machine["price_monthly_eur"] = str(priced.price_monthly_eur)
    return machine


def machine_type_offered(raw: ServerType, location: str) -> MachineType | None:
    """`raw` as offered in `location` (net prices), None when it is not offered there."""
    for price in raw.prices or []:
        if price.get("location") == location:
            return MachineType(
                name=raw.name or "",
                cores=int(raw.cores or 0),
                memory_bytes=int(float(raw.memory or 0) * GIB),
                disk_bytes=int(raw.disk or 0) * GIB,
                price_hourly_eur=Decimal(price["price_hourly"]["net"]),
                price_monthly_eur=Decimal(price["price_monthly"]["net"]),
            )
    return None
