"""Writes for services, deployments and API tokens. Every function validates with
`full_clean` inside its transaction and raises DomainError for what the caller must fix."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from apps.common.credentials import (
    API_TOKEN_PREFIX,
    secret_hash,
    secret_new,
    secret_shown_part,
)
from apps.common.errors import DomainError, full_clean_or_raise
from apps.common.fleet import FleetChoice, fleet_check
from apps.common.permissions import Access, Grant
from apps.common.states import WORKER_FINISHED_STATES
from apps.common.ttlcache import TtlCache
from apps.services import selectors
from apps.services.broker import listener, publish_invalidate
from apps.services.models import (
    DEFAULT_PARTITIONS,
    DUPLICATE_NAME,
    ApiToken,
    ApiTokenGrant,
    Deployment,
    DeploymentEvent,
    Provider,
    Service,
    UserGrant,
)
from apps.services.principals import kafka_principal_ensure, kafka_principal_remove
from apps.services.redis_users import redis_user_delete_on_commit, redis_user_ensure_quietly
from apps.services.topics import topics_ensure

# A token's last use is recorded at most this often, so that authenticating stays a
# single indexed read on almost every request.
LAST_USED_RESOLUTION = timedelta(minutes=1)

# What PATCH changes on the row: the fleet. The settings change by a new deployment
# (apps/services/deployments.py: deployment_configure).
SERVICE_UPDATABLE = frozenset({"desired_workers", "provider", "server_type", "location"})


def service_create(
    *,
    name: str,
    desired_workers: int = 1,
    partitions: int | None = None,
    provider: str = Provider.LOCAL,
    server_type: str = "",
    location: str = "",
) -> Service:
    """Create a service, not yet deployed, its Kafka topics, its Kafka principal
    (apps/services/principals.py) and its workers' Redis user (apps/services/redis_users.py).
    Its settings come with its first deployment;
    `partitions` defaults to 64.

    The topics and principal are made inside the transaction, before the row commits: a
    broker that is down is a 503 and leaves no service behind, and a commit that fails
    after the topics exist leaves only topics that a retry reuses (and a principal no
    worker gets the password of).
    """
    service = Service(
        name=name,
        desired_workers=desired_workers,
        partitions=DEFAULT_PARTITIONS if partitions is None else partitions,
        provider=provider,
        server_type=server_type,
        location=location,
    )
    fleet_check(choice=FleetChoice(provider=provider, server_type=server_type, location=location))
    try:
        with transaction.atomic():
            full_clean_or_raise(service, what="service")
            service.save()
            topics_ensure(service=service.name, partitions=service.partitions)
            kafka_principal_ensure(service=service)
            redis_user_ensure_quietly(service=service)
    except IntegrityError:
        # Lost a race with a concurrent create of the same name.
        if Service.objects.filter(name=name).exists():
            raise _duplicate_service(name) from None
        raise
    return service


def service_update(*, service: Service, data: Mapping[str, Any]) -> Service:
    """Change the fleet fields in `data` (SERVICE_UPDATABLE). The name and the partition
    count are fixed at creation: sending the current partition count is accepted. A
    desired worker count must lie within the live settings' min_workers..max_workers.
    A changed machine choice is checked first (apps/common/fleet.py) against the live
    settings' memory and disk."""
    if {"provider", "server_type", "location"} & set(data):
        config = service.config
        fleet_check(
            choice=FleetChoice(
                provider=str(data.get("provider", service.provider)),
                server_type=str(data.get("server_type", service.server_type)),
                location=str(data.get("location", service.location)),
                memory_bytes=config.memory_bytes if config else 0,
                disk_bytes=config.disk_bytes if config else 0,
            )
        )
    with transaction.atomic():
        service = Service.objects.select_for_update().get(pk=service.pk)
        if "partitions" in data and data["partitions"] != service.partitions:
            raise DomainError(
                f"partitions is fixed at creation ({service.partitions}) because a key's "
                "partition, hence its worker, depends on it; create a new service to change it",
                status=422,
                details={"fields": {"partitions": ["cannot be changed after creation"]}},
            )
        unknown = sorted(set(data) - SERVICE_UPDATABLE - {"partitions"})
        if unknown:
            raise DomainError(
                f"cannot update {', '.join(unknown)}; updatable: "
                f"{', '.join(sorted(SERVICE_UPDATABLE))}",
                status=422,
                details={"fields": {field: ["cannot be updated"] for field in unknown}},
            )
        if "desired_workers" in data:
            desired_workers_check(service=service, workers=data["desired_workers"])
        for field in SERVICE_UPDATABLE & set(data):
            setattr(service, field, data[field])
        full_clean_or_raise(service, what="service")
        service.save()
        _invalidate_on_commit(f"service:{service.name}")
    return service


