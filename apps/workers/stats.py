"""Reads of what workers report in their heartbeats, for the dashboard and /metrics.

Every number comes from the stats a worker last sent (worker_daemon/report.py shapes
them), so it is as fresh as that heartbeat (every 10 s). Only running workers count
(not stopped or dead ones). Per service, the numbers of its workers are added up, and
p50/p99 come from their merged latency buckets (`memrun.wire.stats`: fixed buckets,
so the merge is exact and a percentile is exact to within its bucket).

The functions here take a bounded number of queries whatever the number of services
and workers: three for the dashboard, two for one service, none for one worker.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db.models import QuerySet
from django.utils import timezone

from apps.services.deadletters import deadletter_counts
from apps.services.models import Deployment, Service
from apps.workers.liveness import liveness
from apps.workers.models import Worker, WorkerState
from memrun.wire.stats import LATENCY_BUCKETS, latency_quantile_ms

TIERS = ("memory", "disk", "remote")
LARGEST_PER_SERVICE = 20


@dataclass(frozen=True)
class TierStats:
    """One cache tier: `memory` (objects in RAM), `disk` (local files) or `remote`
    (fetched from S3 or the source: the misses). `hit_ratio` is the share of cache
    look-ups this tier served (the three add up to 1); None before any look-up.
    `used_bytes`/`capacity_bytes` are None for remote."""

    tier: str
    hits: int
    hit_ratio: float | None
    used_bytes: int | None
    capacity_bytes: int | None


@dataclass(frozen=True)
class CachedObject:
    """One of the biggest entries in a worker's cache: a named object in RAM (`tier`
    memory, `name` its name) or a file on disk (`tier` disk, `name` its URL)."""

    worker: str
    tier: str
    name: str
    size_bytes: int


@dataclass(frozen=True)
class RequestStats:
    """Handled requests. `per_minute`/`errors_per_minute`: over the last minute;
    `total`/`errors`: since the worker(s) started; p50/p99 handler latency over the
    last minute, in milliseconds (None without requests). `latency_counts` are the
    totals per bucket of `memrun.wire.stats.LATENCY_BOUNDS_MS` (for histograms),
    `last_minute_counts` the same over the last minute."""

    per_minute: int
    errors_per_minute: int
    p50_ms: float | None
    p99_ms: float | None
    total: int
    errors: int
    latency_counts: tuple[int, ...]
    latency_sum_ms: float
    last_minute_counts: tuple[int, ...]


@dataclass(frozen=True)
class WorkerStats:
    """A running worker as last reported. `liveness`: live, suspect (silent 30 s),
    dead (silent 60 s) or unknown (no heartbeat yet). `partition_lag` maps each owned
    partition to its lag (messages not yet committed); `lag` is their sum."""

    name: str
    service: str
    state: str
    liveness: str
    version: int | None
    created_at: datetime
    last_heartbeat_at: datetime | None
    in_flight: int
    concurrency: int | None
    partitions: tuple[int, ...]
    partition_lag: dict[int, int]
    lag: int | None
    requests: RequestStats
    cache_used_bytes: int
    cache_capacity_bytes: int
    cache_tiers: tuple[TierStats, ...]
    largest: tuple[CachedObject, ...]
    # The provisioner's view of its machine (Worker.machine): server, type, location,
    # addresses, and the type's EUR prices; empty for a local process.
    machine: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def cost_monthly_eur(self) -> Decimal | None:
        return _price(self.machine.get("price_monthly_eur"))

    @property
    def cost_hourly_eur(self) -> Decimal | None:
        return _price(self.machine.get("price_hourly_eur"))


@dataclass(frozen=True)
class ServiceStats:
    """A service with the sums of its running workers. `live_version` is the active
    deployment's version (None before the first deploy finished); `dead_letters` the
    records kept on its DLQ topic (None: not asked, or Kafka unreachable); `largest`
    the biggest cache entries over all its workers."""

    name: str
    live_version: int | None
    workers_ready: int
    workers_desired: int
    in_flight: int
    concurrency: int
    lag: int | None
    requests: RequestStats
    cache_used_bytes: int
    cache_capacity_bytes: int
    cache_tiers: tuple[TierStats, ...]
    largest: tuple[CachedObject, ...]
    workers: tuple[WorkerStats, ...]
    dead_letters: int | None = None

    @property
    def cost_monthly_eur(self) -> Decimal | None:
        """What its running workers' machines cost a month (None: no priced machine)."""
        costs = [c for w in self.workers if (c := w.cost_monthly_eur) is not None]
        return sum(costs, Decimal(0)) if costs else None

    @property
    def cost_hourly_eur(self) -> Decimal | None:
        costs = [c for w in self.workers if (c := w.cost_hourly_eur) is not None]
        return sum(costs, Decimal(0)) if costs else None


