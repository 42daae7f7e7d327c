"""The provisioning API: how many workers a service runs."""

from __future__ import annotations

from django.http import HttpRequest
from ninja import Router

from apps.provisioning.schemas import ScaleIn
from apps.provisioning.services import service_scale
from apps.services.models import Service
from apps.services.schemas import ErrorOut, ServiceOut
from apps.services.selectors import service_get

# Tagged with the workers routes: scaling is read beside them on the OpenAPI page.
router = Router(tags=["workers"])


@router.post("/services/{name}/scale", response={200: ServiceOut, 404: ErrorOut, 422: ErrorOut})
def services_scale(request: HttpRequest, name: str, payload: ScaleIn) -> Service:
    """Set how many workers the service runs (within its min and max); reconcile starts
    or drains workers to match."""
    return service_scale(service=service_get(name=name), workers=payload.workers)
