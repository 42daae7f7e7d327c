"""The secrets pages: the list (keys, fingerprint, users; never a value) with a set form
whose values are password inputs, and delete. For admins on all services (staff), through
apps/services/secretstore.py like the API and the CLI."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_POST

from apps.common.errors import DomainError
from apps.common.permissions import Role
from apps.services import secretstore, selectors
from apps.services.auth import ALL, requires
from apps.web.forms import SecretForm
from apps.web.pages import page

# Pair rows the set form offers; a secret with more is set with the CLI or the API.
FORM_ROWS = 6


@sensitive_post_parameters("value")
@page
@requires(Role.ADMIN, ALL)
def secrets(request: HttpRequest) -> HttpResponse:
    """The secrets; a POST sets one (all its pairs) and comes back here."""
    form = SecretForm(request.POST if request.method == "POST" else None)
    error: DomainError | None = None
    if request.method == "POST":
        try:
            if not form.is_valid():
                raise DomainError(
                    "invalid input: name: " + " ".join(form.errors["name"]), status=422
                )
            secret, rolled = secretstore.secret_set(
                name=form.cleaned_data["name"], values=form.pairs(), user=request.user
            )
        except DomainError as exc:
            error = exc
        else:
            said = f"secret {secret.name} set: {', '.join(secret.keys)}"
            if rolled:
                said += "; rolling out again: " + ", ".join(d.service.name for d in rolled)
            messages.success(request, said)
            return redirect(reverse("web:secrets"))
    context = {
        "form": form,
        "error": error,
        "secrets": selectors.secret_list(),
        # The keys typed are kept on a refusal, the values never are.
        "rows": form.key_rows(FORM_ROWS),
    }
    return render(request, "web/secrets.html", context, status=error.status if error else 200)


@require_POST
@page
@requires(Role.ADMIN, ALL)
def secret_delete(request: HttpRequest, name: str) -> HttpResponse:
    try:
        secretstore.secret_delete(name=name, user=request.user)
    except DomainError as exc:
        if exc.status == 403:
            raise
        messages.error(request, exc.message)
    else:
        messages.success(request, f"secret {name} deleted")
    return redirect(reverse("web:secrets"))
