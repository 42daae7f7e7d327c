"""Reads of workers."""

from __future__ import annotations

from django.db.models import QuerySet

from apps.services.models import Service
from apps.workers.models import Worker


def worker_list(*, service: Service | None = None) -> QuerySet[Worker]:
    """Workers with their service and deployment, by service then name."""
    workers = Worker.objects.select_related("service", "deployment").order_by(
        "service__name", "name"
    )
    return workers if service is None else workers.filter(service=service)
