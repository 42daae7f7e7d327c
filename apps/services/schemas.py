"""Input and output schemas of the services API. Inputs refuse unknown fields."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from django.urls import reverse
from ninja import Field, Schema
from pydantic import ConfigDict, PlainValidator, WithJsonSchema

from apps.services.models import Deployment, Service


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


class ServiceIn(Schema):
    model_config = ConfigDict(extra="forbid")

    name: str
    memory: Size = "4Gi"
    disk: Size = "50Gi"
    max_workers: int = 1
    min_workers: int = 1
    desired_workers: int | None = None
    concurrency: int = 16
    timeout_seconds: int = 300
    sticky_key: str | None = None
    partitions: int | None = None
    provider: str = "local"
    server_type: str = ""
    location: str = ""


class ServicePatch(Schema):
    """Only the fields sent are changed. `partitions` is accepted only unchanged."""

    model_config = ConfigDict(extra="forbid")

    memory: Size | None = None
    disk: Size | None = None
    max_workers: int | None = None
    min_workers: int | None = None
    desired_workers: int | None = None
    concurrency: int | None = None
    timeout_seconds: int | None = None
    sticky_key: str | None = None
    partitions: int | None = None
    provider: str | None = None
    server_type: str | None = None
    location: str | None = None


class ServiceOut(Schema):
    name: str
    memory: str
    memory_bytes: int
    disk: str
    disk_bytes: int
    min_workers: int
    desired_workers: int
    max_workers: int
    concurrency: int
    timeout_seconds: int
    sticky_key: str | None
    partitions: int
    provider: str
    server_type: str
    location: str
    request_topic: str
    dlq_topic: str
    created_at: datetime
    updated_at: datetime

    @staticmethod
    def resolve_sticky_key(obj: Service) -> str | None:
        return obj.sticky_key or None


class TokenIn(Schema):
    model_config = ConfigDict(extra="forbid")

    name: str


class TokenOut(Schema):
    id: int
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None


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
