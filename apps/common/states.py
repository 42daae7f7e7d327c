"""The worker lifecycle's vocabulary, shared by the apps that count workers (services) and
the one that owns them (workers), so that neither reads the other's models for it."""

from __future__ import annotations

from django.db import models


class WorkerState(models.TextChoices):
    PROVISIONING = "provisioning"
    BOOTING = "booting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"
    DEAD = "dead"


WORKER_FINISHED_STATES = (WorkerState.STOPPED, WorkerState.DEAD)
