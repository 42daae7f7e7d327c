"""Input and output schemas of the services API. Inputs refuse unknown fields."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, get_type_hints

from django.urls import reverse
from ninja import Schema
from pydantic import (
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    create_model,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from apps.services.models import Deployment, Service
from memrun.wire.config import SETTING_ARGS, SETTINGS, ServiceConfig, Setting


def _size_input(value: object) -> str | int:
    # The service parses the size (memrun's parse_size); here only its JSON type counts.
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError("expected a size such as '32Gi', or a number of bytes")
    return value


Size = Annotated[
    str | int,
    PlainValidator(_size_input),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "integer"}], "examples": ["32Gi"]}),
]


class ErrorOut(Schema):
    message: str
    details: dict[str, object]


# Bounds of what the database keeps in a PositiveIntegerField.
DB_INT_MAX = 2**31 - 1
SETTINGS_LATER = (
    "a service's settings come with its code, not with its creation: deploy it (memrun "
    "deploy handler.py, or POST /api/v1/services/{name}/deployments), then change them "
    "with PATCH /api/v1/services/{name}"
)


class ServiceIn(Schema):
    """A service before its first deployment: its name and fleet (how many workers,
    where). Its settings (memory, disk, min/max workers, concurrency, timeout_seconds,
    sticky_key) come with its first deploy; sending them here is a 422."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=63)
    desired_workers: int = Field(1, ge=0, le=DB_INT_MAX)
    partitions: int | None = Field(None, ge=1, le=DB_INT_MAX)
    provider: str = "local"
    server_type: str = ""
    location: str = ""

    @model_validator(mode="before")
    @classmethod
    def _no_settings(cls, data: object) -> object:
        settings = sorted(set(data) & set(SETTING_ARGS)) if isinstance(data, dict) else []
        if settings:
            # One error per setting, each on its own field, like any other bad input.
            raise ValidationError.from_exception_data(
                cls.__name__,
                [
                    InitErrorDetails(
                        type=PydanticCustomError("settings_come_with_deploy", SETTINGS_LATER),
                        loc=(setting,),
                        input=data[setting],
                    )
                    for setting in settings
                ],
            )
        return data


def _setting_input(setting: Setting) -> tuple[Any, Any]:
    """The PATCH field of a setting: its JSON type, not nullable (null is a 422), except
    the sticky key, whose null means "none"."""
    if setting.kind == "size":
        return Size, Field(None, description=setting.help)
    if setting.kind == "count":
        return int, Field(None, ge=setting.minimum, le=DB_INT_MAX, description=setting.help)
    if setting.kind == "names":
        return list[str], Field(None, max_length=100, description=setting.help)
    return str | None, Field(None, max_length=200, description=setting.help)


ServicePatch = create_model(
    "ServicePatch",
    __base__=Schema,
    __doc__=(
        "Only the fields sent are changed. A setting (memory, disk, min_workers, "
        "max_workers, concurrency, timeout_seconds, sticky_key, secrets) makes a new deployment of "
        "the live package with the changed settings, which rolls out like a deploy (409 "
        "before the first deploy); the fleet fields change the service. `partitions` is "
        "accepted only unchanged; null is accepted only for sticky_key (none)."
    ),
    __config__=None,
    **{setting.arg: _setting_input(setting) for setting in SETTINGS},
    desired_workers=(int, Field(None, ge=0, le=DB_INT_MAX)),
    partitions=(int, Field(None, ge=1, le=DB_INT_MAX)),
    provider=(str, Field(None, max_length=16)),
    server_type=(str, Field(None, max_length=32)),
    location=(str, Field(None, max_length=32)),
)
ServicePatch.model_config["extra"] = "forbid"
ServicePatch.model_rebuild(force=True)


_SETTING_HELP = {setting.field: setting.help for setting in SETTINGS}
ServiceConfigOut = create_model(
    "ServiceConfigOut",
    __base__=Schema,
    __doc__="A service's settings, in plain units (bytes, seconds): memrun.wire.ServiceConfig.",
    **{
        name: (hint, Field(description=_SETTING_HELP.get(name, "the service's name")))
        for name, hint in get_type_hints(ServiceConfig).items()
    },
)


class ServiceOut(Schema):
    """A service: its fleet, and `config`, the settings of its live deployment (version
    `version`); both null before the first deploy."""

    name: str
    desired_workers: int
    partitions: int
    provider: str
    server_type: str
    location: str
    request_topic: str
    dlq_topic: str
    version: int | None
    config: ServiceConfigOut | None  # type: ignore[valid-type]
    created_at: datetime
    updated_at: datetime

    @staticmethod
    def resolve_config(obj: Service) -> dict[str, object] | None:
        config = obj.config
        return None if config is None else config.to_dict()

    @staticmethod
    def resolve_version(obj: Service) -> int | None:
        live = obj.live_deployment
        return None if live is None else live.version


class GrantIn(Schema):
    """A role (invoke, read, deploy or admin) on a service, or on all when it is null."""

    model_config = ConfigDict(extra="forbid")

    service: str | None = None
    role: str


class GrantOut(Schema):
    service: str | None
    role: str


