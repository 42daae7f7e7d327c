"""The web UI's pages. Thin: parse the form, call the same services and selectors as the
API, render. Rules, permissions and errors live in the services layer."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from asgiref.sync import async_to_sync
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.csrf import csrf_failure
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_GET, require_POST

from apps.common.errors import DomainError
from apps.common.permissions import Grant, Role
from apps.provisioning.selectors import autoscale_status_get
from apps.provisioning.services import autoscale_policy_set
from apps.provisioning.services import service_scale as scale_service
from apps.services import deployments, invoke, selectors, sources, uploads
from apps.services.auth import OBJECT, SELF, access_of, caller_of, csrf_header_ok, requires
from apps.services.tokens import apitoken_create, apitoken_revoke
from apps.web import selectors as page_selectors
from apps.web.forms import (
    AutoscaleForm,
    DeployForm,
    DiffForm,
    RollbackForm,
    ScaleForm,
    TokenForm,
)
from apps.web.pages import error_page, page
from apps.workers.stats import service_dashboard_list, service_stats_get
from memrun.wire.config import SETTINGS


def _form_error(
    form: AutoscaleForm | DeployForm | DiffForm | RollbackForm | ScaleForm | TokenForm,
) -> DomainError:
    summary = "; ".join(
        f"{name}: {' '.join(errors)}" if name != "__all__" else " ".join(errors)
        for name, errors in form.errors.items()
    )
    return DomainError(f"invalid input: {summary}", status=422)


@require_GET
@page
@requires(Role.READ, OBJECT)  # filtered to the services it may read
def dashboard(request: HttpRequest) -> HttpResponse:
    return render(request, "web/dashboard.html", _dashboard_context(request))


@require_GET
@page
@requires(Role.READ, OBJECT)
def dashboard_live(request: HttpRequest) -> HttpResponse:
    return render(request, "web/_dashboard_services.html", _dashboard_context(request))


def _dashboard_context(request: HttpRequest) -> dict[str, object]:
    return {
        "services": service_dashboard_list(readable=access_of(request).services_with(Role.READ)),
        "appliance_url": request.build_absolute_uri("/").rstrip("/"),
    }


@require_GET
@page
@requires(Role.READ)
def service_detail(request: HttpRequest, name: str) -> HttpResponse:
    service = selectors.service_get(name=name, with_live_deployment=True)
    history = list(page_selectors.service_deployments(service=service))
    config = service.config
    return render(
        request,
        "web/service.html",
        {
            "service": service,
            # The live deployment's settings, as a person writes them (none before a deploy).
            "settings": [(s.arg, s.show(getattr(config, s.field))) for s in SETTINGS]
            if config
            else [],
            "bounds": (config.min_workers, config.max_workers) if config else None,
            "stats": service_stats_get(service=service),
            "finished_workers": page_selectors.service_finished_workers(service=service),
            "changes": page_selectors.service_changes(service=service),
            "deployments": history,
            "requests": page_selectors.service_recent_requests(service=service),
            "diff_default": (history[1].version, history[0].version) if len(history) > 1 else None,
        },
    )


@require_GET
@page
@requires(Role.READ)
def service_diff(request: HttpRequest, name: str) -> HttpResponse:
    service = selectors.service_get(name=name)
    form = DiffForm(request.GET)
    if not form.is_valid():
        raise _form_error(form)
    left = selectors.deployment_get(service=service, version=form.cleaned_data["a"])
    right = selectors.deployment_get(service=service, version=form.cleaned_data["b"])
    rows = sources.source_diff(
        left=sources.deployment_source(deployment=left),
        right=sources.deployment_source(deployment=right),
    )
    return render(
        request,
        "web/diff.html",
        {"service": service, "left": left, "right": right, "rows": rows},
    )


@require_POST
@page
@requires(Role.DEPLOY)
def service_rollback(request: HttpRequest, name: str) -> HttpResponse:
    service = selectors.service_get(name=name)
    form = RollbackForm(request.POST)
    if not form.is_valid():
        raise _form_error(form)
    deployment = deployments.deployment_rollback(
        service=service, version=form.cleaned_data["version"], created_by=request.user
    )
    return redirect("web:rollout", deployment_id=deployment.pk)


@require_POST
@page
@requires(Role.DEPLOY)
def service_scale(request: HttpRequest, name: str) -> HttpResponse:
    service = selectors.service_get(name=name)
    form = ScaleForm(request.POST)
    if not form.is_valid():
        raise _form_error(form)
    scale_service(service=service, workers=form.cleaned_data["workers"], by=request.user)
    messages.success(request, f"{service.name} scales to {form.cleaned_data['workers']} worker(s)")
    return redirect("web:service", name=service.name)


@require_GET
@page
@requires(Role.READ)
def service_autoscale(request: HttpRequest, name: str) -> HttpResponse:
    """The policy and its recent decisions (the service page loads it on its own)."""
    service = selectors.service_get(name=name, with_live_deployment=True)
    return render(
        request,
        "web/_autoscale.html",
        {"service": service, "autoscale": autoscale_status_get(service=service)},
    )


@require_POST
@page
@requires(Role.DEPLOY)
def service_autoscale_set(request: HttpRequest, name: str) -> HttpResponse:
    service = selectors.service_get(name=name)
    form = AutoscaleForm(request.POST)
    if not form.is_valid():
        raise _form_error(form)
    policy = autoscale_policy_set(service=service, by=request.user, **form.cleaned_data)
    state = "on" if policy.enabled else "off"
    messages.success(request, f"autoscaling of {service.name} is {state}")
    return redirect("web:service", name=service.name)


@csrf_exempt
@requires(Role.DEPLOY, OBJECT)  # _deploy checks it on the service in the form
def deploy(request: HttpRequest) -> HttpResponse:
    """The deploy form. Its script sends the CSRF token in the X-CSRFToken header, which
    is checked before a byte of the upload is read; then the upload streams to disk under
    the size cap (set up before anything reads the body)."""
    if request.method == "POST" and request.user.is_authenticated:
        if not csrf_header_ok(request):
            return csrf_failure(request, reason="the upload came without an X-CSRFToken header")
        try:
            uploads.upload_prepare(request)
        except DomainError as exc:
            return error_page(request, exc)
    return _deploy(request)


@page
@requires(Role.DEPLOY, OBJECT)
@csrf_protect
def _deploy(request: HttpRequest) -> HttpResponse:
    can_deploy = access_of(request).allows_any(Role.DEPLOY)
    if request.method != "POST":
        form = DeployForm(initial={"service": request.GET.get("service", "")})
        return render(request, "web/deploy.html", {"form": form, "can_deploy": can_deploy})
    form = DeployForm(request.POST)
    try:
        if not form.is_valid():
            raise _form_error(form)
        access = access_of(request)
        access.require(Role.DEPLOY, form.cleaned_data["service"], what="deploy it")
        with _received(request, form) as upload:
            deployment = deployments.deployment_upload(
                service_name=form.cleaned_data["service"],
                upload=upload,
                created_by=request.user,
                overrides=form.overrides(),
                fleet=form.fleet(),
                access=access,
            )
    except DomainError as exc:
        context = {"form": form, "error": exc, "can_deploy": can_deploy}
        return render(request, "web/deploy.html", context, status=exc.status)
    return redirect("web:rollout", deployment_id=deployment.pk)


@contextlib.contextmanager
def _received(request: HttpRequest, form: DeployForm) -> Iterator[uploads.Upload]:
    message = form.cleaned_data["message"]
    if request.FILES.getlist(uploads.UPLOAD_FIELD):
        with uploads.upload_receive(request=request, message=message) as upload:
            yield upload
    elif form.cleaned_data["source"].strip():
        with uploads.upload_from_text(text=form.cleaned_data["source"], message=message) as upload:
            yield upload
    else:
        raise DomainError(
            "nothing to deploy: drop or pick a handler .py or a package .tar.gz, or paste "
            "the handler's code",
            status=400,
            details={"fields": {uploads.UPLOAD_FIELD: ["required"]}},
        )


@require_GET
@page
@requires(Role.READ, OBJECT)
def rollout(request: HttpRequest, deployment_id: int) -> HttpResponse:
    return render(request, "web/rollout.html", _rollout_context(request, deployment_id))


@require_GET
@page
@requires(Role.READ, OBJECT)
def rollout_live(request: HttpRequest, deployment_id: int) -> HttpResponse:
    return render(request, "web/_rollout_lines.html", _rollout_context(request, deployment_id))


def _rollout_context(request: HttpRequest, deployment_id: int) -> dict[str, object]:
    deployment = selectors.deployment_get_by_id(deployment_id=deployment_id)
    access_of(request).require(Role.READ, deployment.service.name)
    return {
        "deployment": deployment,
        "rollout": page_selectors.deployment_rollout(deployment=deployment),
    }


@require_GET
@page
@requires(Role.READ, OBJECT)
def request_lookup(request: HttpRequest) -> HttpResponse:
    request_id = request.GET.get("id", "").strip()[:100]
    context: dict[str, object] = {"request_id": request_id}
    if request_id:
        access = access_of(request)
        try:
            # The same read as the async API's (a sync page waits for one Redis round trip).
            context["state"] = async_to_sync(invoke.request_get)(
                request_id=request_id, access=access, caller=caller_of(request)
            )
        except DomainError as exc:
            if exc.status != 404:
                raise
            context["missing"] = exc.message
        context["lines"] = page_selectors.request_log_lines(
            request_id=request_id, readable=access.services_with(Role.READ)
        )
    return render(request, "web/request.html", context)


@page
@requires(Role.ADMIN, SELF)
def tokens(request: HttpRequest) -> HttpResponse:
    """The user's tokens with their grants; a POST creates one (with the user's grants,
    or one role on one service or on all), whose secret this answer shows once."""
    access = access_of(request)
    form = TokenForm(request.POST if request.method == "POST" else None)
    context: dict[str, object] = {"form": form, "access": sorted(access.grants)}
    error: DomainError | None = None
    if request.method == "POST":
        try:
            if not form.is_valid():
                raise _form_error(form)
            role, service = form.cleaned_data["role"], form.cleaned_data["service"] or None
            grants = [Grant(service, Role(role))] if role else None
            token, secret = apitoken_create(
                user=request.user, name=form.cleaned_data["name"], grants=grants, by=access
            )
        except DomainError as exc:
            error = exc
        else:
            context |= {"created": token, "secret": secret, "form": TokenForm()}
    tokens = [
        (token, sorted(selectors.apitoken_grants(token=token)))
        for token in selectors.apitoken_list(user=request.user)
    ]
    context |= {
        "tokens": tokens,
        "services": selectors.service_list(access=access).values_list("name", flat=True),
        "roles": list(Role),
        "error": error,
    }
    return render(request, "web/tokens.html", context, status=error.status if error else 200)


@require_POST
@page
@requires(Role.ADMIN, SELF)
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    token = selectors.apitoken_get(user=request.user, token_id=token_id)
    apitoken_revoke(token=token)
    messages.success(request, f"token {token.name} revoked")
    return redirect(reverse("web:tokens"))
