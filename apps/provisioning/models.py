"""Autoscaling: a service's policy and the decisions taken under it; and the join tokens
of remote workers, with the refused joins that rate-limit the exchange.

The policy is fleet-level, like `Service.desired_workers`, not a deployment setting:
it says how many workers to run for the traffic there is, not how the code runs, so
changing it must not roll out a new version (I10 keeps settings that change what a
worker does in the deployment's ServiceConfig; the deployment's min_workers and
max_workers stay the hard bounds the policy's own range is clamped to).
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q

from apps.services.models import Service

# What a person sets (the rest is the autoscaler's own state).
POLICY_FIELDS = (
    "enabled",
    "min_workers",
    "max_workers",
    "lag_per_worker",
    "max_queue_seconds",
    "scale_up_window_s",
    "scale_down_window_s",
    "scale_up_cooldown_s",
    "scale_down_cooldown_s",
)


class AutoscalePolicy(models.Model):
    """When to add and remove workers of one service, and the state of its windows.

    A worker is added when the request topic's lag per worker stays above
    `lag_per_worker`, or the oldest request not yet committed has waited more than
    `max_queue_seconds` (when set), for `scale_up_window_s`; one is removed (drained) when
    the workers
    stay idle for `scale_down_window_s`; no change follows another within its cooldown.
    Off (`enabled` false) by default: a service without a row is not autoscaled."""

    service = models.OneToOneField(Service, on_delete=models.CASCADE, related_name="autoscale")
    enabled = models.BooleanField(default=False)
    min_workers = models.PositiveIntegerField(default=1)
    max_workers = models.PositiveIntegerField(default=1, validators=[MinValueValidator(1)])
    lag_per_worker = models.PositiveIntegerField(default=100, validators=[MinValueValidator(1)])
    max_queue_seconds = models.FloatField(
        null=True, blank=True, help_text="add a worker when a request waits longer (null: off)"
    )
    scale_up_window_s = models.FloatField(default=30.0, validators=[MinValueValidator(0.0)])
    scale_down_window_s = models.FloatField(default=300.0, validators=[MinValueValidator(0.0)])
    scale_up_cooldown_s = models.FloatField(default=60.0, validators=[MinValueValidator(0.0)])
    scale_down_cooldown_s = models.FloatField(default=300.0, validators=[MinValueValidator(0.0)])
    # The windows' state: since when the condition has held without a break (null: not now).
    pressure_since = models.DateTimeField(null=True, blank=True)
    idle_since = models.DateTimeField(null=True, blank=True)
    last_scaled_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(min_workers__lte=models.F("max_workers")),
                name="autoscale_min_le_max",
            ),
            models.CheckConstraint(
                condition=Q(max_queue_seconds__isnull=True) | Q(max_queue_seconds__gt=0),
                name="autoscale_max_queue_seconds_positive",
            ),
        ]

    def __str__(self) -> str:
        return f"autoscale of {self.service.name}"

    def clean(self) -> None:
        errors = {}
        if self.min_workers > self.max_workers:
            errors["min_workers"] = [f"must not exceed max_workers ({self.max_workers})"]
        if self.max_queue_seconds is not None and not self.max_queue_seconds > 0:
            errors["max_queue_seconds"] = [
                "must be above 0 seconds; leave it unset (null) to scale on lag alone"
            ]
        if errors:
            raise ValidationError(errors)


class ScaleAction(models.TextChoices):
    UP = "up"
    DOWN = "down"
    HOLD = "hold"


class ScaleDecision(models.Model):
    """One decision of the autoscaler, with what it saw. A hold is recorded when its
    reason differs from the service's previous decision, so the log shows every step
    without a row per beat tick."""

    Action = ScaleAction

    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="scale_decisions")
    decided_at = models.DateTimeField()
    action = models.CharField(max_length=8, choices=ScaleAction.choices)
    reason = models.CharField(max_length=32, help_text="a code: lag_above, idle, cooldown, ...")
    message = models.TextField(help_text="the reason, as a person reads it, with the numbers")
    workers_before = models.PositiveIntegerField()
    workers_after = models.PositiveIntegerField()
    lag = models.BigIntegerField(null=True, blank=True, help_text="messages not yet committed")
    lag_source = models.CharField(max_length=16, blank=True, help_text="kafka or heartbeats")
    queue_seconds = models.FloatField(
        null=True, blank=True, help_text="how long the oldest request not yet committed waited"
    )
    inputs = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-decided_at", "-id"]
        indexes = [models.Index(fields=["service", "-decided_at"], name="scale_decision_recent")]
        constraints = [
            models.CheckConstraint(
                condition=Q(action__in=ScaleAction.values), name="scale_decision_action_known"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.service.name} {self.action} ({self.reason})"


class JoinToken(models.Model):
    """A single-use secret, put in one worker's cloud-init user-data and exchanged once at
    its first boot for its own credentials (POST /api/v1/workers/join). User-data stays
    readable from the server's metadata service for its whole life, so the token is
    useless once used or expired. Only its sha256 is kept. Bound to the worker by name
    (unique, and the server's own name): a provisioner renders user-data from a spec,
    and the worker's row is read only at the exchange."""

    worker_name = models.CharField(max_length=100, db_index=True)
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    server_id = models.CharField(max_length=200, blank=True, help_text="who exchanged it")

    def __str__(self) -> str:
        return f"join token of {self.worker_name}"


class JoinFailure(models.Model):
    """One refused join, by caller address: too many in a window are refused with 429."""

    client = models.CharField(max_length=64, db_index=True)
    at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"join refused for {self.client} at {self.at:%Y-%m-%d %H:%M:%S}"
