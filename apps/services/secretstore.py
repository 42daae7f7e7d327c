"""Writes of the services' secrets: set (create or replace), delete, re-encrypt.

A secret's values are validated, encrypted (apps/services/secretbox.py) and never
returned, logged or quoted in an error: messages name keys, never values. Setting new
values rolls every service that uses the secret (a new deployment of the same package),
so that its workers do not run on a mix of old and new values for long.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction
from django.views.decorators.debug import sensitive_variables

from apps.common.errors import DomainError, full_clean_or_raise
from apps.common.permissions import Role
from apps.services import selectors
from apps.services.deployments import deployment_restart
from apps.services.models import Deployment, Secret, Service
from apps.services.secretbox import (
    secret_encrypt,
    secret_fingerprint,
    secret_key_problem,
    secret_rotate,
)

MAX_KEYS = 100
MAX_VALUE_BYTES = 32 * 1024
MAX_TOTAL_BYTES = 64 * 1024


@sensitive_variables("values", "clean")
def secret_set(
    *, name: str, values: Mapping[str, Any], user: AbstractBaseUser | None = None
) -> tuple[Secret, list[Deployment]]:
    """Create the secret `name`, or replace all of its pairs with `values`. When the
    values change, each service using it gets a new deployment ("secret NAME changed").
    Returns the secret and those deployments. Only admins on all services manage secrets."""
    _admin_require(user)
    clean = _values_checked(values)
    fingerprint = secret_fingerprint(clean)
    with transaction.atomic():
        secret = Secret.objects.select_for_update().filter(name=name).first()
        changed = secret is not None and secret.fingerprint != fingerprint
        secret = secret or Secret(name=name)
        secret.ciphertext = secret_encrypt(clean)
        secret.keys = sorted(clean)
        secret.fingerprint = fingerprint
        full_clean_or_raise(secret, what="secret")
        secret.save()
        rolled = _services_rolled(secret=secret, user=user) if changed else []
    secret.services = selectors.secret_usage().get(name, [])  # type: ignore[attr-defined]
    return secret, rolled


def secret_delete(*, name: str, user: AbstractBaseUser | None = None) -> None:
    """Delete the secret `name`; 409 naming the services whose live deployments use it."""
    _admin_require(user)
    with transaction.atomic():
        secret = Secret.objects.select_for_update().filter(name=name).first()
        if secret is None:
            raise DomainError(
                f"no secret named {name!r}; list them with `memrun secret list`",
                status=404,
                details={"name": name},
            )
        services = selectors.secret_usage().get(name, [])
        if services:
            raise DomainError(
                f"secret {name} is used by {', '.join(services)}; deploy them without it "
                f"first (PATCH /api/v1/services/NAME with the secrets it keeps)",
                status=409,
                details={"name": name, "services": services},
            )
        secret.delete()


def secrets_reencrypt(*, user: AbstractBaseUser | None = None) -> int:
    """Encrypt every secret again with the newest key (after a new key was put first in
    MEMRUN_SECRETS_KEYS); the values do not change, so nothing rolls. Returns the count."""
    _admin_require(user)
    with transaction.atomic():
        secrets = list(Secret.objects.select_for_update())
        for secret in secrets:
            secret.ciphertext = secret_rotate(secret.ciphertext, name=secret.name)
            secret.save(update_fields=["ciphertext"])
    return len(secrets)


def _services_rolled(*, secret: Secret, user: AbstractBaseUser | None) -> list[Deployment]:
    rolled = []
    for service_name in selectors.secret_usage().get(secret.name, []):
        service = Service.objects.select_for_update().get(name=service_name)
        live = service.live_deployment
        config = None if live is None else live.config
        # An older version still draining may name it; it is replaced anyway.
        if config is None or secret.name not in config.secrets:
            continue
        deployment = deployment_restart(
            service=service, message=f"secret {secret.name} changed", created_by=user
        )
        if deployment is not None:
            rolled.append(deployment)
    return rolled


def _admin_require(user: AbstractBaseUser | None) -> None:
    """403 unless `user` (None: memrun itself) holds admin on all services: secrets are
    the appliance's, not one service's. The routes and pages check the same first."""
    if user is not None:
        selectors.user_access(user=user).require(Role.ADMIN, what="manage secrets")


@sensitive_variables("values", "clean", "value")
def _values_checked(values: Mapping[str, Any]) -> dict[str, str]:
    """`values` as env vars; 422 naming each bad key (never quoting a value)."""
    if not isinstance(values, Mapping) or not values:
        raise DomainError(
            "a secret holds one or more KEY=VALUE pairs; give at least one",
            status=422,
            details={"fields": {"values": ["at least one KEY=VALUE pair"]}},
        )
    problems: dict[str, list[str]] = {}
    clean: dict[str, str] = {}
    for key, value in values.items():
        problem = secret_key_problem(str(key))
        if problem is None and not isinstance(value, str):
            problem = f"the value of {key} must be a string"
        elif problem is None and "\0" in value:
            problem = f"the value of {key} holds a NUL character, which no env var can"
        elif problem is None and len(value.encode()) > MAX_VALUE_BYTES:
            problem = f"the value of {key} is longer than {MAX_VALUE_BYTES} bytes"
        if problem is not None:
            problems[str(key)] = [problem]
        else:
            clean[str(key)] = value
    if len(values) > MAX_KEYS:
        problems["values"] = [f"at most {MAX_KEYS} keys per secret"]
    if sum(len(k) + len(v.encode()) for k, v in clean.items()) > MAX_TOTAL_BYTES:
        problems["values"] = [f"at most {MAX_TOTAL_BYTES} bytes of keys and values in all"]
    if problems:
        summary = "; ".join(messages[0] for messages in problems.values())
        raise DomainError(f"invalid secret: {summary}", status=422, details={"fields": problems})
    return clean
