"""Writes for services and deployments (API tokens and grants: apps/services/tokens.py).
Every function validates with `full_clean` inside its transaction and raises DomainError
for what the caller must fix."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from apps.common.errors import DomainError, full_clean_or_raise
from apps.common.fleet import FleetChoice, fleet_check
from apps.common.states import WORKER_FINISHED_STATES
from apps.services.broker import publish_invalidate
from apps.services.models import (
    DEFAULT_PARTITIONS,
    DUPLICATE_NAME,
    Deployment,
    DeploymentEvent,
    Provider,
    Service,
)
from apps.services.principals import kafka_principal_ensure, kafka_principal_remove
from apps.services.redis_users import redis_user_delete_on_commit, redis_user_ensure_quietly
from apps.services.topics import topics_ensure

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


def _invalidate_on_commit(what: str) -> None:
    transaction.on_commit(lambda: publish_invalidate(what))


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
