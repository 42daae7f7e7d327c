"""What invoke needs to know of a service (routing, timeout, whether anything can serve
it), cached per process for MEMRUN_LOOKUP_CACHE_TTL_S and dropped when the service
changes, so a request in the steady state touches no database."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db.models import Count, OuterRef, Q, Subquery

from apps.common.errors import DomainError
from apps.common.ttlcache import TtlCache
from apps.services import broker
from apps.services.models import LIVE_STATUSES, Deployment, Service
from memrun.errors import ConfigError
from memrun.wire.config import ServiceConfig, service_config_build, service_config_from_dict
from memrun.wire.sticky import StickyTemplate

_LIVE = (Deployment.Status.ACTIVE, Deployment.Status.ROLLING)
# Worker states by value: services sits below workers and does not import it.
_READY = "ready"
_STARTING = ("provisioning", "booting")


@dataclass(frozen=True)
class InvokeTarget:
    """What invoke needs to know of a service. `refusal` says why nothing can serve it
    now (never deployed, no ready worker): a 409 unless the caller asks to queue."""

    service: str
    sticky: StickyTemplate | None
    timeout_seconds: int
    refusal: DomainError | None


@functools.lru_cache(maxsize=1024)
def _sticky(template: str) -> StickyTemplate:
    """Parsed once per template (so once per deployment), not per request."""
    return StickyTemplate.parse(template)


def invoke_target_get(*, name: str) -> InvokeTarget:
    """The service's invoke target, from the database in one query; 404 when unknown.
    Its sticky key and timeout are its live deployment's settings (I10); a service with
    none (refused unless queued) takes the settings a deploy defaults to."""
    live_config = (
        Deployment.objects.filter(service=OuterRef("pk"), status__in=LIVE_STATUSES)
        .order_by("-version")
        .values("manifest__config")[:1]
    )
    row = (
        Service.objects.filter(name=name)
        .annotate(
            live_config=Subquery(live_config),
            deployed=Count("deployments", distinct=True),
            live=Count("deployments", filter=Q(deployments__status__in=_LIVE), distinct=True),
            ready=Count("workers", filter=Q(workers__state=_READY), distinct=True),
            starting=Count("workers", filter=Q(workers__state__in=_STARTING), distinct=True),
        )
        .first()
    )
    if row is None:
        raise DomainError(
            f"no service named {name!r}; list them with GET /api/v1/services",
            status=404,
            details={"name": name},
        )
    config = _config_of(row.live_config) or service_config_build(row.name)
    return InvokeTarget(
        service=row.name,
        sticky=_sticky(config.sticky_key) if config.sticky_key else None,
        timeout_seconds=config.timeout_seconds,
        refusal=_refusal(row),
    )


def _config_of(value: object) -> ServiceConfig | None:
    try:
        return service_config_from_dict(value)
    except ConfigError:
        return None


def _refusal(row: Any) -> DomainError | None:
    name = row.name
    queue_hint = "; pass ?queue=true to queue the request anyway"
    if row.deployed == 0:
        reason, why = "never_deployed", f"{name} has never been deployed: `memrun deploy` it"
    elif row.live == 0:
        reason, why = "no_live_deployment", f"{name} has no live deployment (all failed or old)"
    elif row.ready == 0 and row.starting:
        reason, why = "starting", f"{name} has no ready worker yet: {row.starting} starting"
    elif row.ready == 0:
        reason, why = "no_ready_worker", f"{name} has no ready worker: see `memrun workers {name}`"
    else:
        return None
    return DomainError(why + queue_hint, status=409, details={"service": name, "reason": reason})


_targets: TtlCache[str, InvokeTarget] = TtlCache(lambda: settings.MEMRUN_LOOKUP_CACHE_TTL_S)


def invoke_target_forget(name: str | None = None) -> None:
    """Drop the cached target of `name` (all when None) in this process."""
    if name is None:
        _targets.clear()
    else:
        _targets.discard(name)


def _on_invalidate(message: bytes) -> None:
    kind, _, name = message.decode().partition(":")
    if kind == "service":
        invoke_target_forget(name)


broker.listener.on_invalidate.append(_on_invalidate)


# A refusal is kept briefly: long enough that a flood of invokes on a service that cannot
# serve costs one query a second, short enough that a service becoming ready is seen soon.
_REFUSAL_TTL_S = 1.0


async def invoke_target(*, name: str) -> InvokeTarget:
    """Cached for MEMRUN_LOOKUP_CACHE_TTL_S, a refusal for at most a second."""
    target = _targets.get(name)
    if target is None:
        target = await sync_to_async(invoke_target_get)(name=name)
        _targets.put(name, target, ttl_s=None if target.refusal is None else _REFUSAL_TTL_S)
    return target
