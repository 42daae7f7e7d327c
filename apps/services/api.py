"""The services API: health, services, their deployments, and the caller's own API tokens."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from ninja import Query, Router, Status

from apps.common.permissions import Grant, Role, role_parse
from apps.services import deadletters, deployments, invoke, selectors, services, tokens, uploads
from apps.services.auth import (
    ALL,
    ANY,
    OBJECT,
    SELF,
    ApiTokenAuth,
    Need,
    SessionCsrfHeaderAuth,
    access_of,
    caller_of,
    needs,
    needs_async,
)
from apps.services.health import health_check
from apps.services.models import ApiToken, Deployment, Service
from apps.services.schemas import (
    BatchOut,
    CredentialsRotatedOut,
    DeadLetterDetailOut,
    DeadLetterPageOut,
    DeploymentOut,
    ErrorOut,
    HealthComponentOut,
    HealthOut,
    ReplayIn,
    ReplayOut,
    RequestOut,
    RollbackIn,
    ServiceIn,
    ServiceOut,
    ServicePatch,
    TokenCreatedOut,
    TokenIn,
    TokenOut,
)

router = Router(tags=["services"])

_WRITE_ERRORS = {409: ErrorOut, 422: ErrorOut}


@router.get("/health", auth=None, response={200: HealthOut, 503: HealthOut}, tags=["health"])
def health(request: HttpRequest) -> Status[dict[str, object]]:
    report = health_check()
    down = [name for name, probe in report.items() if not probe.ok]
    body = {
        "ok": not down,
        "message": f"unreachable: {', '.join(down)}" if down else "all components reachable",
        "details": {
            name: HealthComponentOut(ok=p.ok, detail=p.detail, elapsed_ms=p.elapsed_ms)
            for name, p in report.items()
        },
    }
    return Status(503 if down else 200, body)


@router.get("/services", auth=needs(Role.READ, ANY), response=list[ServiceOut])
def services_list(request: HttpRequest) -> list[Service]:
    """The services the caller may read."""
    return list(selectors.service_list(access=access_of(request)))


@router.post(
    "/services",
    auth=needs(Role.ADMIN, ALL),
    response={201: ServiceOut, 503: ErrorOut, **_WRITE_ERRORS},
    summary="Create a service before its first deploy: name and fleet only",
)
def services_create(request: HttpRequest, payload: ServiceIn) -> Status[Service]:
    """Creates the service and its Kafka topics, with no deployment. Its settings come
    with its code: deploy it (POST /services/{name}/deployments), then PATCH them."""
    return Status(201, services.service_create(**payload.model_dump()))


@router.get("/services/{name}", auth=needs(Role.READ), response={200: ServiceOut, 404: ErrorOut})
def services_get(request: HttpRequest, name: str) -> Service:
    return selectors.service_get(name=name, with_live_deployment=True)


@router.patch(
    "/services/{name}",
    auth=needs(Role.DEPLOY),
    response={200: ServiceOut, 404: ErrorOut, **_WRITE_ERRORS},
    summary="Change the fleet, or settings (a new deployment of the live package)",
)
def services_update(request: HttpRequest, name: str, payload: ServicePatch) -> Service:  # type: ignore[valid-type]
    """A changed setting makes a new deployment of the live package with those settings,
    recorded with a message and rolled out like a deploy (409 before the first deploy:
    deploy first); `desired_workers`, `provider`, `server_type` and `location` change the
    service itself."""
    return deployments.service_patch(
        service=selectors.service_get(name=name),
        data=payload.model_dump(exclude_unset=True),  # type: ignore[attr-defined]
        created_by=request.auth,
        access=access_of(request),
    )


@router.delete(
    "/services/{name}", auth=needs(Role.ADMIN), response={204: None, 404: ErrorOut, 409: ErrorOut}
)
def services_delete(request: HttpRequest, name: str) -> Status[None]:
    services.service_delete(service=selectors.service_get(name=name))
    return Status(204, None)


_INVOKE_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object"}}},
        "description": "the payload handed to the service's handler; its sticky key fields "
        "pick the worker",
    }
}
_INVOKE_RESPONSES = {
    200: RequestOut,
    202: RequestOut,
    400: ErrorOut,
    404: ErrorOut,
    409: ErrorOut,
    413: ErrorOut,
    422: ErrorOut,
    429: ErrorOut,
    503: ErrorOut,
}


def _invoke_response(status: int, body: dict[str, Any]) -> JsonResponse:
    # Built here rather than validated against RequestOut by ninja: that validation was
    # the largest single cost of an invoke. `RequestState.to_api` has RequestOut's shape
    # (tests/api/test_invoke_frontdoor.py checks it against the schema).
    return JsonResponse(body, status=status)


@router.post(
    "/services/{name}/invoke",
    auth=needs_async(Role.INVOKE),
    response=_INVOKE_RESPONSES,
    openapi_extra=_INVOKE_BODY,
    tags=["invoke"],
    summary="Run a payload through the service; wait up to `wait` seconds for its answer",
)
async def services_invoke(
    request: HttpRequest, name: str, wait: float = 30.0, queue: bool = False
) -> JsonResponse:
    """200 with the outcome when it came within `wait` seconds, else 202 with the request
    id to poll at GET /requests/{id}: an expired wait never loses the request. 202 at once
    when too many callers already wait (on this service or with this token); 429 with
    Retry-After when the service's backlog is full. A service that cannot serve now (never
    deployed, no ready worker) answers 409 unless `queue` is true."""
    state = await invoke.service_invoke(
        name=name,
        body=request.body,
        wait_s=invoke.wait_seconds(wait),
        queue=queue,
        caller=caller_of(request),
    )
    return _invoke_response(invoke.invoke_status([state]), state.to_api())


_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"type": "array", "items": {}}}},
        "description": "a JSON array of payloads; each is routed by its own sticky key",
    }
}


@router.post(
    "/services/{name}/invoke-batch",
    auth=needs_async(Role.INVOKE),
    response={**_INVOKE_RESPONSES, 200: BatchOut, 202: BatchOut},
    openapi_extra=_BATCH_BODY,
    tags=["invoke"],
    summary="Run many payloads; wait up to `wait` seconds for all of their answers",
)
async def services_invoke_batch(
    request: HttpRequest, name: str, wait: float = 30.0, queue: bool = False
) -> JsonResponse:
    """The outcomes in the payloads' order: 200 when all are done, else 202 with the
    request ids of those still running (`status` "queued"). Limits as for invoke; a
    payload that lacks its sticky key fields refuses the whole batch (422 with its index)."""
    payloads = invoke.batch_payloads(request.body)
    states = await invoke.service_invoke_batch(
        name=name,
        payloads=payloads,
        wait_s=invoke.wait_seconds(wait),
        queue=queue,
        caller=caller_of(request),
    )
    return _invoke_response(
        invoke.invoke_status(states), {"results": [state.to_api() for state in states]}
    )


@router.get(
    "/requests/{request_id}",
    auth=needs_async(Role.READ, OBJECT),
    response={200: RequestOut, 404: ErrorOut, 422: ErrorOut, 503: ErrorOut},
    tags=["invoke"],
)
async def requests_get(request: HttpRequest, request_id: str, wait: float = 0.0) -> JsonResponse:
    """The request's state; with `wait`, block up to that long for its outcome. For a
    caller with the read role on the request's service, or the caller that submitted it."""
    state = await invoke.request_wait(
        request_id=request_id,
        wait_s=invoke.wait_seconds(wait),
        access=access_of(request),
        caller=caller_of(request),
    )
    return _invoke_response(200, state.to_api())


