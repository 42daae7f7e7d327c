"""`GET /metrics`: the dashboard's numbers for Prometheus (apps/workers/prometheus.py).

Who may scrape: a bearer API token (`Authorization: Bearer mr_...`, what Prometheus'
`authorization` scrape setting sends) or a logged-in staff user. Not open, not even on
loopback: the numbers name every service and its load, and a proxy in front would make
every request look local.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from apps.services.services import apitoken_authenticate
from apps.workers.prometheus import registry


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    if not _may_scrape(request):
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
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def _may_scrape(request: HttpRequest) -> bool:
    scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and secret:
        return apitoken_authenticate(secret=secret.strip()) is not None
    return bool(request.user.is_authenticated and request.user.is_staff)
