"""The dead letters pages: a service's failed and timed-out requests from its DLQ topic,
one in full, and replaying one or a selection, through apps/services/deadletters.py."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from apps.common.errors import DomainError
from apps.common.permissions import Role
from apps.services import deadletters
from apps.services.auth import requires
from apps.services.selectors import service_get
from apps.web.pages import page

PAGE_LETTERS = 50


@require_GET
@page
@requires(Role.READ)
def dead_letters(request: HttpRequest, name: str) -> HttpResponse:
    service = service_get(name=name)
    before = request.GET.get("before") or None
    letters = deadletters.deadletter_list(service=service, limit=PAGE_LETTERS, before=before)
    replays = deadletters.deadletter_replay_list(service=service)[:20]
    return render(
        request,
        "web/dead_letters.html",
        {"service": service, "page": letters, "replays": replays, "before": before},
    )


@require_GET
@page
@requires(Role.READ)
def dead_letter(request: HttpRequest, name: str, dead_letter_id: str) -> HttpResponse:
    service = service_get(name=name)
    letter = deadletters.deadletter_get(service=service, dead_letter_id=dead_letter_id)
    replays = deadletters.deadletter_replay_list(service=service, dead_letter_id=letter.id)
    return render(
        request,
        "web/dead_letter.html",
        {"service": service, "letter": letter, "replays": replays},
    )


@require_POST
@page
@requires(Role.DEPLOY)
def dead_letters_replay(request: HttpRequest, name: str) -> HttpResponse:
    service = service_get(name=name)
    ids = request.POST.getlist("ids")
    if not ids:
        raise DomainError("tick the dead letters to replay first", status=422)
    replays = deadletters.deadletter_replay(
        service=service, dead_letter_ids=ids, actor=request.user
    )
    made = ", ".join(replay.request_id for replay in replays)
    messages.success(request, f"replayed {len(replays)} dead letter(s) as request(s) {made}")
    return redirect("web:dead-letters", name=service.name)