_EVENTS_RESPONSE = {
    "responses": {
        "200": {
            "description": (
                "text/event-stream: `event: queued` or `event: done` first (data: the "
                "request's state, as GET /requests/{id} answers it), a `: waiting` comment "
                "every 15 s, then `event: done` with the outcome, or `event: timeout` once "
                "`wait` seconds have passed (reconnect to go on following)"
            ),
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    }
}


@router.get(
    "/requests/{request_id}/events",
    auth=needs_async(Role.READ, OBJECT),
    response={403: ErrorOut, 404: ErrorOut, 422: ErrorOut, 503: ErrorOut},
    openapi_extra=_EVENTS_RESPONSE,
    tags=["invoke"],
    summary="Follow a request as server-sent events until its outcome",
)
async def requests_events(
    request: HttpRequest, request_id: str, wait: float = 300.0
) -> StreamingHttpResponse:
    """Instead of polling: one connection that ends with the outcome. For the callers that
    may poll the request (GET /requests/{id})."""
    events = await invoke.request_events(
        request_id=request_id,
        follow_s=invoke.follow_seconds(wait),
        access=access_of(request),
        caller=caller_of(request),
    )
    response = StreamingHttpResponse(events, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # a proxy in front must not hold the events back
    return response


@router.get(
    "/services/{name}/dead-letters",
    auth=needs(Role.READ),
    response={200: DeadLetterPageOut, 404: ErrorOut, 422: ErrorOut, 503: ErrorOut},
    tags=["dead letters"],
)
def deadletters_list(
    request: HttpRequest,
    name: str,
    limit: int = Query(50, ge=1, le=deadletters.PAGE_MAX),
    before: str | None = None,
) -> deadletters.DeadLetterPage:
    """The service's failed and timed-out requests on `memrun.dlq.{name}`, newest first;
    pass `next_cursor` as `before` for the next page."""
    service = selectors.service_get(name=name)
    return deadletters.deadletter_list(service=service, limit=limit, before=before)


# Before the {dead_letter_id} route, which would otherwise match "replay".
@router.post(
    "/services/{name}/dead-letters/replay",
    auth=needs(Role.DEPLOY),
    response={201: list[ReplayOut], 403: ErrorOut, 404: ErrorOut, 422: ErrorOut, 503: ErrorOut},
    tags=["dead letters"],
    summary="Run dead letters again: same key and payload, attempt + 1, as new requests",
)
def deadletters_replay(request: HttpRequest, name: str, payload: ReplayIn) -> Status[list]:
    """Every id is checked before anything is produced (an unknown one is a 404). Each
    replay is recorded with who and when; poll the new `request_id` for its outcome."""
    replays = deadletters.deadletter_replay(
        service=selectors.service_get(name=name),
        dead_letter_ids=payload.ids,
        actor=request.auth,
    )
    return Status(201, replays)


@router.get(
    "/services/{name}/dead-letters/{dead_letter_id}",
    auth=needs(Role.READ),
    response={200: DeadLetterDetailOut, 404: ErrorOut, 503: ErrorOut},
    tags=["dead letters"],
)
def deadletters_get(request: HttpRequest, name: str, dead_letter_id: str) -> dict[str, Any]:
    """One dead letter with its payload, traceback and the replays made of it."""
    service = selectors.service_get(name=name)
    letter = deadletters.deadletter_get(service=service, dead_letter_id=dead_letter_id)
    replays = deadletters.deadletter_replay_list(service=service, dead_letter_id=letter.id)
    return {**letter.__dict__, "replays": list(replays)}


@router.get("/tokens", auth=needs(Role.ADMIN, SELF), response=list[TokenOut], tags=["tokens"])
def tokens_list(request: HttpRequest, all: bool = False) -> list[dict[str, Any]]:
    """The caller's user's active tokens with their grants; with `all`, every user's
    (admin on all services)."""
    if all:
        access_of(request).require(Role.ADMIN, what="list every user's tokens")
    tokens = selectors.apitoken_list(user=None if all else request.user)  # type: ignore[arg-type]
    return [_token_out(token) for token in tokens]


@router.post(
    "/tokens",
    auth=needs(Role.ADMIN, SELF),
    response={201: TokenCreatedOut, 403: ErrorOut, 404: ErrorOut, **_WRITE_ERRORS},
    tags=["tokens"],
)
def tokens_create(request: HttpRequest, payload: TokenIn) -> Status[dict[str, Any]]:
    """A token for the caller's user (or, for an admin on all services, for `user`),
    holding `grants` (default: a copy of its user's). A token never holds more than its
    user, nor more than the caller. The secret is in this answer only."""
    access = access_of(request)
    owner = request.user
    if payload.user is not None and payload.user != request.user.get_username():
        access.require(Role.ADMIN, what="create tokens for other users")
        owner = selectors.user_get(username=payload.user)
    grants = (
        None
        if payload.grants is None
        else [Grant(g.service, role_parse(g.role)) for g in payload.grants]
    )
    token, secret = tokens.apitoken_create(
        user=owner,  # type: ignore[arg-type]
        name=payload.name,
        grants=grants,
        by=access,
    )
    return Status(201, {**_token_out(token), "secret": secret})


@router.delete(
    "/tokens/{token_id}",
    auth=needs(Role.ADMIN, SELF),
    response={204: None, 403: ErrorOut, 404: ErrorOut},
    tags=["tokens"],
)
def tokens_revoke(request: HttpRequest, token_id: int, all: bool = False) -> Status[None]:
    """Revoke one of the caller's user's tokens; with `all`, any user's (admin on all
    services)."""
    if all:
        access_of(request).require(Role.ADMIN, what="revoke other users' tokens")
    user = None if all else request.user
    tokens.apitoken_revoke(token=selectors.apitoken_get(user=user, token_id=token_id))  # type: ignore[arg-type]
    return Status(204, None)


def _token_out(token: ApiToken) -> dict[str, Any]:
    return {
        "id": token.pk,
        "name": token.name,
        "user": token.user.get_username(),
        "prefix": token.prefix,
        "created_at": token.created_at,
        "last_used_at": token.last_used_at,
        "grants": [
            {"service": grant.service, "role": str(grant.role)}
            for grant in sorted(selectors.apitoken_grants(token=token))
        ],
    }


_DEPLOY = Need(Role.DEPLOY)


class _UploadSessionAuth(SessionCsrfHeaderAuth):
    """The browser's upload form: the CSRF check (header only) passes before streaming
    to disk under the size cap is set up, so a forged request never writes a byte."""

    def authenticate(self, request: HttpRequest, key: str | None) -> Any:
        user = super().authenticate(request, key)
        if user is not None:
            uploads.upload_prepare(request)
        return user


_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "description": "a package built by `memrun deploy`, or a single handler .py that "
        "the server packages itself",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [uploads.UPLOAD_FIELD],
                    "properties": {
                        uploads.UPLOAD_FIELD: {"type": "string", "format": "binary"},
                        "message": {"type": "string"},
                    },
                }
            },
            "application/gzip": {"schema": {"type": "string", "format": "binary"}},
            "text/x-python": {"schema": {"type": "string"}},
        },
    }
}
_UPLOAD_RESPONSES = {
    201: DeploymentOut,
    **{status: ErrorOut for status in (400, 403, 409, 411, 413, 415, 422, 503)},
}


