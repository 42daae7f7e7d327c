"""Workers: the long-lived processes or VMs that run a service's handler."""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from apps.common.states import WORKER_FINISHED_STATES, WorkerState
from apps.services.models import Deployment, Provider, Service


class Worker(models.Model):
    """One worker of a service. It authenticates with its own scoped credential, of which
    only the sha256 is kept here."""

    State = WorkerState
    # States in which a worker has no machine or process left behind.
    FINISHED_STATES = WORKER_FINISHED_STATES

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
    state_changed_at = models.DateTimeField(
        null=True, blank=True, help_text="when the state last changed (boot and drain clocks)"
    )
    ready_at = models.DateTimeField(
        null=True, blank=True, help_text="when it first reported ready; never: it failed to start"
    )
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    stats = models.JSONField(default=dict, blank=True, help_text="as last reported")
    machine = models.JSONField(
        default=dict,
        blank=True,
        help_text="the provisioner's view: server id, type, location, addresses, cost",
    )
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


class WorkerEvent(models.Model):
    """One state change of a worker: from where, to where, why, when."""

    worker = models.ForeignKey(Worker, on_delete=models.CASCADE, related_name="events")
    from_state = models.CharField(max_length=16, choices=WorkerState.choices, blank=True)
    to_state = models.CharField(max_length=16, choices=WorkerState.choices)
    reason = models.TextField(blank=True)
    at = models.DateTimeField()

    class Meta:
        ordering = ["worker", "at", "id"]
        indexes = [models.Index(fields=["worker", "at"], name="workerevent_worker_at")]

    def __str__(self) -> str:
        return f"{self.worker.name}: {self.from_state or '-'} -> {self.to_state}"


class LogLevel(models.TextChoices):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


class WorkerLogLine(models.Model):
    """One line a worker shipped: a runtime event, a log record, or a line its handler
    printed. `ts` is the worker's clock, `received_at` the control plane's. Kept within a
    bound per worker, by count and by age (apps/workers/services.py)."""

    Level = LogLevel
    MESSAGE_MAX_CHARS = 8192

    # The composite indexes below lead with these columns, so no single-column FK index.
    worker = models.ForeignKey(
        Worker, on_delete=models.CASCADE, related_name="log_lines", db_index=False
    )
    # The worker's service, copied so the merged service view reads one index.
    service = models.ForeignKey(
        Service, on_delete=models.CASCADE, related_name="worker_log_lines", db_index=False
    )
    ts = models.DateTimeField()
    received_at = models.DateTimeField()
    level = models.CharField(max_length=8, choices=LogLevel.choices, default=LogLevel.INFO)
    event = models.CharField(max_length=100)
    request_id = models.CharField(max_length=100, blank=True)
    message = models.TextField(max_length=MESSAGE_MAX_CHARS, blank=True)
    fields = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["ts", "id"]
        indexes = [
            models.Index(fields=["worker", "ts"], name="worker_log_worker_ts"),
            models.Index(fields=["service", "ts"], name="worker_log_service_ts"),
            models.Index(fields=["request_id"], name="worker_log_request_id"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(level__in=LogLevel.values), name="worker_log_level_known"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.ts:%Y-%m-%dT%H:%M:%S.%f} {self.level} {self.event}"
