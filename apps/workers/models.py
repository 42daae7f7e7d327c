"""Workers: the long-lived processes or VMs that run a service's handler."""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from apps.services.models import Deployment, Provider, Service


class WorkerState(models.TextChoices):
    PROVISIONING = "provisioning"
    BOOTING = "booting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"
    DEAD = "dead"


class Worker(models.Model):
    """One worker of a service. It authenticates with its own scoped credential, of which
    only the sha256 is kept here."""

    State = WorkerState
    # States in which a worker has no machine or process left behind.
    FINISHED_STATES = (WorkerState.STOPPED, WorkerState.DEAD)

    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="workers")
    deployment = models.ForeignKey(
        Deployment, on_delete=models.SET_NULL, null=True, blank=True, related_name="workers"
    )
    name = models.CharField(max_length=100, unique=True)
    provider = models.CharField(max_length=16, choices=Provider.choices, default=Provider.LOCAL)
    provider_ref = models.CharField(
        max_length=200, blank=True, help_text="a server id, a process id"
    )
    address = models.CharField(max_length=255, blank=True)
    state = models.CharField(
        max_length=16, choices=WorkerState.choices, default=WorkerState.PROVISIONING
    )
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    stats = models.JSONField(default=dict, blank=True, help_text="as last reported")
    credential_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["service", "name"]
        indexes = [models.Index(fields=["service", "state"], name="worker_service_state")]
        constraints = [
            models.CheckConstraint(
                condition=Q(state__in=WorkerState.values), name="worker_state_known"
            ),
            models.CheckConstraint(
                condition=Q(provider__in=Provider.values), name="worker_provider_known"
            ),
        ]

    def __str__(self) -> str:
        return self.name
