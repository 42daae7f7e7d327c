"""`ServiceConfig`: a service's settings, validated, in plain units (bytes, seconds).

It travels in every package's manifest and is what the worker, the provisioner and the
control plane read; `MemoryService` builds one from what the user wrote.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from memrun.errors import ConfigError
from memrun.wire.sizes import parse_size
from memrun.wire.sticky import StickyTemplate

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,61}[a-z0-9]$")


def validate_service_name(name: object) -> str:
    """Service names become Kafka topics, group ids, folders and URLs: keep them plain."""
    if not isinstance(name, str) or not _NAME.match(name) or "--" in name:
        raise ConfigError(
            f"service name {name!r} is not valid: use 2-63 lowercase letters, digits and "
            "single '-', starting with a letter, e.g. 'matrix-qa'"
        )
    return name


def _positive_int(value: object, field: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{field} must be a whole number >= {minimum}, got {value!r}")
    return value


@dataclass(frozen=True)
class ServiceConfig:
    """A validated service definition, in plain units (bytes, seconds)."""

    name: str
    memory_bytes: int
    disk_bytes: int
    max_workers: int
    min_workers: int
    concurrency: int
    timeout_seconds: int
    sticky_key: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def service_config_build(
    name: str,
    *,
    memory: str | int = "4Gi",
    disk: str | int = "50Gi",
    max_workers: int = 1,
    min_workers: int = 1,
    concurrency: int = 16,
    timeout_seconds: int = 300,
    sticky_key: str | None = None,
) -> ServiceConfig:
    """A `ServiceConfig` from user units ("32Gi"); ConfigError names the first bad field."""
    max_workers = _positive_int(max_workers, "max_workers")
    min_workers = _positive_int(min_workers, "min_workers", minimum=0)
    if min_workers > max_workers:
        raise ConfigError(f"min_workers ({min_workers}) cannot exceed max_workers ({max_workers})")
    return ServiceConfig(
        name=validate_service_name(name),
        memory_bytes=parse_size(memory, field="memory"),
        disk_bytes=parse_size(disk, field="disk"),
        max_workers=max_workers,
        min_workers=min_workers,
        concurrency=_positive_int(concurrency, "concurrency"),
        timeout_seconds=_positive_int(timeout_seconds, "timeout_seconds"),
        sticky_key=str(StickyTemplate.parse(sticky_key)) if sticky_key else None,
    )
