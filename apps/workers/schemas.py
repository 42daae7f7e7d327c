"""Schemas of the workers API: workers, their heartbeats, their logs. Log inputs refuse
unknown fields."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from django.utils import timezone
from ninja import Field, Schema
from pydantic import ConfigDict

from apps.workers.liveness import heartbeat_age_s, liveness
from apps.workers.models import Worker, WorkerLogLine
from apps.workers.selectors import LOG_DEFAULT_LIMIT, LOG_MAX_LIMIT
from memrun.wire.stats import LATENCY_BUCKETS


class WorkerOut(Schema):
    """A worker as last reported. `liveness` is live, suspect (silent 30 s) or dead
    (silent 60 s: reconcile replaces it); unknown before its first heartbeat."""

    name: str
    service: str
    deployment_version: int | None
    provider: str
    provider_ref: str
    address: str
    state: str
    liveness: str
    last_heartbeat_at: datetime | None
    heartbeat_age_s: float | None
    in_flight: int | None
    partitions: list[int]
    lag: int | None
    stats: dict[str, Any]
    machine: dict[str, Any] = Field(
        description="the provisioner's view of its machine: server_id, server_type, location, "
        "status, created, ipv4, ipv6, private_ips, price_hourly_eur and price_monthly_eur "
        "(net, the type's price in its location); empty for a local process"
    )
    created_at: datetime

    @staticmethod
    def resolve_service(obj: Worker) -> str:
        return obj.service.name

    @staticmethod
    def resolve_deployment_version(obj: Worker) -> int | None:
        return obj.deployment.version if obj.deployment else None

    @staticmethod
    def resolve_liveness(obj: Worker) -> str:
        if obj.state in Worker.FINISHED_STATES:
            return obj.state
        return liveness(obj.last_heartbeat_at, timezone.now()).value

    @staticmethod
    def resolve_heartbeat_age_s(obj: Worker) -> float | None:
        age = heartbeat_age_s(obj.last_heartbeat_at, timezone.now())
        return None if age is None else round(age, 1)

    @staticmethod
    def resolve_in_flight(obj: Worker) -> int | None:
        value = obj.stats.get("in_flight")
        return value if isinstance(value, int) else None

    @staticmethod
    def resolve_partitions(obj: Worker) -> list[int]:
        value = obj.stats.get("partitions")
        return sorted(p for p in value if isinstance(p, int)) if isinstance(value, list) else []

    @staticmethod
    def resolve_lag(obj: Worker) -> int | None:
        value = obj.stats.get("lag")
        return value if isinstance(value, int) else None


class LatencyWindowIn(Schema):
    requests: int = Field(0, ge=0)
    errors: int = Field(0, ge=0)
    latency_counts: list[Annotated[int, Field(ge=0)]] = Field(
        [], max_length=LATENCY_BUCKETS, description="per bucket of memrun.wire.stats"
    )


class RequestsIn(LatencyWindowIn):
    """Handled requests since the worker started, and over the last minute; handler
    latency counted into the fixed buckets of `memrun.wire.stats.LATENCY_BOUNDS_MS`."""

    total: int = Field(0, ge=0)
    latency_sum_ms: float = Field(0.0, ge=0)
    last_minute: LatencyWindowIn = LatencyWindowIn()


class HeartbeatIn(Schema):
    """A worker's report of itself (worker_daemon/report.py shapes it). Besides the
    fields named here, the counters in `stats` are kept as reported; the whole report
    is at most `services.HEARTBEAT_MAX_BYTES` of JSON."""

    state: Literal["booting", "ready", "draining", "stopped"]
    deployment_id: int | None = None
    in_flight: int = Field(0, ge=0)
    concurrency: int | None = Field(None, ge=0)
    partitions: list[int] = []
    partition_lag: dict[str, int] = Field({}, description="lag of each owned partition")
    lag: int | None = None
    requests: RequestsIn | None = None
    config: dict[str, Any] | None = Field(
        None, description="the settings it runs: its deployment's ServiceConfig"
    )
    cache: dict[str, Any] = Field(
        {}, description="per tier (memory, disk, remote): hits, used/capacity bytes; largest"
    )
    exit_code: int | None = Field(None, description="with state stopped: the exit code")
    error: str = Field("", description="with state stopped: why it could not run")
    hot_sets: dict[str, list[list[Any]]] = Field(
        {},
        description="per partition, what its requests read, newest first: [[url, size_bytes, "
        "version, last_access_s], ...]; handed to the partition's next owner",
    )
    stats: dict[str, Any] = {}


class HandoffOut(Schema):
    hot_sets: dict[str, list[list[Any]]] = Field(
        description="per asked partition, what the service's other workers last reported "
        "reading on it, newest first: [[url, size_bytes, version, last_access_s], ...]"
    )


class HeartbeatOut(Schema):
    action: Literal["run", "drain"] = Field(
        description="run: carry on; drain: stop fetching, finish in-flight, commit, leave "
        "the group, report stopped and exit 0"
    )


Level = Literal["debug", "info", "warning", "error", "critical"]


class LogLineIn(Schema):
    """`ts` is epoch seconds or ISO 8601; a longer `message` is cut, saying so."""

    model_config = ConfigDict(extra="forbid")

    ts: datetime
    level: Level = "info"
    event: str = Field("log", min_length=1, max_length=100)
    request_id: str = Field("", max_length=100)
    message: str = ""
    fields: dict[str, Any] = Field(default_factory=dict)


class LogBatchIn(Schema):
    model_config = ConfigDict(extra="forbid")

    lines: list[LogLineIn]


class LogIngestOut(Schema):
    accepted: int


class LogQueryIn(Schema):
    """`since`: ISO 8601, epoch seconds, or the `next_since` of the previous page."""

    model_config = ConfigDict(extra="forbid")

    since: str | None = None
    until: str | None = None
    request_id: str | None = None
    level: Level | None = Field(None, description="this level and above")
    text: str | None = Field(None, max_length=200, description="lines whose message has it")
    limit: int = Field(LOG_DEFAULT_LIMIT, ge=1, le=LOG_MAX_LIMIT)


class ServiceLogQueryIn(LogQueryIn):
    worker: str | None = Field(None, description="only this worker's lines")


class LogLineOut(Schema):
    id: int
    ts: datetime
    received_at: datetime
    worker: str
    level: str
    event: str
    request_id: str
    message: str
    fields: dict[str, Any]

    @staticmethod
    def resolve_worker(obj: WorkerLogLine) -> str:
        return str(obj.worker_name)  # annotated by worker_log_page


class LogPageOut(Schema):
    lines: list[LogLineOut]
    next_since: str
    more: bool


class WarmObjectOut(Schema):
    tier: str = Field(description="memory (an object in RAM) or disk (a file, by URL)")
    name: str
    size_bytes: int
    hits: int | None = Field(None, description="requests it served (hottest only)")
    last_access_s: float | None = Field(None, description="epoch seconds (hottest only)")


class WorkerWarmthOut(Schema):
    """One running worker: what it owns and what its cache holds, as last reported."""

    name: str
    state: str
    deployment_version: int | None
    heartbeat_age_s: float | None
    partitions: list[int]
    memory_used_bytes: int
    disk_used_bytes: int
    disk_objects: int
    s3_fetches: int = Field(description="real downloads from S3 or the source")
    s3_fetched_bytes: int
    adopted_bytes: int = Field(description="taken over from a stopped worker's cache")
    largest: list[WarmObjectOut] = Field(description="the biggest cached objects (at most 10)")
    hottest: list[WarmObjectOut] = Field(description="the most requested files (at most 10)")


class ServiceWarmthOut(Schema):
    service: str
    workers: list[WorkerWarmthOut]
