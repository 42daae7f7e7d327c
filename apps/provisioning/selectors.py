"""Reads of provisioning: a service's autoscaling policy and recent decisions."""

from __future__ import annotations

from dataclasses import dataclass

from apps.provisioning.models import AutoscalePolicy, ScaleDecision
from apps.services.models import Service

DECISIONS_SHOWN = 20


@dataclass(frozen=True)
class AutoscaleStatus:
    """The policy (an unsaved default, off, when never set) and the newest decisions."""

    service: str
    policy: AutoscalePolicy
    desired_workers: int
    decisions: list[ScaleDecision]


def autoscale_status_get(*, service: Service, limit: int = DECISIONS_SHOWN) -> AutoscaleStatus:
    """Two queries."""
    policy = AutoscalePolicy.objects.filter(service=service).first()
    if policy is None:
        config = service.config
        policy = AutoscalePolicy(
            service=service,
            min_workers=config.min_workers if config else 1,
            max_workers=max(config.max_workers, 1) if config else 1,
        )
    decisions = list(ScaleDecision.objects.filter(service=service)[:limit])
    return AutoscaleStatus(service.name, policy, service.desired_workers, decisions)
