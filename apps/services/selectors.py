"""Reads of services, their deployments, and API tokens."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.db.models import Count, Prefetch, Q, QuerySet
from django.views.decorators.debug import sensitive_variables

from apps.common.errors import DomainError
from apps.common.permissions import Access, Grant, Role
from apps.common.states import WorkerState
from apps.services.models import (
    LIVE_STATUSES,
    ApiToken,
    ApiTokenGrant,
    Deployment,
    Secret,
    Service,
    UserGrant,
)
from apps.services.secretbox import secret_decrypt
from memrun.errors import ConfigError
from memrun.wire.config import ServiceConfig, service_config_from_dict


def _with_live_deployment(services: QuerySet[Service]) -> QuerySet[Service]:
    """`services` with `live_deployments` prefetched (what `Service.live_deployment` and
    `Service.config` read), so a list costs two queries, not one per service."""
    live = Deployment.objects.filter(status__in=LIVE_STATUSES).order_by("-version")
    return services.prefetch_related(Prefetch("deployments", live, to_attr="live_deployments"))


def service_list(*, access: Access | None = None) -> QuerySet[Service]:
    """Every service, or those `access` may read."""
    services = Service.objects.order_by("name")
    if access is not None:
        services = services_readable(services, access=access)
    return _with_live_deployment(services)


def services_readable(services: QuerySet[Service], *, access: Access) -> QuerySet[Service]:
    """`services` narrowed to those `access` holds the read role on."""
    readable = access.services_with(Role.READ)
    return services if readable is None else services.filter(name__in=readable)


def service_get(*, name: str, with_live_deployment: bool = False) -> Service:
    """The service called `name` (with its live deployment loaded, to show its settings);
    DomainError 404 when there is none."""
    services = Service.objects.filter(name=name)
    if with_live_deployment:
        services = _with_live_deployment(services)
    service = services.first()
    if service is None:
        raise DomainError(
            f"no service named {name!r}; list them with GET /api/v1/services",
            status=404,
            details={"name": name},
        )
    return service


def service_live_config_get(*, name: str) -> ServiceConfig | None:
    """The settings of the live deployment of the service `name` (one indexed query);
    None when it has no live deployment or does not exist."""
    manifest = (
        Deployment.objects.filter(service__name=name, status__in=LIVE_STATUSES)
        .order_by("-version")
        .values_list("manifest", flat=True)
        .first()
    )
    try:
        return None if manifest is None else service_config_from_dict(manifest.get("config"))
    except (ConfigError, AttributeError):
        return None


def user_access(*, user: AbstractBaseUser) -> Access:
    """What `user` may do: admin on all for a staff user, else its grants (one query)."""
    name = user.get_username()
    if getattr(user, "is_staff", False):
        return Access(who=name, grants=frozenset({Grant(None, Role.ADMIN)}))
    rows = UserGrant.objects.filter(user=user).values_list("service__name", "role")
    return Access(who=name, grants=frozenset(Grant(s, Role(r)) for s, r in rows))


def user_get(*, username: str) -> AbstractBaseUser:
    """The active user `username`; 404 when there is none."""
    user = get_user_model().objects.filter(username=username, is_active=True).first()
    if user is None:
        raise DomainError(
            f"no active user named {username!r}", status=404, details={"user": username}
        )
    return user


def apitoken_grants(*, token: ApiToken) -> frozenset[Grant]:
    """The token's grants (from `grants__service` when prefetched)."""
    return frozenset(
        Grant(g.service.name if g.service else None, Role(g.role)) for g in token.grants.all()
    )


def apitoken_access(*, token: ApiToken, grants: frozenset[Grant] | None = None) -> Access:
    """What `token` (holding `grants`, else read) may do: its grants, capped by its
    user's."""
    return Access(
        who=f"token {token.name!r} of {token.user.get_username()}",
        grants=apitoken_grants(token=token) if grants is None else grants,
        ceiling=user_access(user=token.user),
    )


def apitoken_active_get(*, token_hash: str) -> tuple[ApiToken, frozenset[Grant]] | None:
    """The active token of an active user whose hash is `token_hash`, with its grants;
    one query (every token has a grant)."""
    rows = list(
        ApiTokenGrant.objects.select_related("token__user", "service").filter(
            token__token_hash=token_hash, token__revoked_at__isnull=True
        )
    )
    if not rows or not rows[0].token.user.is_active:
        return None
    grants = frozenset(Grant(r.service.name if r.service else None, Role(r.role)) for r in rows)
    return rows[0].token, grants


