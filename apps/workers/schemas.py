"""Output schemas of the workers API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ninja import Schema

from apps.workers.models import Worker


class WorkerOut(Schema):
    name: str
    service: str
    deployment_version: int | None
    provider: str
    provider_ref: str
    address: str
    state: str
    last_heartbeat_at: datetime | None
    stats: dict[str, Any]
    created_at: datetime

    @staticmethod
    def resolve_service(obj: Worker) -> str:
        return obj.service.name

    @staticmethod
    def resolve_deployment_version(obj: Worker) -> int | None:
        return obj.deployment.version if obj.deployment else None
