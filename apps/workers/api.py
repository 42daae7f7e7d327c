"""The workers API: what runs where, the heartbeat of the workers themselves, the package
each fetches, and their logs (workers post their lines; users read a worker's, or a
service's merged across its workers, page by page)."""

from __future__ import annotations

import pydantic
from django.http import FileResponse, HttpRequest, HttpResponse
from ninja import Query, Router, Status
from ninja.errors import ValidationError

from apps.common.errors import DomainError
from apps.common.permissions import Role
from apps.services.artifacts import artifact_open
from apps.services.auth import ANY, OBJECT, access_of, needs
from apps.services.schemas import ErrorOut
from apps.services.selectors import deployment_get_by_id, service_get
from apps.workers import selectors, services
from apps.workers.auth import (
    package_download_require,
    worker_auth,
    worker_log_auth,
    worker_require_self,
)
from apps.workers.handoff import handoff_hot_sets, handoff_partitions_parse
from apps.workers.models import Worker
from apps.workers.schemas import (
    HandoffOut,
    HeartbeatIn,
    HeartbeatOut,
    LogBatchIn,
    LogIngestOut,
    LogLineIn,
    LogPageOut,
    LogQueryIn,
    ServiceLogQueryIn,
    ServiceWarmthOut,
    WorkerOut,
)
from apps.workers.selectors import LogPage
from apps.workers.services import MAX_BATCH_BYTES, MAX_BATCH_LINES, LogLineData
from apps.workers.warmth import ServiceWarmth, service_warmth

router = Router(tags=["workers"])
# The log routes keep their own heading on the OpenAPI page.
_LOGS = ["logs"]

# The body is parsed here, not by ninja, so that an oversized one is refused (413)
# before it is read; this describes it for the OpenAPI page.
_INGEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "lines": {
                            "type": "array",
                            "items": LogLineIn.model_json_schema(),
                            "maxItems": MAX_BATCH_LINES,
                        }
                    },
                    "required": ["lines"],
                    "additionalProperties": False,
                }
            }
        },
        "description": f"at most {MAX_BATCH_LINES} lines and {MAX_BATCH_BYTES} bytes",
    }
}
_READ_ERRORS = {404: ErrorOut, 422: ErrorOut}


@router.get(
    "/workers",
    auth=needs(Role.READ, ANY),
    response={200: list[WorkerOut], 403: ErrorOut, 404: ErrorOut},
)
def workers_list(request: HttpRequest, service: str | None = None) -> list[Worker]:
    """All workers of the services the caller may read, or those of one `service`."""
    access = access_of(request)
    if service:
        access.require(Role.READ, service)
        return list(selectors.worker_list(service=service_get(name=service)))
    return list(selectors.worker_list(readable=access.services_with(Role.READ)))


@router.get(
    "/services/{name}/workers",
    auth=needs(Role.READ),
    response={200: list[WorkerOut], 404: ErrorOut},
)
def services_workers(request: HttpRequest, name: str, all: bool = False) -> list[Worker]:
    """The service's running workers; with `all`, the stopped and dead ones too."""
    return list(selectors.worker_list(service=service_get(name=name), running_only=not all))


@router.get(
    "/services/{name}/warmth",
    auth=needs(Role.READ),
    response={200: ServiceWarmthOut, 403: ErrorOut, 404: ErrorOut},
)
def services_warmth(request: HttpRequest, name: str) -> ServiceWarmth:
    """What is warm where: each running worker's partitions, and the largest and most
    requested objects in its cache (at most 10 of each), from its last heartbeat."""
    return service_warmth(service=service_get(name=name))


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
    action = services.worker_heartbeat(worker=worker, state=stats.pop("state"), stats=stats)
    return HeartbeatOut(action=action)


@router.get(
    "/workers/{name}/handoff",
    auth=worker_auth,
    response={200: HandoffOut, 403: ErrorOut, 422: ErrorOut},
)
def workers_handoff(request: HttpRequest, name: str, partitions: str) -> HandoffOut:
    """The warm handoff: what the service's other workers last reported reading on
    `partitions` (comma-separated), which the calling worker has just gained and
    prefetches (its own credential, for itself only)."""
    worker = worker_require_self(request=request, name=name)
    parsed = handoff_partitions_parse(value=partitions)
    return HandoffOut(hot_sets=handoff_hot_sets(worker=worker, partitions=parsed))


