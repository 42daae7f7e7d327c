"""The secrets API: list, set (create or replace) and delete a service secret. For admins
on all services (staff users). No route ever answers with a value."""

from __future__ import annotations

from django.http import HttpRequest
from ninja import Router, Status

from apps.common.permissions import Role
from apps.services import secretstore, selectors
from apps.services.auth import ALL, needs
from apps.services.models import Secret
from apps.services.schemas import ErrorOut, SecretIn, SecretOut, SecretSetOut

router = Router(tags=["secrets"])
_ADMIN = needs(Role.ADMIN, ALL)


@router.get("/secrets", auth=_ADMIN, response={200: list[SecretOut], 403: ErrorOut})
def secrets_list(request: HttpRequest) -> list[Secret]:
    return selectors.secret_list()


@router.get("/secrets/{name}", auth=_ADMIN, response={200: SecretOut, 403: ErrorOut, 404: ErrorOut})
def secrets_get(request: HttpRequest, name: str) -> Secret:
    return selectors.secret_get(name=name)


@router.put(
    "/secrets/{name}",
    auth=_ADMIN,
    response={200: SecretSetOut, 403: ErrorOut, 409: ErrorOut, 422: ErrorOut},
    summary="Create a secret, or replace all of its pairs",
)
def secrets_set(request: HttpRequest, name: str, payload: SecretIn) -> SecretSetOut:
    """When the values change, every service using the secret gets a new deployment of
    its live package ("secret NAME changed"), listed in `rolled`."""
    secret, rolled = secretstore.secret_set(name=name, values=payload.values, user=request.auth)
    return SecretSetOut(
        name=secret.name,
        keys=secret.keys,
        fingerprint=secret.fingerprint,
        services=secret.services,  # type: ignore[attr-defined]
        created_at=secret.created_at,
        updated_at=secret.updated_at,
        rolled=[deployment.service.name for deployment in rolled],
    )


@router.delete(
    "/secrets/{name}",
    auth=_ADMIN,
    response={204: None, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut},
)
def secrets_delete(request: HttpRequest, name: str) -> Status[None]:
    """409 naming the services whose live deployments use it."""
    secretstore.secret_delete(name=name, user=request.auth)
    return Status(204, None)
