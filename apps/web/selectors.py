"""Reads that shape what the pages show, each in a fixed number of queries whatever the
number of services, workers or log lines: a service's history, finished workers and
recent requests, a request's log lines, and a deployment's rollout as the lines the
deploy page prints. The numbers workers report are apps/workers/stats.py's.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.admin.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db.models import F, QuerySet

from apps.services.models import Deployment, DeploymentStatus, Service
from apps.workers.models import Worker, WorkerLogLine, WorkerState
from memrun.wire.sizes import format_size

RECENT_REQUESTS = 20
SERVICE_PAGE_FINISHED_WORKERS = 20
SERVICE_PAGE_DEPLOYMENTS = 50
SERVICE_PAGE_CHANGES = 10
REQUEST_LOG_LINES = 200
# The newest install events a rollout shows (a crash-looping worker installs again).
ROLLOUT_INSTALL_EVENTS = 30
ROLLOUT_LISTED_DEPENDENCIES = 3
# worker_daemon/package/_venv.py's events, as a new worker prepares its package.
INSTALL_EVENTS = (
    "package.dependencies",
    "package.dependencies_installed",
    "package.dependencies_failed",
)


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else format_size(n)


def service_finished_workers(*, service: Service) -> QuerySet[Worker]:
    """The service's most recently stopped or dead workers (the running ones and their
    numbers are apps/workers/stats.py's)."""
    return (
        Worker.objects.filter(service=service, state__in=Worker.FINISHED_STATES)
        .select_related("deployment")
        .order_by("-state_changed_at", "-id")[:SERVICE_PAGE_FINISHED_WORKERS]
    )


def service_changes(*, service: Service) -> QuerySet[LogEntry]:
    """Who changed the service outside a deploy (scaled it, edited it in the admin),
    when and what, newest first."""
    return (
        LogEntry.objects.filter(
            content_type=ContentType.objects.get_for_model(Service), object_id=str(service.pk)
        )
        .select_related("user")
        .order_by("-action_time")[:SERVICE_PAGE_CHANGES]
    )


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


def request_log_lines(
    *, request_id: str, readable: frozenset[str] | None = None
) -> list[WorkerLogLine]:
    """The log lines that carry `request_id`, oldest first, each with `worker_name`;
    with `readable`, only those of these services."""
    lines = WorkerLogLine.objects.filter(request_id=request_id)
    if readable is not None:
        lines = lines.filter(service__name__in=readable)
    return list(
        lines.annotate(worker_name=F("worker__name"), service_name=F("service__name")).order_by(
            "ts", "id"
        )[:REQUEST_LOG_LINES]
    )


@dataclass(frozen=True)
class Rollout:
    """A deployment's progress as lines the way `git push` to a PaaS prints them, and
    whether it is over (`done`: live, or failed)."""

    lines: list[str]
    done: bool
    failed: bool


def deployment_rollout(*, deployment: Deployment) -> Rollout:
    """What happened to `deployment` so far, from its status, the service's workers and
    its workers' dependency installs (shipped worker events). Four queries."""
    deployment.refresh_from_db(fields=["status", "failure_reason"])
    service = Service.objects.get(pk=deployment.service_id)
    manifest = deployment.manifest or {}
    lines = [
        f"validated: {manifest.get('entry', 'package')} for service {service.name}",
        f"stored as version {deployment.version} ({_size(deployment.size_bytes)}, "
        f"sha256 {deployment.sha256[:12]})",
        *_install_lines(deployment),
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


def _install_lines(deployment: Deployment) -> list[str]:
    """What `deployment`'s workers said while installing its PEP 723 dependencies, oldest
    first. The fields come from the worker: anything unexpected in them is left out."""
    events = list(
        WorkerLogLine.objects.filter(
            worker__in=Worker.objects.filter(deployment=deployment).values("pk"),
            event__in=INSTALL_EVENTS,
        )
        .annotate(worker_name=F("worker__name"))
        .order_by("-ts", "-id")
        .values_list("worker_name", "event", "fields")[:ROLLOUT_INSTALL_EVENTS]
    )
    lines = []
    for worker, event, fields in reversed(events):
        line = _install_line(event, fields if isinstance(fields, dict) else {})
        if line:
            lines.append(f"worker {worker}: {line}")
    return lines


def _install_line(event: str, fields: dict[str, object]) -> str:
    seconds = fields.get("seconds")
    took = f" in {seconds:.1f} s" if isinstance(seconds, int | float) else ""
    if event == "package.dependencies_installed":
        return f"dependencies installed{took}"
    if event == "package.dependencies_failed":
        error = str(fields.get("error") or "no reason given").strip().splitlines() or [""]
        return f"installing dependencies failed{took}: {error[0]}"
    listed = fields.get("dependencies")
    names = [str(name) for name in listed] if isinstance(listed, list) else []
    shown = ", ".join(names[:ROLLOUT_LISTED_DEPENDENCIES])
    if len(names) > ROLLOUT_LISTED_DEPENDENCIES:
        shown += ", ..."
    count = f"{len(names)} dependenc{'y' if len(names) == 1 else 'ies'} ({shown})"
    if fields.get("reused") is True:
        return f"{count} reused from an existing venv"
    return f"installing {count}"
