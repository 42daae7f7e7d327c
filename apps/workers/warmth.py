"""What is warm where: per running worker of a service, the partitions it owns and the
largest and most requested objects in its cache, from its last heartbeat.

Bounded whatever the cache holds: a heartbeat carries at most `LARGEST_COUNT` entries per
list (worker_daemon/report.py), and this keeps at most `ENTRIES_PER_WORKER` of each. One
query for the workers, none per worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.utils import timezone

from apps.services.models import Service
from apps.workers.liveness import heartbeat_age_s
from apps.workers.models import Worker

ENTRIES_PER_WORKER = 10


@dataclass(frozen=True)
class WarmObject:
    """A cached object: `tier` memory (a named or decoded object) or disk (a file, `name`
    its URL); `hits` and `last_access_s` (epoch seconds) for the most requested ones."""

    tier: str
    name: str
    size_bytes: int
    hits: int | None = None
    last_access_s: float | None = None


@dataclass(frozen=True)
class WorkerWarmth:
    name: str
    state: str
    deployment_version: int | None
    heartbeat_age_s: float | None
    partitions: list[int]
    memory_used_bytes: int
    disk_used_bytes: int
    disk_objects: int
    s3_fetches: int
    s3_fetched_bytes: int
    adopted_bytes: int
    largest: list[WarmObject] = field(default_factory=list)
    hottest: list[WarmObject] = field(default_factory=list)


@dataclass(frozen=True)
class ServiceWarmth:
    service: str
    workers: list[WorkerWarmth]


def service_warmth(*, service: Service) -> ServiceWarmth:
    """The warmth of `service`'s running workers, by name."""
    now = timezone.now()
    workers = (
        Worker.objects.select_related("deployment")
        .filter(service=service)
        .exclude(state__in=Worker.FINISHED_STATES)
        .order_by("name")
    )
    return ServiceWarmth(
        service=service.name,
        workers=[
            _worker_warmth(worker, heartbeat_age_s(worker.last_heartbeat_at, now))
            for worker in workers
        ],
    )


def _worker_warmth(worker: Worker, age_s: float | None) -> WorkerWarmth:
    stats = worker.stats if isinstance(worker.stats, Mapping) else {}
    cache = _mapping(stats.get("cache"))
    partitions = stats.get("partitions")
    return WorkerWarmth(
        name=worker.name,
        state=worker.state,
        deployment_version=worker.deployment.version if worker.deployment else None,
        heartbeat_age_s=None if age_s is None else round(age_s, 1),
        partitions=sorted(p for p in partitions if isinstance(p, int))
        if isinstance(partitions, list)
        else [],
        memory_used_bytes=_int(_mapping(cache.get("memory")).get("used_bytes")),
        disk_used_bytes=_int(_mapping(cache.get("disk")).get("used_bytes")),
        disk_objects=_int(_mapping(cache.get("disk")).get("objects")),
        s3_fetches=_int(_mapping(cache.get("remote")).get("fetches")),
        s3_fetched_bytes=_int(_mapping(cache.get("remote")).get("fetched_bytes")),
        adopted_bytes=_int(_mapping(cache.get("handover")).get("adopted_bytes")),
        largest=_objects(cache.get("largest"), tier=None),
        hottest=_objects(cache.get("hottest"), tier="disk"),
    )


def _objects(value: Any, *, tier: str | None) -> list[WarmObject]:
    if not isinstance(value, list):
        return []
    out = []
    for entry in value:
        if not isinstance(entry, Mapping):
            continue
        hits = entry.get("hits")
        last = entry.get("last_access_s")
        out.append(
            WarmObject(
                tier=str(tier or entry.get("tier", "")),
                name=str(entry.get("name", "")),
                size_bytes=_int(entry.get("size_bytes")),
                hits=hits if isinstance(hits, int) else None,
                last_access_s=float(last) if isinstance(last, int | float) else None,
            )
        )
    if tier is None:
        out.sort(key=lambda o: o.size_bytes, reverse=True)
    return out[:ENTRIES_PER_WORKER]


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
