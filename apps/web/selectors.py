"""Reads that shape what the pages show, each in a fixed number of queries whatever the
number of services, workers or log lines: the dashboard's rows, a service's workers
and recent requests, and a deployment's rollout as the lines the deploy page prints.

The numbers come from what workers report in their heartbeats (`Worker.stats`); a
worker that has stopped no longer counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db.models import Count, F, OuterRef, Q, QuerySet, Subquery

from apps.services.models import Deployment, DeploymentStatus, Service
from apps.workers.models import Worker, WorkerLogLine, WorkerState
from memrun.wire.sizes import format_size

RECENT_REQUESTS = 20
SERVICE_PAGE_WORKERS = 100
SERVICE_PAGE_DEPLOYMENTS = 50
REQUEST_LOG_LINES = 200
TIERS = ("memory", "disk", "s3")


@dataclass(frozen=True)
class CacheView:
    """Hit counts per tier (RAM, local disk, S3 fetch) and what the cache holds."""

    hits: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TIERS, 0))
    disk_used_bytes: int = 0
    disk_capacity_bytes: int = 0
    memory_used_bytes: int = 0
    memory_budget_bytes: int = 0

    @property
    def lookups(self) -> int:
        return sum(self.hits.values())

    @property
    def ratios(self) -> dict[str, str]:
        """Per tier, the share of lookups it answered ("-" before the first lookup)."""
        total = self.lookups
        return {tier: f"{100 * n / total:.0f}%" if total else "-" for tier, n in self.hits.items()}

    @property
    def disk_used(self) -> str:
        return f"{_size(self.disk_used_bytes)} / {_size(self.disk_capacity_bytes)}"

    @property
    def memory_used(self) -> str:
        return f"{_size(self.memory_used_bytes)} / {_size(self.memory_budget_bytes)}"


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else format_size(n)


@dataclass(frozen=True)
class WorkerView:
    worker: Worker
    in_flight: int
    concurrency: int
    completed: int
    errors: int
    lag: int | None
    partitions: list[int]
    cache: CacheView


@dataclass(frozen=True)
class ServiceSummary:
    service: Service
    live_version: int | None
    workers_ready: int
    requests: int
    errors: int
    in_flight: int
    lag: int | None
    cache: CacheView


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def cache_view(stats: dict[str, Any]) -> CacheView:
    cache = stats.get("cache") if isinstance(stats.get("cache"), dict) else {}
    assert isinstance(cache, dict)
    hits = cache.get("hits") if isinstance(cache.get("hits"), dict) else {}
    assert isinstance(hits, dict)
    disk = cache.get("disk") if isinstance(cache.get("disk"), dict) else {}
    memory = cache.get("memory") if isinstance(cache.get("memory"), dict) else {}
    assert isinstance(disk, dict) and isinstance(memory, dict)
    return CacheView(
        hits={
            "memory": _int(hits.get("memory")),
            "disk": _int(hits.get("disk")),
            "s3": _int(cache.get("misses")),
        },
        disk_used_bytes=_int(disk.get("used_bytes")),
        disk_capacity_bytes=_int(disk.get("capacity_bytes")),
        memory_used_bytes=_int(memory.get("named_bytes")) + _int(memory.get("decoded_bytes")),
        memory_budget_bytes=_int(memory.get("budget_bytes")),
    )


def worker_view(worker: Worker) -> WorkerView:
    stats = worker.stats if isinstance(worker.stats, dict) else {}
    partitions = stats.get("partitions") if isinstance(stats.get("partitions"), list) else []
    assert isinstance(partitions, list)
    lag = stats.get("lag")
    return WorkerView(
        worker=worker,
        in_flight=_int(stats.get("in_flight")),
        concurrency=_int(stats.get("concurrency")) or worker.service.concurrency,
        completed=_int(stats.get("completed")),
        errors=_int(stats.get("failed")) + _int(stats.get("timed_out")),
        lag=lag if isinstance(lag, int) else None,
        # Heartbeats report partition numbers; the worker's own stats, dicts with them.
        partitions=sorted(
            p if isinstance(p, int) else p["partition"]
            for p in partitions
            if isinstance(p, int) or (isinstance(p, dict) and isinstance(p.get("partition"), int))
        ),
        cache=cache_view(stats),
    )


def _live_version() -> Subquery:
    active = Deployment.objects.filter(
        service=OuterRef("pk"), status=DeploymentStatus.ACTIVE
    ).order_by("-version")
    return Subquery(active.values("version")[:1])


def service_summaries() -> list[ServiceSummary]:
    """Every service with its live version and ready workers, and the totals of its
    running workers' reported counters. Two queries."""
    services = list(
        Service.objects.order_by("name").annotate(
            live_version=_live_version(),
            workers_ready=Count("workers", filter=Q(workers__state=WorkerState.READY)),
        )
    )
    by_service: dict[int, list[WorkerView]] = {}
    running = (
        Worker.objects.exclude(state__in=Worker.FINISHED_STATES)
        .select_related("service")
        .only("id", "service_id", "stats", "service__concurrency")
    )
    for worker in running:
        by_service.setdefault(worker.service_id, []).append(worker_view(worker))
    return [_summary(service, by_service.get(service.pk, [])) for service in services]


