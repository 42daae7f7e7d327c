"""Writes of provisioning: scaling a service (its reconcile then starts or drains workers),
by hand or by its autoscaling policy, whose every decision is recorded."""

from __future__ import annotations

import functools
from typing import Any

from django.contrib.admin.models import CHANGE, LogEntry
from django.core.exceptions import ValidationError
from django.db import transaction

from apps.common.errors import DomainError, full_clean_or_raise
from apps.provisioning.models import POLICY_FIELDS, AutoscalePolicy
from apps.provisioning.tasks import reconcile_soon
from apps.services.models import Service
from apps.services.services import desired_workers_check


def service_scale(*, service: Service, workers: int, by: Any = None) -> Service:
    """Set the service's desired worker count, within its live settings'
    min_workers..max_workers; a count outside is a 422 that names the bound, and a
    service never deployed is a 409 (it has no bounds, and nothing to run). Who scaled
    (`by`), when and to what is recorded in the service's admin history."""
    with transaction.atomic():
        locked = Service.objects.select_for_update().get(pk=service.pk)
        if locked.config is None:
            raise DomainError(
                f"{locked.name} has no live deployment to scale; deploy it first "
                "(memrun deploy handler.py)",
                status=409,
                details={"service": locked.name},
            )
        desired_workers_check(service=locked, workers=workers, field="workers")
        policy = AutoscalePolicy.objects.filter(service=locked, enabled=True).first()
        if policy is not None:
            raise DomainError(
                f"{locked.name} is autoscaled between {policy.min_workers} and "
                f"{policy.max_workers} worker(s), which would undo a manual scale; change "
                f"the range (memrun autoscale {locked.name} --min N --max N) or turn "
                f"autoscaling off (memrun autoscale {locked.name} --off) first",
                status=409,
                details={"min_workers": policy.min_workers, "max_workers": policy.max_workers},
            )
        if locked.desired_workers != workers:
            before = locked.desired_workers
            locked.desired_workers = workers
            locked.save(update_fields=["desired_workers", "updated_at"])
            if by is not None:
                LogEntry.objects.log_actions(
                    user_id=by.pk,
                    queryset=[locked],
                    action_flag=CHANGE,
                    change_message=f"scaled from {before} to {workers} worker(s)",
                    single_object=True,
                )
            transaction.on_commit(functools.partial(reconcile_soon, service_id=locked.pk))
    return locked


def autoscale_policy_set(*, service: Service, by: Any = None, **changes: Any) -> AutoscalePolicy:
    """Create or change the service's autoscaling policy: only the fields given change
    (`POLICY_FIELDS`). A new policy starts from the live deployment's min_workers and
    max_workers; the range must lie within them (422 naming the bound), and a service
    never deployed has none (409). Turning it on or changing it restarts the windows.
    Who changed it (`by`) is recorded in the service's admin history."""
    unknown = sorted(set(changes) - set(POLICY_FIELDS))
    if unknown:
        raise DomainError(
            f"unknown autoscaling field(s) {', '.join(unknown)}; known: {', '.join(POLICY_FIELDS)}",
            status=422,
            details={"fields": {field: ["unknown"] for field in unknown}},
        )
    with transaction.atomic():
        locked = Service.objects.select_for_update().get(pk=service.pk)
        config = locked.config
        if config is None:
            raise DomainError(
                f"{locked.name} has no live deployment to autoscale; deploy it first "
                "(memrun deploy handler.py)",
                status=409,
                details={"service": locked.name},
            )
        policy = AutoscalePolicy.objects.select_for_update().filter(service=locked).first()
        if policy is None:
            policy = AutoscalePolicy(
                service=locked,
                min_workers=config.min_workers,
                max_workers=max(config.max_workers, 1),
            )
        for field, value in changes.items():
            setattr(policy, field, value)
        errors: dict[str, list[ValidationError]] = {}
        if policy.min_workers < config.min_workers:
            errors["min_workers"] = [
                ValidationError(f"at least the deployment's min_workers ({config.min_workers})")
            ]
        if policy.max_workers > config.max_workers:
            errors["max_workers"] = [
                ValidationError(f"at most the deployment's max_workers ({config.max_workers})")
            ]
        full_clean_or_raise(policy, what="autoscaling policy", errors=errors)
        policy.pressure_since = policy.idle_since = None
        policy.save()
        if by is not None:
            LogEntry.objects.log_actions(
                user_id=by.pk,
                queryset=[locked],
                action_flag=CHANGE,
                change_message=f"autoscaling {_describe_policy(policy)}",
                single_object=True,
            )
    return policy


def _describe_policy(policy: AutoscalePolicy) -> str:
    if not policy.enabled:
        return "off"
    described = (
        f"on: {policy.min_workers}..{policy.max_workers} worker(s), "
        f"{policy.lag_per_worker} lag per worker"
    )
    if policy.max_queue_seconds is not None:
        described += f" or {policy.max_queue_seconds:g}s in queue"
    return described