class TokenIn(Schema):
    model_config = ConfigDict(extra="forbid")

    name: str
    grants: list[GrantIn] | None = Field(
        None, description="what the token may do; default: a copy of its user's grants"
    )
    user: str | None = Field(None, description="its owner (admins only); default: the caller")


class TokenOut(Schema):
    id: int
    name: str
    user: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    grants: list[GrantOut]


class TokenCreatedOut(TokenOut):
    secret: str


class HealthComponentOut(Schema):
    ok: bool
    detail: str
    elapsed_ms: float


class HealthOut(Schema):
    """The error shape too: 503 carries the same `message` and per-component `details`."""

    ok: bool
    message: str
    details: dict[str, HealthComponentOut]


class RequestOut(Schema):
    """A request's state: "queued" until a worker finished it, then "done" with the outcome
    (`ok` and `result`, or `error` with its `type` and `message`)."""

    request_id: str
    status: str
    ok: bool | None = None
    result: object = None
    error: dict[str, str] | None = None
    worker: str | None = None
    duration_ms: float | None = None
    attempt: int | None = None
    meta: dict[str, object] = {}


class BatchOut(Schema):
    """The outcomes of an invoke-batch, in the payloads' order."""

    results: list[RequestOut]


class DeploymentOut(Schema):
    """One version of a service. `workers_ready` counts this version's ready workers;
    `workers_desired` is the service's current target. `degraded` is true while its
    workers keep dying (`degraded_reason` says why, with a log tail); meanwhile no
    replacement starts before `crash_backoff_until`."""

    id: int
    service: str
    version: int
    status: str
    failure_reason: str
    degraded: bool
    degraded_reason: str
    degraded_at: datetime | None
    crash_backoff_until: datetime | None
    sha256: str
    size_bytes: int
    message: str
    entry: str | None
    config: dict[str, object] | None
    dependencies: list[str]
    created_by: str | None
    created_at: datetime
    workers_ready: int
    workers_desired: int
    package_url: str

    @staticmethod
    def resolve_service(obj: Deployment) -> str:
        return obj.service.name

    @staticmethod
    def resolve_entry(obj: Deployment) -> str | None:
        return obj.manifest.get("entry")

    @staticmethod
    def resolve_config(obj: Deployment) -> dict[str, object] | None:
        return obj.manifest.get("config")

    @staticmethod
    def resolve_dependencies(obj: Deployment) -> list[str]:
        return list(obj.manifest.get("dependencies") or [])

    @staticmethod
    def resolve_created_by(obj: Deployment) -> str | None:
        return obj.created_by.get_username() if obj.created_by else None

    @staticmethod
    def resolve_workers_ready(obj: Deployment) -> int:
        return getattr(obj, "workers_ready", 0)

    @staticmethod
    def resolve_workers_desired(obj: Deployment) -> int:
        return obj.service.desired_workers

    @staticmethod
    def resolve_package_url(obj: Deployment) -> str:
        return reverse("api-v1:deployments_package", kwargs={"deployment_id": obj.pk})


class CredentialsRotatedOut(Schema):
    """The service's Kafka credential generation after the rotation, and the version that
    rolls its workers onto the new password (null before the first deploy)."""

    generation: int
    version: int | None


class RollbackIn(Schema):
    """Deploy an earlier version again; without `version`, the one active before the
    current active one."""

    model_config = ConfigDict(extra="forbid")

    version: int | None = None
    message: str = ""


class DeadLetterOut(Schema):
    """A failed or timed-out request as its worker recorded it on the DLQ. `id` is
    `{partition}-{offset}` there; `attempt` the attempt that failed."""

    id: str
    request_id: str
    key: str | None
    error_type: str
    error_message: str
    timed_out: bool
    attempt: int
    worker: str
    failed_at: datetime


class ReplayOut(Schema):
    """A replay: the dead letter, the new request it became (poll GET /requests/{id}),
    who asked and when."""

    dead_letter_id: str
    original_request_id: str
    request_id: str
    attempt: int
    actor: str
    at: datetime


class DeadLetterDetailOut(DeadLetterOut):
    """One dead letter with its payload, traceback, and the replays made of it."""

    payload: str
    traceback: str
    replays: list[ReplayOut]


class DeadLetterPageOut(Schema):
    items: list[DeadLetterOut]
    next_cursor: str | None = None


class ReplayIn(Schema):
    model_config = ConfigDict(extra="forbid")

    ids: list[str] = Field(description="dead letter ids to replay, each once")


class SecretIn(Schema):
    """All the pairs of a secret: they replace whatever it held. Keys are env var names
    that memrun does not set itself (not MEMRUN_*, KAFKA_*, REDIS_URL, PATH, ...)."""

    model_config = ConfigDict(extra="forbid")

    values: dict[str, str] = Field(
        description="KEY -> VALUE; the values are never shown again", max_length=100
    )


class SecretOut(Schema):
    """A secret as it is shown: its keys and a fingerprint of its values (which changes
    when any value does), never the values; `services` use it."""

    name: str
    keys: list[str]
    fingerprint: str
    services: list[str]
    created_at: datetime
    updated_at: datetime


class SecretSetOut(SecretOut):
    """`rolled`: the services that got a new deployment because the values changed."""

    rolled: list[str]
