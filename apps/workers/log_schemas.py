"""Input and output schemas of the worker logs API. Inputs refuse unknown fields."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from ninja import Schema
from pydantic import ConfigDict, Field

from apps.workers.log_selectors import DEFAULT_LIMIT, MAX_LIMIT
from apps.workers.models import WorkerLogLine

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
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)


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