@router.post(
    "/services/{name}/deployments",
    auth=[ApiTokenAuth(_DEPLOY), _UploadSessionAuth(_DEPLOY)],
    response=_UPLOAD_RESPONSES,
    openapi_extra=_UPLOAD_BODY,
    tags=["deployments"],
    summary="Deploy a package or a handler .py; creates the service on its first deploy",
)
def deployments_create(
    request: HttpRequest,
    name: str,
    message: str = "",
    provider: str = Query("", max_length=16, description="local or hetzner; empty: unchanged"),
    server_type: str = Query(
        "", max_length=32, description="e.g. cpx41; empty: unchanged (none: the cheapest fit)"
    ),
    location: str = Query("", max_length=32, description="e.g. fsn1; empty: unchanged"),
) -> Status[Deployment]:
    """The body is checked before anything is stored; every refusal is a 4xx whose
    `details.reason` names the problem. Identical bytes make a new version (a redeploy)
    but are stored once. `provider`, `server_type` and `location` set the service's
    machines, checked against the new settings' memory and disk (an unknown type or
    location, or one too small, is a 422)."""
    deployments.service_name_check(name)
    fleet = {"provider": provider, "server_type": server_type, "location": location}
    with uploads.upload_receive(request=request, message=message) as upload:
        deployment = deployments.deployment_upload(
            service_name=name,
            upload=upload,
            created_by=request.auth,
            fleet=fleet,
            access=access_of(request),
        )
    return Status(201, deployment)