def service_dashboard_list(
    *, dead_letters: bool = True, readable: frozenset[str] | None = None
) -> list[ServiceStats]:
    """Every service (or those named in `readable`), by name, with its numbers. Three
    queries whatever the number of services and workers; with `dead_letters`, one Kafka
    round trip for every DLQ count (None where Kafka does not answer)."""
    rows = Service.objects.order_by("name")
    if readable is not None:
        rows = rows.filter(name__in=readable)
    services = list(rows)
    stats = _services_stats(services, _running_workers().filter(service__in=services))
    if not dead_letters:
        return stats
    counts = deadletter_counts(services=[s.name for s in services])
    return [dataclasses.replace(s, dead_letters=counts.get(s.name)) for s in stats]


def service_stats_get(*, service: Service) -> ServiceStats:
    """One service's numbers and its running workers' (two queries, no Kafka)."""
    [stats] = _services_stats([service], _running_workers().filter(service=service))
    return stats


def worker_stats_get(*, worker: Worker) -> WorkerStats:
    """One worker's numbers as it last reported them (no query beyond `worker`'s own
    service and deployment, which the worker selectors select_related)."""
    return _worker_stats(worker, timezone.now())


def _running_workers() -> QuerySet[Worker]:
    return (
        Worker.objects.exclude(state__in=Worker.FINISHED_STATES)
        .select_related("service", "deployment")
        .order_by("service__name", "name")
    )


def _services_stats(services: list[Service], workers: Iterable[Worker]) -> list[ServiceStats]:
    now = timezone.now()
    by_service: dict[int, list[WorkerStats]] = defaultdict(list)
    ready: dict[int, int] = defaultdict(int)
    for worker in workers:
        by_service[worker.service_id].append(_worker_stats(worker, now))
        ready[worker.service_id] += worker.state == WorkerState.READY
    live = dict(
        Deployment.objects.filter(
            service__in=services, status=Deployment.Status.ACTIVE
        ).values_list("service_id", "version")
    )
    return [
        _service_stats(
            service,
            by_service.get(service.pk, []),
            live_version=live.get(service.pk),
            workers_ready=ready.get(service.pk, 0),
        )
        for service in services
    ]


def _service_stats(
    service: Service, workers: list[WorkerStats], *, live_version: int | None, workers_ready: int
) -> ServiceStats:
    lags = [w.lag for w in workers if w.lag is not None]
    return ServiceStats(
        name=service.name,
        live_version=live_version,
        workers_ready=workers_ready,
        workers_desired=service.desired_workers,
        in_flight=sum(w.in_flight for w in workers),
        concurrency=sum(w.concurrency or 0 for w in workers),
        lag=sum(lags) if lags else None,
        requests=_merge_requests([w.requests for w in workers]),
        cache_used_bytes=sum(w.cache_used_bytes for w in workers),
        cache_capacity_bytes=sum(w.cache_capacity_bytes for w in workers),
        cache_tiers=_tiers(
            {t: sum(_tier(w, t).hits for w in workers) for t in TIERS},
            {t: sum(_tier(w, t).used_bytes or 0 for w in workers) for t in TIERS},
            {t: sum(_tier(w, t).capacity_bytes or 0 for w in workers) for t in TIERS},
        ),
        largest=tuple(
            sorted((o for w in workers for o in w.largest), key=lambda o: -o.size_bytes)[
                :LARGEST_PER_SERVICE
            ]
        ),
        workers=tuple(workers),
    )


def _price(raw: object) -> Decimal | None:
    try:
        return Decimal(str(raw)) if raw is not None else None
    except ArithmeticError:
        return None


