"""Schemas of the provisioning API."""

from __future__ import annotations

from datetime import datetime

from ninja import Field, Schema
from pydantic import ConfigDict

from apps.services.schemas import DB_INT_MAX

WINDOW_MAX_S = 7 * 24 * 3600.0


class ScaleIn(Schema):
    workers: int = Field(ge=0, description="desired workers, within min_workers..max_workers")


class GcIn(Schema):
    dry_run: bool = Field(default=False, description="only say what would be freed")


class GcKindOut(Schema):
    kind: str = Field(description="artifacts, worker_folders or venvs")
    count: int
    size_bytes: int


class GcItemOut(Schema):
    kind: str
    location: str = Field(description="a package URL or a folder")
    size_bytes: int


class GcOut(Schema):
    """What was freed (or, with dry_run, what would be): per kind and item by item."""

    dry_run: bool
    kinds: list[GcKindOut]
    items: list[GcItemOut]
    size_bytes: int


class AutoscaleIn(Schema):
    """Only the fields sent change. `enabled` false turns autoscaling off (the policy is
    kept); the range lies within the live deployment's min_workers..max_workers.
    `max_queue_seconds` null turns that trigger off (a null elsewhere changes nothing)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = None
    min_workers: int | None = Field(None, ge=0, le=DB_INT_MAX)
    max_workers: int | None = Field(None, ge=1, le=DB_INT_MAX)
    lag_per_worker: int | None = Field(
        None, ge=1, le=DB_INT_MAX, description="add a worker above this lag per worker"
    )
    max_queue_seconds: float | None = Field(
        None,
        gt=0,
        le=WINDOW_MAX_S,
        description="add a worker when the oldest request waits longer (null: off)",
    )
    scale_up_window_s: float | None = Field(
        None, ge=0, le=WINDOW_MAX_S, description="how long the lag must stay above it"
    )
    scale_down_window_s: float | None = Field(
        None, ge=0, le=WINDOW_MAX_S, description="how long workers must stay idle to remove one"
    )
    scale_up_cooldown_s: float | None = Field(
        None, ge=0, le=WINDOW_MAX_S, description="no scale-up sooner after a change"
    )
    scale_down_cooldown_s: float | None = Field(
        None, ge=0, le=WINDOW_MAX_S, description="no scale-down sooner after a change"
    )

    def changes(self) -> dict[str, object]:
        """The fields sent, but a null only where it means off."""
        return {
            field: value
            for field, value in self.dict(exclude_unset=True).items()
            if value is not None or field == "max_queue_seconds"
        }


class ScaleDecisionOut(Schema):
    """One decision: `action` up, down or hold; `reason` a code (lag_above,
    queue_time_above, idle, pressure_window, idle_window, cooldown, at_max, at_min,
    steady, lag_unknown, below_min, above_max) and `message` the same with its numbers."""

    decided_at: datetime
    action: str
    reason: str
    message: str
    workers_before: int
    workers_after: int
    lag: int | None
    lag_source: str
    queue_seconds: float | None = Field(
        description="how long the oldest request not yet committed had waited (null: not measured)"
    )
    inputs: dict[str, object]


class AutoscaleOut(Schema):
    """A service's autoscaling policy (defaults when never set: off) and its recent
    decisions, newest first."""

    service: str
    enabled: bool
    min_workers: int
    max_workers: int
    lag_per_worker: int
    max_queue_seconds: float | None
    scale_up_window_s: float
    scale_down_window_s: float
    scale_up_cooldown_s: float
    scale_down_cooldown_s: float
    desired_workers: int
    decisions: list[ScaleDecisionOut]


class JoinIn(Schema):
    token: str = Field(min_length=1, max_length=200, description="the join token (mrj_...)")
    server_id: int = Field(ge=1, description="the server's id, from its metadata service")


class JoinOut(Schema):
    """The joined worker's environment: its own credential and its service's settings."""

    worker: str
    env: dict[str, str]