def _summary(service: Any, workers: list[WorkerView]) -> ServiceSummary:
    hits = dict.fromkeys(TIERS, 0)
    for view in workers:
        for tier, count in view.cache.hits.items():
            hits[tier] += count
    lags = [view.lag for view in workers if view.lag is not None]
    return ServiceSummary(
        service=service,
        live_version=service.live_version,
        workers_ready=service.workers_ready,
        requests=sum(view.completed + view.errors for view in workers),
        errors=sum(view.errors for view in workers),
        in_flight=sum(view.in_flight for view in workers),
        lag=sum(lags) if lags else None,
        cache=CacheView(hits=hits),
    )


def service_workers(*, service: Service) -> list[WorkerView]:
    """The service's running workers, then the most recently finished ones."""
    workers = (
        Worker.objects.filter(service=service)
        .select_related("service", "deployment")
        .annotate(finished=Q(state__in=Worker.FINISHED_STATES))
        .order_by("finished", "-created_at")[:SERVICE_PAGE_WORKERS]
    )
    return [worker_view(worker) for worker in workers]


def service_deployments(*, service: Service) -> QuerySet[Deployment]:
    return (
        Deployment.objects.filter(service=service)
        .select_related("created_by")
        .order_by("-version")[:SERVICE_PAGE_DEPLOYMENTS]
    )


def service_recent_requests(*, service: Service) -> list[WorkerLogLine]:
    """The newest requests the service's workers logged (one line each, event
    "request"), newest first, each with `worker_name`."""
    return list(
        WorkerLogLine.objects.filter(service=service, event="request")
        .annotate(worker_name=F("worker__name"))
        .order_by("-ts", "-id")[:RECENT_REQUESTS]
    )


def request_log_lines(*, request_id: str) -> list[WorkerLogLine]:
    """The log lines that carry `request_id`, oldest first, each with `worker_name`."""
    return list(
        WorkerLogLine.objects.filter(request_id=request_id)
        .annotate(worker_name=F("worker__name"), service_name=F("service__name"))
        .order_by("ts", "id")[:REQUEST_LOG_LINES]
    )


@dataclass(frozen=True)
class Rollout:
    """A deployment's progress as lines the way `git push` to a PaaS prints them, and
    whether it is over (`done`: live, or failed)."""

    lines: list[str]
    done: bool
    failed: bool


def deployment_rollout(*, deployment: Deployment) -> Rollout:
    """What happened to `deployment` so far, from its status and the service's workers.
    Three queries."""
    deployment.refresh_from_db(fields=["status", "failure_reason"])
    service = Service.objects.get(pk=deployment.service_id)
    manifest = deployment.manifest or {}
    lines = [
        f"validated: {manifest.get('entry', 'package')} for service {service.name}",
        f"stored as version {deployment.version} ({_size(deployment.size_bytes)}, "
        f"sha256 {deployment.sha256[:12]})",
    ]
    workers = list(
        Worker.objects.filter(service=service)
        .exclude(state__in=Worker.FINISHED_STATES)
        .values_list("deployment_id", "state")
    )
    mine = [state for deployment_id, state in workers if deployment_id == deployment.pk]
    others = [state for deployment_id, state in workers if deployment_id != deployment.pk]
    ready = mine.count(WorkerState.READY)
    wanted = service.desired_workers
    status = deployment.status
    if status == DeploymentStatus.FAILED:
        lines.append(f"failed: {deployment.failure_reason or 'the rollout failed'}")
        return Rollout(lines, done=True, failed=True)
    if status == DeploymentStatus.SUPERSEDED:
        lines.append("superseded: a newer version was deployed")
        return Rollout(lines, done=True, failed=False)
    if status == DeploymentStatus.ACTIVE:
        lines.append(f"workers started {ready}/{wanted}")
    else:
        lines.append(f"workers starting {ready}/{wanted}")
    if status == DeploymentStatus.ACTIVE:
        lines.append(f"ready: {ready}/{wanted} worker(s) on v{deployment.version}")
        if others:
            lines.append(f"old version draining: {len(others)} worker(s)")
        else:
            lines.append("done")
            return Rollout(lines, done=True, failed=False)
    return Rollout(lines, done=False, failed=False)