def apitoken_list(*, user: AbstractBaseUser | None) -> QuerySet[ApiToken]:
    """The user's tokens that still work (every user's when None), newest first, with
    their grants."""
    tokens = ApiToken.objects.filter(revoked_at__isnull=True)
    if user is not None:
        tokens = tokens.filter(user=user)
    return (
        tokens.select_related("user")
        .prefetch_related("grants__service")
        .order_by("-created_at", "-id")
    )


def apitoken_get(*, user: AbstractBaseUser | None, token_id: int) -> ApiToken:
    """One of the user's active tokens (anyone's when None); another user's token is
    reported as missing."""
    token = apitoken_list(user=user).filter(pk=token_id).first()
    if token is None:
        raise DomainError(
            f"you have no active token with id {token_id}",
            status=404,
            details={"token_id": token_id},
        )
    return token


def deployment_list(*, service: Service) -> QuerySet[Deployment]:
    """The service's deployments, newest first, each with `workers_ready`: its workers
    in the ready state, counted in the same query."""
    return (
        Deployment.objects.filter(service=service)
        .select_related("service", "created_by")
        .annotate(workers_ready=Count("workers", filter=Q(workers__state=WorkerState.READY)))
        .order_by("-version")
    )


def deployment_get(*, service: Service, version: int) -> Deployment:
    """Version `version` of the service; DomainError 404 when there is none."""
    deployment = deployment_list(service=service).filter(version=version).first()
    if deployment is None:
        raise DomainError(
            f"{service.name} has no version {version}; list them with "
            f"GET /api/v1/services/{service.name}/deployments",
            status=404,
            details={"service": service.name, "version": version},
        )
    return deployment


def deployment_get_by_id(*, deployment_id: int) -> Deployment:
    deployment = Deployment.objects.select_related("service").filter(pk=deployment_id).first()
    if deployment is None:
        raise DomainError(
            f"no deployment with id {deployment_id}",
            status=404,
            details={"deployment_id": deployment_id},
        )
    return deployment


def deployment_previous_active(*, service: Service) -> Deployment | None:
    """The deployment that was active before the current active one (the newest one
    superseded before it); with none active, the newest superseded one."""
    deployments = deployment_list(service=service)
    current = deployments.filter(status=Deployment.Status.ACTIVE).first()
    earlier = deployments.filter(status=Deployment.Status.SUPERSEDED)
    if current is not None:
        earlier = earlier.filter(version__lt=current.version)
    return earlier.first()


def secret_list() -> list[Secret]:
    """Every secret, by name, each with `services`: the names of the services with a live
    deployment (pending, rolling or active) that uses it. Two queries."""
    usage = secret_usage()
    secrets = list(Secret.objects.order_by("name"))
    for secret in secrets:
        secret.services = usage.get(secret.name, [])  # type: ignore[attr-defined]
    return secrets


def secret_get(*, name: str) -> Secret:
    """The secret called `name`, with `services` as in `secret_list`; 404 when none."""
    secret = Secret.objects.filter(name=name).first()
    if secret is None:
        raise DomainError(
            f"no secret named {name!r}; list them with `memrun secret list`",
            status=404,
            details={"name": name},
        )
    secret.services = secret_usage().get(name, [])  # type: ignore[attr-defined]
    return secret


def secret_usage() -> dict[str, list[str]]:
    """Secret name -> the services (sorted) whose live deployments (pending, rolling or
    active: each may have workers) name it in their settings."""
    usage: dict[str, set[str]] = {}
    rows = Deployment.objects.filter(status__in=LIVE_STATUSES).values_list(
        "service__name", "manifest__config__secrets"
    )
    for service, names in rows:
        for name in names if isinstance(names, list) else []:
            usage.setdefault(str(name), set()).add(service)
    return {name: sorted(services) for name, services in usage.items()}


def secrets_missing(*, names: tuple[str, ...], lock: bool = False) -> list[str]:
    """Which of `names` name no secret. `lock` holds the found rows until the transaction
    ends, so that a secret being deleted cannot slip under a deployment being recorded."""
    found = Secret.objects.filter(name__in=names)
    if lock:
        found = found.select_for_update()
    have = set(found.values_list("name", flat=True))
    return [name for name in names if name not in have]


@sensitive_variables("values", "env")
def secret_env(*, names: tuple[str, ...]) -> dict[str, str]:
    """The decrypted KEY=VALUE pairs of the secrets `names`, merged in that order (a later
    secret's key wins). ValueError names a secret that no longer exists; SecretUnreadable
    one that the configured keys cannot open."""
    stored = {secret.name: secret for secret in Secret.objects.filter(name__in=names)}
    env: dict[str, str] = {}
    for name in names:
        if name not in stored:
            raise ValueError(f"secret {name} does not exist any more; set it again")
        values = secret_decrypt(stored[name].ciphertext, name=name)
        env.update(values)
    return env
