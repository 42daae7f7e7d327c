"""Celery tasks of workers. `prune_worker_logs` is scheduled by beat
(settings.CELERY_BEAT_SCHEDULE)."""

from __future__ import annotations

import logging

from celery import shared_task

from apps.workers.services import worker_logs_prune

logger = logging.getLogger(__name__)


@shared_task(name="apps.workers.tasks.prune_worker_logs", ignore_result=True)
def prune_worker_logs() -> int:
    """Keep every worker's log lines within the retention bound; returns how many went."""
    deleted = worker_logs_prune()
    if deleted:
        logger.info("prune_worker_logs: deleted %d log lines beyond retention", deleted)
    return deleted
