"""Services, their deployments, and the API tokens that call them.

Thin models: fields, constraints, the cross-field rules `full_clean` reports per field,
and small properties. Writes go through apps/services/services.py.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q

from apps.common.permissions import Role
from memrun.errors import ConfigError
from memrun.wire import protocol, validate_service_name
from memrun.wire.config import ServiceConfig, service_config_from_dict, validate_secret_name
from memrun.wire.sticky import StickyTemplate

DEFAULT_PARTITIONS = 64
DUPLICATE_NAME = "a service with this name already exists; pick another"


def validate_name(value: str) -> None:
    try:
        validate_service_name(value)
    except ConfigError as exc:
        raise ValidationError(exc.message, code="invalid") from None


def validate_sticky_key(value: str) -> None:
    """Migration 0001 names this validator: the sticky key was a Service column then."""
    try:
        StickyTemplate.parse(value)
    except ConfigError as exc:
        raise ValidationError(exc.message, code="invalid") from None


class Provider(models.TextChoices):
    LOCAL = "local", "Local processes"
    HETZNER = "hetzner", "Hetzner Cloud"


class Service(models.Model):
    """A warm service's identity and fleet: its name, the partition count of its request
    topic (fixed at creation and never below `max_workers`), how many workers it should
    run and where. Its settings (memory, concurrency, ...) are not kept here: they are
    the `ServiceConfig` of its live deployment (`config`), and change by deploying (I10)."""

    name = models.CharField(
        max_length=63,
        unique=True,
        validators=[validate_name],
        error_messages={"unique": DUPLICATE_NAME},
    )
    desired_workers = models.PositiveIntegerField(default=1)
    partitions = models.PositiveIntegerField(
        default=DEFAULT_PARTITIONS, validators=[MinValueValidator(1)]
    )
    provider = models.CharField(max_length=16, choices=Provider.choices, default=Provider.LOCAL)
    server_type = models.CharField(max_length=32, blank=True, help_text="e.g. ccx63 (Hetzner)")
    location = models.CharField(max_length=32, blank=True, help_text="e.g. fsn1 (Hetzner)")
    # Part of the service's Kafka password (apps/services/principals.py) and of its Redis
    # user's (apps/services/redis_users.py): bumped to rotate both.
    kafka_credential_generation = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(partitions__gte=1), name="service_partitions_positive"
            ),
            models.CheckConstraint(
                condition=Q(provider__in=Provider.values), name="service_provider_known"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def live_deployment(self) -> Deployment | None:
        """The deployment whose settings the service has now: the newest one that is
        pending, rolling or active (what reconcile rolls towards); None before the
        first deploy, or when every deployment failed."""
        prefetched = getattr(self, "live_deployments", None)
        if prefetched is not None:
            return prefetched[0] if prefetched else None
        return self.deployments.filter(status__in=LIVE_STATUSES).order_by("-version").first()

    @property
    def config(self) -> ServiceConfig | None:
        """The settings of the live deployment; None when it has none."""
        live = self.live_deployment
        return None if live is None else live.config

    @property
    def request_topic(self) -> str:
        return protocol.request_topic(self.name)

    @property
    def dlq_topic(self) -> str:
        return protocol.dlq_topic(self.name)


class DeploymentStatus(models.TextChoices):
    PENDING = "pending"
    ROLLING = "rolling"
    ACTIVE = "active"
    SUPERSEDED = "superseded"
    FAILED = "failed"


LIVE_STATUSES = (DeploymentStatus.PENDING, DeploymentStatus.ROLLING, DeploymentStatus.ACTIVE)


class Deployment(models.Model):
    """One version of a service: a package and the settings it runs with. Versions count
    up per service. `manifest` is the package's, with the deploy's settings merged into
    its `config`: a settings change is a new deployment of the same package."""

    Status = DeploymentStatus

    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="deployments")
    version = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    sha256 = models.CharField(
        max_length=64,
        validators=[RegexValidator(r"^[0-9a-f]{64}$", "a sha256 is 64 lowercase hex digits")],
    )
    size_bytes = models.BigIntegerField(validators=[MinValueValidator(1)])
    manifest = models.JSONField(default=dict, blank=True)
    artifact_url = models.CharField(max_length=1024)
    message = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    failure_reason = models.TextField(blank=True)
    # Crash-loop state, set by reconcile (apps/provisioning/plan.py). Degraded is a flag
    # beside the status, not a status: an active or a rolling version can crash-loop, and
    # the rollout keeps its course (the old version keeps serving) while it does.
    crash_backoff_until = models.DateTimeField(
        null=True, blank=True, help_text="no replacement worker is started before this"
    )
    degraded_reason = models.TextField(
        blank=True, help_text="why its workers keep dying, with a log tail; blank: healthy"
    )
    degraded_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="deployments",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["service", "-version"]
        constraints = [
            models.UniqueConstraint(
                fields=["service", "version"], name="deployment_version_unique"
            ),
            models.CheckConstraint(condition=Q(version__gte=1), name="deployment_version_positive"),
            models.CheckConstraint(
                condition=Q(status__in=DeploymentStatus.values), name="deployment_status_known"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.service.name} v{self.version}"

    @property
    def degraded(self) -> bool:
        return bool(self.degraded_reason)

    @property
    def config(self) -> ServiceConfig | None:
        """The settings this version runs with; None for a record without a valid one."""
        try:
            return service_config_from_dict(self.manifest.get("config"))
        except (ConfigError, AttributeError):
            return None


class ApiToken(models.Model):
    """A named bearer token of one user. Only the sha256 of the secret is stored: the
    secrets are 256-bit random, so a fast hash is enough and keeps every request cheap."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, help_text="the secret's first characters")
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "API token"
        constraints = [
            models.UniqueConstraint(
                fields=["user", "name"],
                condition=Q(revoked_at__isnull=True),
                name="apitoken_active_name_unique",
                violation_error_code="unique",
                violation_error_message="an active token has this name",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class GrantBase(models.Model):
    """A role on one service (`service`) or on all of them (`service` null); the roles
    are described in apps/common/permissions.py. Deleting the service deletes its grants:
    a service created again under the same name starts with none."""

    service = models.ForeignKey(
        Service, on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    role = models.CharField(max_length=16, choices=[(r.value, r.value) for r in Role])

    class Meta:
        abstract = True


class ApiTokenGrant(GrantBase):
    """A grant of a token; fixed at the token's creation (a token with other grants is a
    new token). It never gives more than the token's user holds."""

    token = models.ForeignKey(ApiToken, on_delete=models.CASCADE, related_name="grants")

    class Meta:
        ordering = ["token", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(role__in=[r.value for r in Role]), name="apitokengrant_role_known"
            ),
        ]


class UserGrant(GrantBase):
    """A grant of a user without staff status (a staff user holds admin on all): what it
    may do in the web UI, and the most any of its tokens may do."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memrun_grants"
    )

    class Meta:
        ordering = ["user", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(role__in=[r.value for r in Role]), name="usergrant_role_known"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user}: {self.role} on {self.service or 'all services'}"


class DeploymentEvent(models.Model):
    """One status change of a deployment: from where, to where, why, by whom, when.
    `actor` is a username, or the part of memrun that decided ("reconcile"). An event
    whose from and to statuses are equal records a change of health (a crash-loop backoff,
    degraded, recovered) rather than of status."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="events")
    from_status = models.CharField(max_length=16, choices=DeploymentStatus.choices, blank=True)
    to_status = models.CharField(max_length=16, choices=DeploymentStatus.choices)
    reason = models.TextField(blank=True)
    actor = models.CharField(max_length=150)
    at = models.DateTimeField()

    class Meta:
        ordering = ["deployment", "at", "id"]
        indexes = [models.Index(fields=["deployment", "at"], name="deploymentevent_deploy_at")]

    def __str__(self) -> str:
        return f"{self.deployment}: {self.from_status or '-'} -> {self.to_status}"


class DeadLetterReplay(models.Model):
    """One replay of a dead letter (a record on `memrun.dlq.{service}`, named by its
    partition and offset): who asked, when, and the new request it became."""

    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="replays")
    dead_letter_id = models.CharField(max_length=40, help_text="{partition}-{offset} on the DLQ")
    original_request_id = models.CharField(max_length=100)
    request_id = models.CharField(max_length=100, help_text="the new request, to poll")
    attempt = models.PositiveIntegerField()
    actor = models.CharField(max_length=150)
    at = models.DateTimeField()

    class Meta:
        ordering = ["service", "-at", "-id"]
        indexes = [
            models.Index(fields=["service", "dead_letter_id"], name="replay_service_letter"),
        ]

    def __str__(self) -> str:
        return f"{self.service.name} {self.dead_letter_id} -> {self.request_id}"


def validate_secret_name_field(value: str) -> None:
    try:
        validate_secret_name(value)
    except ConfigError as exc:
        raise ValidationError(exc.message, code="invalid") from None


class Secret(models.Model):
    """A named set of KEY=VALUE pairs that the services naming it (their `secrets`
    setting) get as env vars. `ciphertext` is the pairs Fernet-encrypted
    (apps/services/secretbox.py); only the key names and a keyed fingerprint are kept in
    the clear, for lists."""

    name = models.CharField(
        max_length=63,
        unique=True,
        validators=[validate_secret_name_field],
        error_messages={"unique": "a secret with this name already exists"},
    )
    ciphertext = models.TextField()
    keys = models.JSONField(default=list, help_text="the variable names, sorted")
    fingerprint = models.CharField(max_length=16, help_text="changes when any value changes")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
