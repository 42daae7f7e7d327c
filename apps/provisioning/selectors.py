"""Reads of provisioning: a service's autoscaling policy and recent decisions."""

from __future__ import annotations

from dataclasses import dataclass

from apps.provisioning.models import AutoscalePolicy, ScaleDecision
from apps.services.models import Service

DECISIONS_SHOWN = 20


@dataclass(frozen=True)
class AutoscaleStatus:
    """The policy (an unsaved default, off, when never set), the newest decisions, and the
    live deployment's min_workers..max_workers (`bounds`; None before a deploy)."""

    service: str
    policy: AutoscalePolicy
    desired_workers: int
    decisions: list[ScaleDecision]
    bounds: tuple[int, int] | None


def autoscale_status_get(*, service: Service, limit: int = DECISIONS_SHOWN) -> AutoscaleStatus:
    """Two queries (one when no policy was ever set: decisions exist only under one),
    besides the live deployment's when `service` was read without it."""
    config = service.config
    policy = AutoscalePolicy.objects.filter(service=service).first()
    decisions = (
        [] if policy is None else list(ScaleDecision.objects.filter(service=service)[:limit])
    )
    if policy is None:
        policy = AutoscalePolicy(
            service=service,
            min_workers=config.min_workers if config else 1,
            max_workers=max(config.max_workers, 1) if config else 1,
        )
    bounds = (config.min_workers, config.max_workers) if config else None
    return AutoscaleStatus(service.name, policy, service.desired_workers, decisions, bounds)