@router.get(
    "/services/{name}/deployments",
    auth=needs(Role.READ),
    response={200: list[DeploymentOut], 404: ErrorOut, 422: ErrorOut},
    tags=["deployments"],
)
def deployments_list(
    request: HttpRequest, name: str, limit: int = Query(50, ge=1, le=500)
) -> list[Deployment]:
    """The service's deployments, newest first."""
    service = selectors.service_get(name=name)
    return list(selectors.deployment_list(service=service)[:limit])


@router.get(
    "/services/{name}/deployments/{version}",
    auth=needs(Role.READ),
    response={200: DeploymentOut, 404: ErrorOut},
    tags=["deployments"],
)
def deployments_get(request: HttpRequest, name: str, version: int) -> Deployment:
    return selectors.deployment_get(service=selectors.service_get(name=name), version=version)


@router.post(
    "/services/{name}/rollback",
    auth=needs(Role.DEPLOY),
    response={
        201: DeploymentOut,
        **{status: ErrorOut for status in (403, 404, 409, 422, 503)},
    },
    tags=["deployments"],
    summary="Deploy an earlier version's package again, as a new version",
)
def deployments_rollback(
    request: HttpRequest, name: str, payload: RollbackIn
) -> Status[Deployment]:
    deployment = deployments.deployment_rollback(
        service=selectors.service_get(name=name),
        version=payload.version,
        message=payload.message,
        created_by=request.auth,
    )
    return Status(201, deployment)


@router.post(
    "/services/{name}/rotate-credentials",
    auth=needs(Role.ADMIN),
    response={
        200: CredentialsRotatedOut,
        **{status: ErrorOut for status in (403, 404, 409, 422, 503)},
    },
    summary="Give the service's Kafka principal a new password and roll its workers",
)
def services_rotate_credentials(request: HttpRequest, name: str) -> dict[str, int | None]:
    generation, deployment = deployments.service_kafka_credentials_rotate(
        service=selectors.service_get(name=name), created_by=request.auth
    )
    return {"generation": generation, "version": None if deployment is None else deployment.version}