@router.post(
    "/workers/{name}/logs",
    auth=worker_log_auth,
    response={201: LogIngestOut, 403: ErrorOut, 413: ErrorOut, 422: ErrorOut},
    openapi_extra=_INGEST_BODY,
    summary="Store a batch of the calling worker's log lines (worker credential)",
    tags=_LOGS,
)
def worker_logs_ingest(request: HttpRequest, name: str) -> Status[dict[str, int]]:
    worker = worker_require_self(request=request, name=name)
    batch = _log_batch(request)
    accepted = services.worker_log_ingest(
        worker=worker, lines=[LogLineData(**line.model_dump()) for line in batch.lines]
    )
    return Status(201, {"accepted": accepted})


@router.get(
    "/workers/{name}/logs",
    auth=needs(Role.READ, OBJECT),
    response={200: LogPageOut, 403: ErrorOut, **_READ_ERRORS},
    tags=_LOGS,
)
def worker_logs_read(request: HttpRequest, name: str, query: Query[LogQueryIn]) -> LogPage:
    """The worker's lines, oldest first: the newest `limit` without `since`, else those
    after `since`; pass `next_since` back as `since` for the next page."""
    worker = selectors.worker_get(name=name)
    access_of(request).require(Role.READ, worker.service.name)
    return selectors.worker_log_page(worker=worker, **query.model_dump())


@router.get(
    "/services/{name}/logs",
    auth=needs(Role.READ),
    response={200: LogPageOut, **_READ_ERRORS},
    tags=_LOGS,
)
def service_logs_read(request: HttpRequest, name: str, query: Query[ServiceLogQueryIn]) -> LogPage:
    """Like a worker's logs, merged across the service's workers (or only `worker`'s);
    each line names its worker."""
    service = service_get(name=name)
    filters = query.model_dump()
    worker_name = filters.pop("worker")
    worker = selectors.worker_get(name=worker_name, service=service) if worker_name else None
    return selectors.worker_log_page(service=service, worker=worker, **filters)


# The package route lives here, with the worker credential it takes (workers fetch their
# deployment's package); users may fetch it too.
_PACKAGE_RESPONSE = {
    "responses": {
        200: {
            "description": "the package's bytes; `X-Memrun-Sha256` is their sha256",
            "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}},
        }
    }
}


@router.get(
    "/deployments/{deployment_id}/package",
    auth=[*needs(Role.READ, OBJECT), worker_auth],
    response={403: ErrorOut, 404: ErrorOut, 503: ErrorOut},
    openapi_extra=_PACKAGE_RESPONSE,
    tags=["deployments"],
)
def deployments_package(request: HttpRequest, deployment_id: int) -> HttpResponse:
    """Stream the package archive of a deployment: for its service's workers (which
    verify it against `X-Memrun-Sha256`) and for users."""
    deployment = deployment_get_by_id(deployment_id=deployment_id)
    package_download_require(request=request, deployment=deployment)
    response = FileResponse(
        artifact_open(url=deployment.artifact_url),
        content_type="application/gzip",
        as_attachment=True,
        filename=f"{deployment.service.name}-v{deployment.version}.tar.gz",
    )
    response["Content-Length"] = str(deployment.size_bytes)
    response["X-Memrun-Sha256"] = deployment.sha256
    return response


def _log_batch(request: HttpRequest) -> LogBatchIn:
    size = int(request.META.get("CONTENT_LENGTH") or 0)
    if size > MAX_BATCH_BYTES:
        raise DomainError(
            f"the log batch is {size} bytes; the limit is {MAX_BATCH_BYTES}: send smaller batches",
            status=413,
            details={"size": size, "limit": MAX_BATCH_BYTES},
        )
    try:
        return LogBatchIn.model_validate_json(request.body)
    except pydantic.ValidationError as exc:
        # Located like ninja's own body errors, so the one handler names the field.
        raise ValidationError(
            [{**error, "loc": ("body", "payload", *error["loc"])} for error in exc.errors()]
        ) from None
