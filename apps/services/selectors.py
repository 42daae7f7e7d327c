"""Reads of services and API tokens."""

from __future__ import annotations

from django.contrib.auth.base_user import AbstractBaseUser
from django.db.models import QuerySet

from apps.services.errors import DomainError
from apps.services.models import ApiToken, Service


def service_list() -> QuerySet[Service]:
    return Service.objects.order_by("name")


def service_get(*, name: str) -> Service:
    """The service called `name`; DomainError 404 when there is none."""
    service = Service.objects.filter(name=name).first()
    if service is None:
        raise DomainError(
            f"no service named {name!r}; list them with GET /api/v1/services",
            status=404,
            details={"name": name},
        )
    return service


def apitoken_list(*, user: AbstractBaseUser) -> QuerySet[ApiToken]:
    """The user's tokens that still work, newest first."""
    return ApiToken.objects.filter(user=user, revoked_at__isnull=True).order_by(
        "-created_at", "-id"
    )


def apitoken_get(*, user: AbstractBaseUser, token_id: int) -> ApiToken:
    """One of the user's active tokens; another user's token is reported as missing."""
    token = apitoken_list(user=user).filter(pk=token_id).first()
    if token is None:
        raise DomainError(
            f"you have no active token with id {token_id}",
            status=404,
            details={"token_id": token_id},
        )
    return token
