"""The workers API: what runs where."""

from __future__ import annotations

from django.http import HttpRequest
from ninja import Router

from apps.services.schemas import ErrorOut
from apps.services.selectors import service_get
from apps.workers.models import Worker
from apps.workers.schemas import WorkerOut
from apps.workers.selectors import worker_list

router = Router(tags=["workers"])


@router.get("/workers", response={200: list[WorkerOut], 404: ErrorOut})
def workers_list(request: HttpRequest, service: str | None = None) -> list[Worker]:
    """All workers, or those of one `service`."""
    return list(worker_list(service=service_get(name=service) if service else None))
