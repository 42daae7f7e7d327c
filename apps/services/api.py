"""The services API: health, services, and the caller's own API tokens."""

from __future__ import annotations

from django.http import HttpRequest
from ninja import Router, Status

from apps.services import selectors, services
from apps.services.health import health_check
from apps.services.models import ApiToken, Service
from apps.services.schemas import (
    ErrorOut,
    HealthComponentOut,
    HealthOut,
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


@router.get("/services", response=list[ServiceOut])
def services_list(request: HttpRequest) -> list[Service]:
    return list(selectors.service_list())


@router.post("/services", response={201: ServiceOut, 503: ErrorOut, **_WRITE_ERRORS})
def services_create(request: HttpRequest, payload: ServiceIn) -> Status[Service]:
    return Status(201, services.service_create(**payload.model_dump()))


@router.get("/services/{name}", response={200: ServiceOut, 404: ErrorOut})
def services_get(request: HttpRequest, name: str) -> Service:
    return selectors.service_get(name=name)


@router.patch("/services/{name}", response={200: ServiceOut, 404: ErrorOut, **_WRITE_ERRORS})
def services_update(request: HttpRequest, name: str, payload: ServicePatch) -> Service:
    service = selectors.service_get(name=name)
    return services.service_update(service=service, data=payload.model_dump(exclude_unset=True))


@router.delete("/services/{name}", response={204: None, 404: ErrorOut, 409: ErrorOut})
def services_delete(request: HttpRequest, name: str) -> Status[None]:
    services.service_delete(service=selectors.service_get(name=name))
    return Status(204, None)


@router.get("/tokens", response=list[TokenOut], tags=["tokens"])
def tokens_list(request: HttpRequest) -> list[ApiToken]:
    return list(selectors.apitoken_list(user=request.auth))


@router.post("/tokens", response={201: TokenCreatedOut, **_WRITE_ERRORS}, tags=["tokens"])
def tokens_create(request: HttpRequest, payload: TokenIn) -> Status[TokenCreatedOut]:
    token, secret = services.apitoken_create(user=request.auth, name=payload.name)
    return Status(
        201,
        TokenCreatedOut(
            id=token.pk,
            name=token.name,
            prefix=token.prefix,
            created_at=token.created_at,
            last_used_at=token.last_used_at,
            secret=secret,
        ),
    )


@router.delete("/tokens/{token_id}", response={204: None, 404: ErrorOut}, tags=["tokens"])
def tokens_revoke(request: HttpRequest, token_id: int) -> Status[None]:
    services.apitoken_revoke(token=selectors.apitoken_get(user=request.auth, token_id=token_id))
    return Status(204, None)
