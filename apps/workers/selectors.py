"""Reads of workers."""

from __future__ import annotations

from django.db.models import QuerySet

from apps.common.credentials import secret_hash
from apps.services.models import Service
from apps.workers.models import Worker


def worker_list(*, service: Service | None = None, running_only: bool = False) -> QuerySet[Worker]:
    """Workers with their service and deployment, by service then name; `running_only`
    leaves out the stopped and dead ones."""
    workers = Worker.objects.select_related("service", "deployment").order_by(
        "service__name", "name"
    )
    if running_only:
        workers = workers.exclude(state__in=Worker.FINISHED_STATES)
    return workers if service is None else workers.filter(service=service)


def worker_get_by_credential(*, credential: str) -> Worker | None:
    """The worker whose credential `credential` is (any state), with its service."""
    return (
        Worker.objects.select_related("service", "deployment")
        .filter(credential_hash=secret_hash(credential))
        .first()
    )
