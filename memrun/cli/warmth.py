"""`memrun warmth NAME`: what is warm where, per running worker of a service."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from memrun._client import Client
from memrun.cli.deploy import human_bytes
from memrun.cli.workers import partition_ranges, print_table


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "warmth",
        help="show which worker owns which partitions and what its cache holds",
        description=(
            "One line per running worker (partitions, bytes in RAM and on disk, S3 "
            "fetches, bytes taken over from a stopped worker's cache), then its most "
            "requested and largest cached objects, as its last heartbeat reported them."
        ),
    )
    parser.add_argument("name", help="the service")
    parser.add_argument("--top", type=int, default=5, help="objects listed per worker (max 10)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    warmth = Client().service_warmth(args.name)
    workers = warmth["workers"]
    if not workers:
        print(f"{args.name} has no running workers")
        return 0
    print_table(warmth_rows(workers))
    for worker in workers:
        lines = object_lines(worker, top=args.top)
        if lines:
            print(f"\n{worker['name']}:")
            for line in lines:
                print(f"  {line}")
    return 0


def warmth_rows(workers: list[Mapping[str, Any]]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [
        ("NAME", "VERSION", "PARTITIONS", "RAM", "DISK", "FILES", "S3 FETCHES", "ADOPTED")
    ]
    for worker in workers:
        version = worker.get("deployment_version")
        rows.append(
            (
                worker["name"],
                f"v{version}" if version is not None else "-",
                partition_ranges(worker.get("partitions") or []),
                human_bytes(worker["memory_used_bytes"]),
                human_bytes(worker["disk_used_bytes"]),
                str(worker["disk_objects"]),
                f"{worker['s3_fetches']} ({human_bytes(worker['s3_fetched_bytes'])})",
                human_bytes(worker["adopted_bytes"]),
            )
        )
    return rows


def object_lines(worker: Mapping[str, Any], *, top: int) -> list[str]:
    lines = [
        f"hot    {entry['hits']:>6} hits  {human_bytes(entry['size_bytes']):>9}  {entry['name']}"
        for entry in worker.get("hottest", [])[:top]
    ]
    lines += [
        f"large  {entry['tier']:>11}  {human_bytes(entry['size_bytes']):>9}  {entry['name']}"
        for entry in worker.get("largest", [])[:top]
    ]
    return lines
