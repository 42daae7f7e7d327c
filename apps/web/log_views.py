"""Worker log pages: one worker's, or a service's merged (each line names its worker).
A page is the newest lines before a time (`until`), never the whole log; follow mode asks
for what came after the page's cursor every few seconds; a download gives the lines
shown as text."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from apps.common.errors import DomainError
from apps.common.permissions import Role
from apps.services.auth import OBJECT, access_of, requires
from apps.services.models import Service
from apps.services.selectors import service_get
from apps.web.forms import LogFilterForm
from apps.web.pages import page
from apps.workers import selectors as log_selectors
from apps.workers.models import Worker

PAGE_LINES = 200


@require_GET
@page
@requires(Role.READ)
def service_logs(request: HttpRequest, name: str) -> HttpResponse:
    service = service_get(name=name)
    return _logs(request, service=service, worker=None, title=f"{service.name}: all workers")


@require_GET
@page
@requires(Role.READ, OBJECT)
def worker_logs(request: HttpRequest, name: str) -> HttpResponse:
    worker = log_selectors.worker_get(name=name)
    access_of(request).require(Role.READ, worker.service.name)
    return _logs(request, service=worker.service, worker=worker, title=f"worker {worker.name}")


def _logs(
    request: HttpRequest, *, service: Service, worker: Worker | None, title: str
) -> HttpResponse:
    form = LogFilterForm(request.GET)
    if not form.is_valid():
        raise DomainError(f"invalid filter: {form.errors.as_text()}", status=422)
    filters = {key: value or None for key, value in form.cleaned_data.items()}
    log_page = log_selectors.worker_log_page(
        worker=worker, service=None if worker else service, limit=PAGE_LINES, **filters
    )
    context = {
        "service": service,
        "worker": worker,
        "title": title,
        "form": form,
        "page": log_page,
        "filters": {k: v for k, v in filters.items() if v and k not in ("since", "until")},
    }
    if "download" in request.GET:
        response = render(request, "web/logs.txt", context, content_type="text/plain")
        filename = (worker.name if worker else service.name) + "-logs.txt"
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        return response
    if filters["since"] is not None:
        return render(request, "web/_log_follow.html", context)
    return render(request, "web/logs.html", context)