def _worker_stats(worker: Worker, now: datetime) -> WorkerStats:
    raw = worker.stats if isinstance(worker.stats, dict) else {}
    cache = _mapping(raw.get("cache"))
    tiers = {t: _mapping(cache.get(t)) for t in TIERS}
    partition_lag = {
        int(p): lag
        for p, lag in _mapping(raw.get("partition_lag")).items()
        if str(p).isdigit() and _is_int(lag)
    }
    requests = _mapping(raw.get("requests"))
    return WorkerStats(
        name=worker.name,
        service=worker.service.name,
        state=worker.state,
        liveness=liveness(worker.last_heartbeat_at, now).value,
        version=worker.deployment.version if worker.deployment else None,
        created_at=worker.created_at,
        last_heartbeat_at=worker.last_heartbeat_at,
        in_flight=_int(raw.get("in_flight")),
        concurrency=raw["concurrency"] if _is_int(raw.get("concurrency")) else None,
        partitions=tuple(sorted(p for p in _list(raw.get("partitions")) if _is_int(p))),
        partition_lag=partition_lag,
        lag=raw["lag"] if _is_int(raw.get("lag")) else None,
        requests=_merge_requests([_requests(requests)]),
        machine=worker.machine if isinstance(worker.machine, dict) else {},
        cache_used_bytes=_int(tiers["memory"].get("used_bytes"))
        + _int(tiers["disk"].get("used_bytes")),
        cache_capacity_bytes=_int(tiers["memory"].get("capacity_bytes"))
        + _int(tiers["disk"].get("capacity_bytes")),
        cache_tiers=_tiers(
            {t: _int(tiers[t].get("hits")) for t in TIERS},
            {t: _int(tiers[t].get("used_bytes")) for t in TIERS},
            {t: _int(tiers[t].get("capacity_bytes")) for t in TIERS},
        ),
        largest=tuple(
            CachedObject(
                worker=worker.name,
                tier=str(entry.get("tier", "")),
                name=str(entry.get("name", "")),
                size_bytes=_int(entry.get("size_bytes")),
            )
            for entry in _list(cache.get("largest"))
            if isinstance(entry, Mapping)
        ),
    )


def _requests(requests: Mapping[str, Any]) -> RequestStats:
    """A worker's `requests` report as read, before percentiles (see _merge_requests)."""
    window = _mapping(requests.get("last_minute"))
    latency_sum_ms = requests.get("latency_sum_ms")
    return RequestStats(
        per_minute=_int(window.get("requests")),
        errors_per_minute=_int(window.get("errors")),
        p50_ms=None,
        p99_ms=None,
        total=_int(requests.get("total")),
        errors=_int(requests.get("errors")),
        latency_counts=_counts(requests.get("latency_counts")),
        latency_sum_ms=float(latency_sum_ms) if isinstance(latency_sum_ms, int | float) else 0.0,
        last_minute_counts=_counts(window.get("latency_counts")),
    )


def _merge_requests(reports: list[RequestStats]) -> RequestStats:
    """The sum of `reports`, with p50/p99 from their merged last-minute buckets."""
    window = _sum_columns([r.last_minute_counts for r in reports])
    return RequestStats(
        per_minute=sum(r.per_minute for r in reports),
        errors_per_minute=sum(r.errors_per_minute for r in reports),
        p50_ms=_rounded(latency_quantile_ms(window, 0.5)),
        p99_ms=_rounded(latency_quantile_ms(window, 0.99)),
        total=sum(r.total for r in reports),
        errors=sum(r.errors for r in reports),
        latency_counts=_sum_columns([r.latency_counts for r in reports]),
        latency_sum_ms=round(sum(r.latency_sum_ms for r in reports), 3),
        last_minute_counts=window,
    )


def _sum_columns(rows: list[tuple[int, ...]]) -> tuple[int, ...]:
    return tuple(sum(column) for column in zip(*rows, strict=True)) or (0,) * LATENCY_BUCKETS


def _tiers(
    hits: Mapping[str, int], used: Mapping[str, int], capacity: Mapping[str, int]
) -> tuple[TierStats, ...]:
    lookups = sum(hits.values())
    return tuple(
        TierStats(
            tier=tier,
            hits=hits[tier],
            hit_ratio=round(hits[tier] / lookups, 4) if lookups else None,
            used_bytes=None if tier == "remote" else used[tier],
            capacity_bytes=None if tier == "remote" else capacity[tier],
        )
        for tier in TIERS
    )


def _tier(stats: WorkerStats, tier: str) -> TierStats:
    return next(t for t in stats.cache_tiers if t.tier == tier)


def _counts(value: Any) -> tuple[int, ...]:
    counts = tuple(_int(c) for c in _list(value))
    return counts if len(counts) == LATENCY_BUCKETS else (0,) * LATENCY_BUCKETS


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(value: Any) -> int:
    return value if _is_int(value) else 0
