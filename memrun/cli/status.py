"""`memrun status [NAME]`: each service's live version, ready workers, autoscaling and last
deployment; with NAME, its recent deployments and autoscaling decisions too. A version
whose workers keep dying is shown DEGRADED, with the reason (and, with NAME, the log
tail)."""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from memrun._client import Client, Deployment
from memrun.cli.autoscale import decision_lines, describe
from memrun.cli.deploy import human_bytes

HISTORY = 10


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show services: live version, workers ready/desired, last deployment",
        description="Without NAME, one line per service; with NAME, its recent deployments too.",
    )
    parser.add_argument("name", nargs="?", help="one service")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    client = Client()
    services = [client.service(args.name)] if args.name else client.services()
    if not services:
        print("no services yet; deploy one with `memrun deploy handler.py`")
        return 0
    ready = Counter(
        worker["service"] for worker in client.workers(args.name) if worker["state"] == "ready"
    )
    rows = [("SERVICE", "LIVE", "WORKERS", "AUTOSCALE", "LAST DEPLOYMENT")]
    history: list[Deployment] = []
    for service in services:
        name = service["name"]
        history = client.deployments(name, limit=HISTORY)
        autoscale = client.autoscale(name)
        live = next((d for d in history if d.status == "active"), None)
        rows.append(
            (
                name,
                (f"v{live.version}" + (" DEGRADED" if live.degraded else "")) if live else "-",
                f"{ready[name]}/{service['desired_workers']}",
                _autoscale_cell(autoscale),
                _describe(history[0]) if history else "never deployed",
            )
        )
    _print_table(rows)
    if args.name and history:
        print()
        _print_table(
            [("VERSION", "STATUS", "WHEN", "BY", "SHA256", "SIZE", "MESSAGE")]
            + [
                (
                    f"v{d.version}",
                    d.status,
                    _ago(d.created_at),
                    d.created_by or "-",
                    d.sha256[:12],
                    human_bytes(d.size_bytes),
                    d.failure_reason if d.status == "failed" else d.message,
                )
                for d in history
            ]
        )
        for d in history:
            if d.degraded:
                print(f"\nv{d.version} is DEGRADED: {d.degraded_reason}")
    if args.name and (autoscale["enabled"] or autoscale["decisions"]):
        print()
        print(describe(autoscale))
        for line in decision_lines(autoscale["decisions"][:HISTORY]):
            print(line)
    return 0


def _autoscale_cell(autoscale: dict[str, Any]) -> str:
    """The range, and the last decision with its reason: "1..4: up 2->3 5m ago (lag_above)"."""
    if not autoscale["enabled"]:
        return "off"
    text = f"{autoscale['min_workers']}..{autoscale['max_workers']}"
    if autoscale["decisions"]:
        last = autoscale["decisions"][0]  # newest first
        text += (
            f": {last['action']} {last['workers_before']}->{last['workers_after']} "
            f"{_ago(last['decided_at'])} ({last['reason']})"
        )
    return text


def _describe(deployment: Deployment) -> str:
    text = f"v{deployment.version} {deployment.status} {_ago(deployment.created_at)}"
    if deployment.created_by:
        text += f" by {deployment.created_by}"
    if deployment.status == "failed" and deployment.failure_reason:
        text += f": {deployment.failure_reason}"
    elif deployment.degraded:
        text += f", DEGRADED: {deployment.degraded_reason.splitlines()[0]}"
    return text


def _ago(timestamp: str) -> str:
    seconds = (datetime.now(UTC) - datetime.fromisoformat(timestamp)).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{max(int(seconds), 0)}s ago"


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
