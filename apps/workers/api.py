"""The workers API: what runs where, scaling, and the heartbeat of the workers themselves."""

from __future__ import annotations

from django.http import HttpRequest
from ninja import Router

from apps.provisioning.services import service_scale
from apps.services.models import Service
from apps.services.schemas import ErrorOut, ServiceOut
from apps.services.selectors import service_get
from apps.workers.auth import worker_auth, worker_require_self
from apps.workers.models import Worker
from apps.workers.schemas import HeartbeatIn, HeartbeatOut, ScaleIn, WorkerOut
from apps.workers.selectors import worker_list
from apps.workers.services import worker_heartbeat

router = Router(tags=["workers"])


@router.get("/workers", response={200: list[WorkerOut], 404: ErrorOut})
def workers_list(request: HttpRequest, service: str | None = None) -> list[Worker]:
    """All workers, or those of one `service`."""
    return list(worker_list(service=service_get(name=service) if service else None))


@router.get("/services/{name}/workers", response={200: list[WorkerOut], 404: ErrorOut})
def services_workers(request: HttpRequest, name: str, all: bool = False) -> list[Worker]:
    """The service's running workers; with `all`, the stopped and dead ones too."""
    return list(worker_list(service=service_get(name=name), running_only=not all))


@router.post("/services/{name}/scale", response={200: ServiceOut, 404: ErrorOut, 422: ErrorOut})
def services_scale(request: HttpRequest, name: str, payload: ScaleIn) -> Service:
    """Set how many workers the service runs (within its min and max); reconcile starts
    or drains workers to match."""
    return service_scale(service=service_get(name=name), workers=payload.workers)


@router.post(
    "/workers/{name}/heartbeat",
    auth=worker_auth,
    response={200: HeartbeatOut, 403: ErrorOut, 422: ErrorOut},
)
def workers_heartbeat(request: HttpRequest, name: str, payload: HeartbeatIn) -> HeartbeatOut:
    """A worker reports its state and stats (`Authorization: Bearer mrw_...`, its own
    credential, for itself only); the answer says whether to keep running or drain."""
    worker = worker_require_self(request=request, name=name)
    report = payload.model_dump()
    stats = {**report.pop("stats"), **report}
    action = worker_heartbeat(worker=worker, state=stats.pop("state"), stats=stats)
    return HeartbeatOut(action=action)
