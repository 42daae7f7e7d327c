"""The provisioning API: how many workers a service runs (by hand, or by its autoscaling
policy), garbage collection, and a remote worker's first boot (the appliance's wheel, the
join)."""

from __future__ import annotations

from typing import Any

from django.http import FileResponse, HttpRequest
from ninja import Router

from apps.common.permissions import Role
from apps.provisioning.gc import gc_plan, gc_run
from apps.provisioning.joins import Joined, worker_join
from apps.provisioning.models import POLICY_FIELDS
from apps.provisioning.schemas import (
    AutoscaleIn,
    AutoscaleOut,
    GcIn,
    GcOut,
    JoinIn,
    JoinOut,
    ScaleIn,
)
from apps.provisioning.selectors import AutoscaleStatus, autoscale_status_get
from apps.provisioning.services import autoscale_policy_set, service_scale
from apps.provisioning.wheel import appliance_wheel
from apps.services.auth import ALL, needs
from apps.services.models import Service
from apps.services.schemas import ErrorOut, ServiceOut
from apps.services.selectors import service_get

# Tagged with the workers routes: scaling is read beside them on the OpenAPI page.
router = Router(tags=["workers"])


@router.post(
    "/services/{name}/scale",
    auth=needs(Role.DEPLOY),
    response={200: ServiceOut, 403: ErrorOut, 404: ErrorOut, 422: ErrorOut},
)
def services_scale(request: HttpRequest, name: str, payload: ScaleIn) -> Service:
    """Set how many workers the service runs (within its min and max); reconcile starts
    or drains workers to match."""
    return service_scale(service=service_get(name=name), workers=payload.workers, by=request.auth)


@router.get(
    "/services/{name}/autoscale",
    auth=needs(Role.READ),
    response={200: AutoscaleOut, 403: ErrorOut, 404: ErrorOut},
)
def services_autoscale_get(request: HttpRequest, name: str) -> dict[str, Any]:
    """The service's autoscaling policy and its recent decisions, each with its reason
    and the lag and load it saw."""
    return _autoscale_out(autoscale_status_get(service=service_get(name=name)))


@router.put(
    "/services/{name}/autoscale",
    auth=needs(Role.DEPLOY),
    response={200: AutoscaleOut, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut, 422: ErrorOut},
)
def services_autoscale_set(request: HttpRequest, name: str, payload: AutoscaleIn) -> dict[str, Any]:
    """Turn autoscaling on or off, or change its range, thresholds (lag per worker, and
    max_queue_seconds: null turns it off), windows and cooldowns (only the fields sent
    change)."""
    service = service_get(name=name)
    autoscale_policy_set(service=service, by=request.auth, **payload.changes())
    return _autoscale_out(autoscale_status_get(service=service_get(name=name)))


def _autoscale_out(status: AutoscaleStatus) -> dict[str, Any]:
    policy = status.policy
    return {
        "service": status.service,
        "desired_workers": status.desired_workers,
        "decisions": status.decisions,
        **{field: getattr(policy, field) for field in POLICY_FIELDS},
    }


@router.post(
    "/gc", auth=needs(Role.ADMIN, ALL), response={200: GcOut, 403: ErrorOut}, tags=["operations"]
)
def gc(request: HttpRequest, payload: GcIn) -> dict[str, Any]:
    """Free what memrun stores and no longer needs: packages of deleted services and of
    versions beyond the retention count (never a live, rolling or running one), stopped
    local workers' folders and logs, half-built venvs. With `dry_run`, only say what."""
    plan = gc_plan()
    done = plan if payload.dry_run else gc_run(plan=plan)
    return {
        "dry_run": payload.dry_run,
        "kinds": [
            {"kind": kind, "count": count, "size_bytes": size}
            for kind, (count, size) in done.totals().items()
        ],
        "items": done.items,
        "size_bytes": sum(item.size_bytes for item in done.items),
    }


@router.get(
    "/bootstrap/wheel",
    auth=None,
    response={200: None, 503: ErrorOut},
    tags=["operations"],
)
def bootstrap_wheel(request: HttpRequest) -> FileResponse:
    """The wheel of the memrun this appliance runs, which remote workers install at first
    boot. Public: it is the open-source package, and its user-data pins its sha256
    (also in `X-Memrun-Sha256`)."""
    wheel = appliance_wheel()
    response = FileResponse(
        wheel.path.open("rb"),
        content_type="application/zip",
        as_attachment=True,
        filename=wheel.filename,
    )
    response["X-Memrun-Sha256"] = wheel.sha256
    return response


@router.post(
    "/workers/join",
    auth=None,
    response={200: JoinOut, 403: ErrorOut, 422: ErrorOut, 429: ErrorOut, 503: ErrorOut},
)
def workers_join(request: HttpRequest, payload: JoinIn) -> Joined:
    """A remote worker's first boot: exchange its single-use join token, with its server
    id, for its environment (its own credential, its service's settings). A used,
    expired or unknown token, or a server that is not the worker's, is a 403; too many
    refusals from one address, a 429."""
    return worker_join(
        token=payload.token,
        server_id=payload.server_id,
        client=str(request.META.get("REMOTE_ADDR") or "unknown"),
    )
