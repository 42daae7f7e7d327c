"""Celery tasks of provisioning: thin wrappers over apps/provisioning/reconcile.py and
gc.py.

`reconcile` runs every MEMRUN_RECONCILE_INTERVAL_S (beat, settings.CELERY_BEAT_SCHEDULE)
over every service; `reconcile_service` runs one service at once, when something changed
(a new deployment, a scale, a worker that became ready or stopped); `gc` frees garbage
every MEMRUN_GC_INTERVAL_S; `autoscale` decides every autoscaled service's worker count
every MEMRUN_AUTOSCALE_INTERVAL_S (apps/provisioning/autoscaling.py).
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

from apps.common.events import ServiceFleetChanged
from apps.provisioning import reconcile as reconciling
from apps.provisioning.autoscaling import autoscale_all
from apps.provisioning.gc import gc_plan, gc_run

logger = logging.getLogger(__name__)


@shared_task(name="apps.provisioning.tasks.reconcile", ignore_result=True)
def reconcile() -> None:
    reconciling.reconcile_all()


@shared_task(name="apps.provisioning.tasks.autoscale", ignore_result=True)
def autoscale() -> None:
    autoscale_all()


@shared_task(name="apps.provisioning.tasks.gc", ignore_result=True)
def gc() -> None:
    freed = gc_run(plan=gc_plan())
    for kind, (count, size) in freed.totals().items():
        if count:
            logger.info("gc freed %d %s (%d bytes)", count, kind, size)


@shared_task(name="apps.provisioning.tasks.reconcile_service", ignore_result=True)
def reconcile_service(service_id: int) -> None:
    reconciling.reconcile_service(service_id=service_id)


def reconcile_soon(*, service_id: int) -> None:
    """Queue a pass over one service now (MEMRUN_RECONCILE_ON_EVENTS); beat's periodic
    pass covers for a broker that is down, so that is only logged."""
    if not settings.MEMRUN_RECONCILE_ON_EVENTS:
        return
    try:
        reconcile_service.delay(service_id)
    except Exception:
        logger.warning("could not queue a reconcile of service %s", service_id, exc_info=True)


def reconcile_soon_on(event: ServiceFleetChanged) -> None:
    """Subscriber of ServiceFleetChanged (apps.py): a deployment or a worker changed."""
    reconcile_soon(service_id=event.service_id)
