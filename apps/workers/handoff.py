"""The warm handoff's control-plane side: the hot sets a partition's next owner prefetches.

Each worker reports, in its heartbeats, what its requests read per partition
(`hot_sets`, memrun/wire/hotsets.py, bounded in bytes by the worker). When a worker
gains partitions it asks here (GET /api/v1/workers/{name}/handoff, its own credential)
and gets what the other workers of its own service last reported for those partitions:
never another service's. A worker that stopped a while ago still counts (its hot set
says what the partition's keys read; each object is revalidated by the new owner), up
to `HANDOFF_MAX_AGE_S` after its last heartbeat. One query, bounded answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from django.utils import timezone

from apps.common.errors import DomainError
from apps.workers.models import Worker
from memrun.wire.hotsets import HotEntry, hot_entries_from_wire

HANDOFF_MAX_AGE_S = 600
HANDOFF_MAX_ENTRIES = 1024
HANDOFF_MAX_PARTITIONS = 4096


def handoff_partitions_parse(*, value: str) -> list[int]:
    """ "0,3,7" as [0, 3, 7]; a 422 that says what is wrong otherwise."""
    try:
        partitions = sorted({int(part) for part in value.split(",") if part.strip()})
    except ValueError:
        partitions = [-1]
    if not partitions or partitions[0] < 0 or len(partitions) > HANDOFF_MAX_PARTITIONS:
        raise DomainError(
            f"partitions must be up to {HANDOFF_MAX_PARTITIONS} partition numbers (0 or "
            f"more) separated by commas, e.g. 0,3,7; got {value[:100]!r}",
            status=422,
            details={"fields": {"partitions": ["comma-separated partition numbers"]}},
        )
    return partitions


def handoff_hot_sets(*, worker: Worker, partitions: Sequence[int]) -> dict[str, list[list[Any]]]:
    """What the other workers of `worker`'s service last reported reading on
    `partitions`: {"partition": [[url, size_bytes, version, last_access_s], ...]}, one
    entry per URL (the newest report), newest first, at most HANDOFF_MAX_ENTRIES."""
    wanted = set(partitions)
    since = timezone.now() - timedelta(seconds=HANDOFF_MAX_AGE_S)
    reports = (
        Worker.objects.filter(service_id=worker.service_id, last_heartbeat_at__gte=since)
        .exclude(pk=worker.pk)
        .values_list("stats", flat=True)
    )
    newest: dict[str, HotEntry] = {}
    for stats in reports:
        hot_sets = stats.get("hot_sets") if isinstance(stats, dict) else None
        if not isinstance(hot_sets, dict):
            continue
        relevant = {key: items for key, items in hot_sets.items() if _partition(key) in wanted}
        for entry in hot_entries_from_wire(relevant):
            known = newest.get(entry.url)
            if known is None or entry.last_access_s > known.last_access_s:
                newest[entry.url] = entry
    ordered = sorted(newest.values(), key=lambda e: e.last_access_s, reverse=True)
    out: dict[str, list[list[Any]]] = {}
    for entry in ordered[:HANDOFF_MAX_ENTRIES]:
        out.setdefault(str(entry.partition), []).append(entry.to_wire())
    return out


def _partition(key: str) -> int | None:
    try:
        return int(key)
    except ValueError:
        return None