def desired_workers_check(
    *, service: Service, workers: int, field: str = "desired_workers"
) -> None:
    """DomainError 422 unless `workers` lies within the live settings' bounds (any count
    goes before the first deploy: the deploy brings it within them)."""
    config = service.config
    if config is None or config.min_workers <= workers <= config.max_workers:
        return
    bound = (
        f"min_workers ({config.min_workers})"
        if workers < config.min_workers
        else f"max_workers ({config.max_workers})"
    )
    raise DomainError(
        f"{service.name} cannot run {workers} worker(s): that is outside its bounds, "
        f"{bound}; change the bounds (PATCH min_workers / max_workers, or deploy) first",
        status=422,
        details={
            "fields": {field: [f"between {config.min_workers} and {config.max_workers}"]},
            "min_workers": config.min_workers,
            "max_workers": config.max_workers,
        },
    )


def service_delete(*, service: Service) -> None:
    """Delete the service with its deployments and finished workers, and its Kafka
    principal (a broker that is down is a 503 and deletes nothing). Its Kafka topics are
    kept: they may still hold requests and dead letters, and a service created again
    under the same name and partition count picks them up.

    Refused (409) while a worker still runs: scale to zero first, so that no machine is
    left running without a service to bill it to.
    """
    with transaction.atomic():
        service = Service.objects.select_for_update().get(pk=service.pk)
        running = service.workers.exclude(state__in=WORKER_FINISHED_STATES).count()
        if running:
            raise DomainError(
                f"service {service.name} still has {running} running worker(s); set "
                "min_workers and desired_workers to 0 and wait for them to stop, then delete",
                status=409,
                details={"running_workers": running},
            )
        kafka_principal_remove(service=service.name)
        name = service.name
        service.delete()
        _invalidate_on_commit(f"service:{name}")
        redis_user_delete_on_commit(service_name=name)


def deployment_create(
    *,
    service: Service,
    sha256: str,
    size_bytes: int,
    artifact_url: str,
    manifest: Mapping[str, Any] | None = None,
    message: str = "",
    created_by: AbstractBaseUser | None = None,
) -> Deployment:
    """Record a new package version of `service`, numbered one past its latest.

    The service row is locked while the number is taken, so concurrent deploys of one
    service get consecutive versions instead of colliding.
    """
    with transaction.atomic():
        locked = Service.objects.select_for_update().get(pk=service.pk)
        latest = locked.deployments.aggregate(latest=Max("version"))["latest"] or 0
        deployment = Deployment(
            service=locked,
            version=latest + 1,
            sha256=sha256,
            size_bytes=size_bytes,
            artifact_url=artifact_url,
            manifest=dict(manifest or {}),
            message=message,
            created_by=created_by,
        )
        full_clean_or_raise(deployment, what="deployment")
        deployment.save()
    return deployment


def apitoken_create(
    *,
    user: AbstractBaseUser,
    name: str,
    grants: list[Grant] | None = None,
    by: Access | None = None,
) -> tuple[ApiToken, str]:
    """A new token for `user` holding `grants` (by default a copy of the user's own);
    returns it with its secret, which is not stored anywhere. 403 when a grant is beyond
    what `user` holds, or beyond what the caller `by` holds (a narrower token cannot mint
    a wider one); 404 for a grant on a service that does not exist."""
    owner = selectors.user_access(user=user)
    wanted = sorted(set(owner.grants if grants is None else grants))
    if not wanted:
        raise DomainError(
            "a token needs at least one grant (a role, on a service or on all)",
            status=422,
            details={"fields": {"grants": ["at least one"]}},
        )
    for holder in (owner, by):
        for grant in wanted:
            if holder is not None and not holder.allows(grant.role, grant.service):
                raise DomainError(
                    f"a token cannot hold more than {holder.who}: {grant} is beyond it",
                    status=403,
                    details={"role": str(grant.role), "service": grant.service},
                )
    services = {
        service.name: service
        for service in Service.objects.filter(name__in={g.service for g in wanted if g.service})
    }
    for grant in wanted:
        if grant.service is not None and grant.service not in services:
            raise DomainError(
                f"no service named {grant.service!r} to grant {grant.role} on",
                status=404,
                details={"name": grant.service},
            )
    secret = secret_new(prefix=API_TOKEN_PREFIX)
    token = ApiToken(
        user=user,
        name=name.strip(),
        prefix=secret_shown_part(secret),
        token_hash=secret_hash(secret),
    )
    with transaction.atomic():
        if ApiToken.objects.filter(user=user, name=token.name, revoked_at__isnull=True).exists():
            raise DomainError(
                f"you already have an active token named {token.name!r}; revoke it first "
                "or pick another name",
                status=409,
                details={"fields": {"name": ["an active token has this name"]}},
            )
        full_clean_or_raise(token, what="token")
        token.save()
        ApiTokenGrant.objects.bulk_create(
            ApiTokenGrant(token=token, service=services.get(g.service or ""), role=g.role)
            for g in wanted
        )
    return token, secret


