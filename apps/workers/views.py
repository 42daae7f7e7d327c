"""`GET /metrics`: the dashboard's numbers for Prometheus (apps/workers/prometheus.py).

Who may scrape: a bearer API token with the read role on all services (`Authorization:
Bearer mr_...`, what Prometheus' `authorization` scrape setting sends; `memrun token
create --name prometheus --role read`) or a logged-in user with it (staff users have it).
Not open, not even on loopback: the numbers name every service and its load, and a proxy
in front would make every request look local.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from apps.common.permissions import Role, permission_denied
from apps.services.auth import access_of
from apps.services.tokens import apitoken_holder
from apps.workers.prometheus import registry


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
    holder = apitoken_holder(secret=secret.strip()) if scheme.lower() == "bearer" else None
    if holder is not None:
        request.memrun_access = holder.access  # type: ignore[attr-defined]
    elif not request.user.is_authenticated:
        response = JsonResponse(
            {
                "message": "authenticate: send an API token as `Authorization: Bearer mr_...` "
                "(create one with `memrun token create`), or log in as a staff user",
                "details": {},
            },
            status=401,
        )
        response["WWW-Authenticate"] = 'Bearer realm="memrun"'
        return response
    access = access_of(request)
    if not access.allows(Role.READ):
        refusal = permission_denied(access, Role.READ, None, what="read the metrics")
        return JsonResponse({"message": refusal.message, "details": refusal.details}, status=403)
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
