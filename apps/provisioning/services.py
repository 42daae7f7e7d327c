"""Writes of provisioning: scaling a service (its reconcile then starts or drains workers)."""

from __future__ import annotations

import functools
from typing import Any

from django.contrib.admin.models import CHANGE, LogEntry
from django.db import transaction

from apps.common.errors import DomainError
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