def apitoken_revoke(*, token: ApiToken) -> ApiToken:
    """Revoke `token` from now on; revoking twice keeps the first time. Every web
    process forgets it at once (a message), or at worst within MEMRUN_LOOKUP_CACHE_TTL_S."""
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        _tokens.discard(token.token_hash)
        _invalidate_on_commit(f"token:{token.token_hash}")
    return token


def usergrant_add(*, user: AbstractBaseUser, role: str, service: Service | None) -> UserGrant:
    """Give a user without staff status `role` on `service` (None: all services)."""
    grant = UserGrant(user=user, role=role, service=service)
    with transaction.atomic():
        full_clean_or_raise(grant, what="grant")
        grant.save()
        _invalidate_on_commit("user:*")
    return grant


def usergrant_delete(*, grant: UserGrant) -> None:
    """Take a grant back: the user's tokens lose it too, in every web process at once
    (a message), at worst within MEMRUN_LOOKUP_CACHE_TTL_S."""
    with transaction.atomic():
        grant.delete()
        _invalidate_on_commit("user:*")


@dataclass(frozen=True)
class TokenHolder:
    """Who a token is: its user, and what it may do."""

    user: AbstractBaseUser
    access: Access


# token hash -> its holder, as of at most MEMRUN_LOOKUP_CACHE_TTL_S ago.
_tokens: TtlCache[str, TokenHolder] = TtlCache(lambda: settings.MEMRUN_LOOKUP_CACHE_TTL_S)


def _invalidate_on_commit(what: str) -> None:
    transaction.on_commit(lambda: publish_invalidate(what))


def _on_invalidate(message: bytes) -> None:
    kind, _, key = message.decode().partition(":")
    if kind == "token":
        _tokens.discard(key)
    elif kind == "user":
        # A user's grants changed: every token of theirs may hold less now. Rare enough
        # that forgetting all tokens (one query each on next use) is the simple answer.
        _tokens.clear()


listener.on_invalidate.append(_on_invalidate)


def apitoken_authenticate(*, secret: str) -> AbstractBaseUser | None:
    """The active user whose active token `secret` is, else None (`apitoken_holder`)."""
    holder = apitoken_holder(secret=secret)
    return None if holder is None else holder.user


def apitoken_holder(*, secret: str) -> TokenHolder | None:
    """The holder of the active token `secret` (of an active user), else None. Records
    the use (to the minute). Cached per process: a known token costs no query."""
    if not secret.startswith(API_TOKEN_PREFIX):
        return None
    key = secret_hash(secret)
    holder = _tokens.get(key)
    if holder is None:
        holder = _apitoken_lookup(token_hash=key)
        if holder is not None:
            _tokens.put(key, holder)
    return holder


def apitoken_cached_holder(*, secret: str) -> TokenHolder | None:
    """The holder of `secret` if this process knows it as active; None means "ask
    apitoken_holder", not "refused". Never touches the database."""
    if not secret.startswith(API_TOKEN_PREFIX):
        return None
    return _tokens.get(secret_hash(secret))


def _apitoken_lookup(*, token_hash: str) -> TokenHolder | None:
    found = selectors.apitoken_active_get(token_hash=token_hash)
    if found is None:
        return None
    token, grants = found
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return TokenHolder(
        user=token.user, access=selectors.apitoken_access(token=token, grants=grants)
    )


