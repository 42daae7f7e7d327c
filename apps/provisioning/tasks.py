"""Celery tasks of provisioning. The reconcile loop is scheduled by beat
(settings.CELERY_BEAT_SCHEDULE); comparing desired and live workers comes with the
provisioners."""

from __future__ import annotations

import logging

from celery import shared_task

logger = logging.getLogger(__name__)


@shared_task(name="apps.provisioning.tasks.reconcile", ignore_result=True)
def reconcile() -> None:
    logger.info("reconcile: no provisioners are configured yet; nothing to do")
