"""`memrun workers NAME`: the workers of a service, one line each."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from memrun._client import Client


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "workers",
        help="list a service's workers: state, version, heartbeat, in-flight, lag, machine, cost",
        description=(
            "One line per worker: its state (liveness when it went quiet: suspect after "
            "30 s without a heartbeat, dead after 60 s), version, heartbeat age, requests "
            "in flight, partitions and lag; for a cloud machine its server (type, "
            "location, address, age) and monthly cost, with the service's total."
        ),
    )
    parser.add_argument("name", help="the service")
    parser.add_argument("--all", action="store_true", help="include stopped and dead workers")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    workers = Client().service_workers(args.name, include_finished=args.all)
    if not workers:
        print(f"{args.name} has no running workers")
        return 0
    print_table(worker_rows(workers))
    total = monthly_total(workers)
    if total is not None:
        print(f"total: {total:.2f} EUR/month (net) for {len(workers)} workers")
    return 0


def monthly_total(workers: Sequence[dict[str, Any]]) -> Decimal | None:
    """The sum of the workers' machines' monthly prices; None when none is priced."""
    prices = [
        Decimal(str(price))
        for worker in workers
        if (price := (worker.get("machine") or {}).get("price_monthly_eur")) is not None
    ]
    return sum(prices, Decimal(0)) if prices else None


def worker_rows(workers: Sequence[dict[str, Any]]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [
        ("NAME", "STATE", "VERSION", "HEARTBEAT", "IN-FLIGHT", "PARTITIONS", "LAG", "MACHINE")
    ]
    for worker in workers:
        state = worker["state"]
        if worker.get("liveness") in ("suspect", "dead") and state not in ("stopped", "dead"):
            state += f" ({worker['liveness']})"
        age = worker.get("heartbeat_age_s")
        version = worker.get("deployment_version")
        rows.append(
            (
                worker["name"],
                state,
                f"v{version}" if version is not None else "-",
                f"{age:.0f}s ago" if age is not None else "never",
                _or_dash(worker.get("in_flight")),
                partition_ranges(worker.get("partitions") or []),
                _or_dash(worker.get("lag")),
                _machine(worker.get("machine") or {}),
            )
        )
    return rows


def _machine(machine: dict[str, Any]) -> str:
    """ "cpx41@fsn1 #123 198.51.100.7 25.20 EUR/mo", or "-" for a local process."""
    if not machine:
        return "-"
    parts = [f"{machine.get('server_type') or '?'}@{machine.get('location') or '?'}"]
    if machine.get("server_id") is not None:
        parts.append(f"#{machine['server_id']}")
    if machine.get("ipv4"):
        parts.append(str(machine["ipv4"]))
    if machine.get("price_monthly_eur") is not None:
        parts.append(f"{Decimal(str(machine['price_monthly_eur'])):.2f} EUR/mo")
    return " ".join(parts)


def print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)


def partition_ranges(partitions: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    runs: list[list[int]] = []
    for number in sorted(partitions):
        if runs and runs[-1][1] == number - 1:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs) or "-"