def admin_user_ensure(*, username: str = "admin") -> tuple[AbstractBaseUser, str | None]:
    """The superuser `username`, created on first use with a random password, which is
    returned that one time (None when the user already existed)."""
    user_model = get_user_model()
    with transaction.atomic():
        user = user_model.objects.filter(username=username).first()
        if user is not None:
            return user, None
        password = secrets.token_urlsafe(12)
        user = user_model.objects.create_superuser(username=username, email="", password=password)
    return user, password


def cli_token_ensure(*, user: AbstractBaseUser, path: Path, name: str = "cli") -> bool:
    """Make `path` (mode 0600) hold a working API token of `user` for the CLI. A missing,
    unreadable or revoked one is replaced, revoking the user's old token called `name`.
    Returns whether a new token was written."""
    try:
        current = path.read_text().strip()
    except OSError:
        current = ""
    if current and apitoken_authenticate(secret=current) is not None:
        return False
    for old in ApiToken.objects.filter(user=user, name=name, revoked_at__isnull=True):
        apitoken_revoke(token=old)
    _token, secret = apitoken_create(user=user, name=name)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    temporary.replace(path)
    return True


def _duplicate_service(name: str) -> DomainError:
    return DomainError(
        f"invalid service: name: {DUPLICATE_NAME}",
        status=409,
        details={"fields": {"name": [DUPLICATE_NAME]}, "name": name},
    )


def deployment_set_status(
    *,
    deployment: Deployment,
    status: str,
    actor: str,
    reason: str = "",
    failure_reason: str | None = None,
    now: datetime | None = None,
) -> bool:
    """Move `deployment` to `status`, recording who (`actor`: a username, or "reconcile")
    and why as a DeploymentEvent; `failure_reason` is kept on the deployment. False when
    it already had that status."""
    now = now or timezone.now()
    with transaction.atomic():
        locked = Deployment.objects.select_for_update().get(pk=deployment.pk)
        if locked.status == status:
            return False
        DeploymentEvent.objects.create(
            deployment=locked,
            from_status=locked.status,
            to_status=status,
            reason=reason,
            actor=actor,
            at=now,
        )
        locked.status = status
        if failure_reason is not None:
            locked.failure_reason = failure_reason
        full_clean_or_raise(locked, what="deployment")
        locked.save(update_fields=["status", "failure_reason"])
    deployment.status, deployment.failure_reason = locked.status, locked.failure_reason
    return True


def deployment_back_off(
    *, deployment: Deployment, until: datetime, actor: str, reason: str, now: datetime | None = None
) -> None:
    """Hold back `deployment`'s replacement workers until `until` (its workers keep dying),
    recorded as a DeploymentEvent that keeps the status."""
    now = now or timezone.now()
    with transaction.atomic():
        locked = Deployment.objects.select_for_update().get(pk=deployment.pk)
        locked.crash_backoff_until = until
        locked.save(update_fields=["crash_backoff_until"])
        _health_event(locked, actor=actor, reason=reason, now=now)
    deployment.crash_backoff_until = until


def deployment_set_degraded(
    *,
    deployment: Deployment,
    degraded_reason: str,
    actor: str,
    reason: str,
    now: datetime | None = None,
) -> bool:
    """Mark `deployment` degraded with `degraded_reason` (why, with a log tail), or healthy
    again when it is blank; recorded as a DeploymentEvent. False when nothing changed."""
    now = now or timezone.now()
    with transaction.atomic():
        locked = Deployment.objects.select_for_update().get(pk=deployment.pk)
        if bool(locked.degraded_reason) == bool(degraded_reason):
            return False
        locked.degraded_reason = degraded_reason
        locked.degraded_at = now if degraded_reason else None
        if not degraded_reason:
            locked.crash_backoff_until = None
        locked.save(update_fields=["degraded_reason", "degraded_at", "crash_backoff_until"])
        _health_event(locked, actor=actor, reason=reason, now=now)
    deployment.degraded_reason, deployment.degraded_at = locked.degraded_reason, locked.degraded_at
    deployment.crash_backoff_until = locked.crash_backoff_until
    return True


def _health_event(deployment: Deployment, *, actor: str, reason: str, now: datetime) -> None:
    DeploymentEvent.objects.create(
        deployment=deployment,
        from_status=deployment.status,
        to_status=deployment.status,
        reason=reason,
        actor=actor,
        at=now,
    )
