"""The autoscaler's pass: measure a service's lag (and, when its policy sets a maximum, its
time in queue), decide (apps/provisioning/autoscale.py), set its desired worker count and
record the decision. Run by beat every MEMRUN_AUTOSCALE_INTERVAL_S
(apps/provisioning/tasks.py); tests call it directly.

A changed count is announced as ServiceFleetChanged after the commit, so reconcile
starts or drains workers (a removed worker drains: it finishes what it holds).
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.common.events import ServiceFleetChanged, event_emit_on_commit
from apps.provisioning import autoscale
from apps.provisioning.lag import service_lag
from apps.provisioning.models import POLICY_FIELDS, AutoscalePolicy, ScaleDecision
from apps.provisioning.queuetime import queue_heads, queue_seconds
from apps.services.models import Service
from apps.workers.stats import service_stats_get

logger = logging.getLogger(__name__)


def autoscale_service(*, service_id: int, now: datetime | None = None) -> autoscale.Decision | None:
    """One autoscaling pass over a service: measure its lag (Kafka; the workers'
    heartbeats when Kafka does not answer) and, when its policy sets max_queue_seconds,
    how long the oldest request not yet committed has waited (Kafka only), decide
    (apps/provisioning/autoscale.py), set the desired worker count (reconcile then starts
    or drains workers) and record the decision. None when the service has no policy on,
    or no live deployment."""
    now = now or timezone.now()
    service = (
        Service.objects.filter(pk=service_id, autoscale__enabled=True)
        .select_related("autoscale")
        .first()
    )
    if service is None or service.config is None:
        return None
    # Measured before the row locks: a slow broker must not hold them.
    lag = service_lag(service=service.name, partitions=service.partitions)
    waited = None
    if lag is not None and service.autoscale.max_queue_seconds is not None:
        heads = queue_heads(service=service.name, starts=lag.backlog_starts)
        waited = queue_seconds(heads=heads, now=now)
    stats = service_stats_get(service=service)
    lag_value, source = (lag.total, "kafka") if lag is not None else (stats.lag, "heartbeats")
    with transaction.atomic():
        locked = Service.objects.select_for_update().get(pk=service.pk)
        policy = AutoscalePolicy.objects.select_for_update().filter(service=locked).first()
        config = locked.config
        if policy is None or not policy.enabled or config is None:
            return None
        before = locked.desired_workers
        observed = autoscale.Observed(
            lag=lag_value,
            workers=before,
            in_flight=stats.in_flight,
            concurrency=config.concurrency,
            partitions=locked.partitions,
            bounds=(config.min_workers, config.max_workers),
            queue_seconds=waited,
        )
        decision = autoscale.decide(
            policy=autoscale.Policy(
                **{f: getattr(policy, f) for f in POLICY_FIELDS if f != "enabled"}
            ),
            observed=observed,
            windows=autoscale.Windows(
                policy.pressure_since, policy.idle_since, policy.last_scaled_at
            ),
            now=now,
        )
        policy.pressure_since = decision.windows.pressure_since
        policy.idle_since = decision.windows.idle_since
        policy.last_scaled_at = decision.windows.last_scaled_at
        policy.save(update_fields=["pressure_since", "idle_since", "last_scaled_at", "updated_at"])
        if decision.workers != before:
            locked.desired_workers = decision.workers
            locked.save(update_fields=["desired_workers", "updated_at"])
            event_emit_on_commit(event=ServiceFleetChanged(service_id=locked.pk))
        last = ScaleDecision.objects.filter(service=locked).first()
        if (
            decision.action != "hold"
            or last is None
            or (last.action, last.reason)
            != (
                "hold",
                decision.reason,
            )
        ):
            ScaleDecision.objects.create(
                service=locked,
                decided_at=now,
                action=decision.action,
                reason=decision.reason,
                message=decision.message,
                workers_before=before,
                workers_after=decision.workers,
                lag=lag_value,
                lag_source=source if lag_value is not None else "",
                queue_seconds=waited,
                inputs={
                    "in_flight": stats.in_flight,
                    "workers_ready": stats.workers_ready,
                    "concurrency": config.concurrency,
                    "partitions_with_lag": None if lag is None else lag.partitions_with_lag,
                    "lag_per_worker": policy.lag_per_worker,
                    "max_queue_seconds": policy.max_queue_seconds,
                    "min_workers": policy.min_workers,
                    "max_workers": policy.max_workers,
                },
            )
            _prune_decisions(locked)
    return decision


def _prune_decisions(service: Service) -> None:
    keep = settings.MEMRUN_AUTOSCALE_DECISIONS_KEPT
    stale = ScaleDecision.objects.filter(service=service).values_list("pk", flat=True)[keep:]
    ids = list(stale)
    if ids:
        ScaleDecision.objects.filter(pk__in=ids).delete()


def autoscale_all(*, now: datetime | None = None) -> dict[str, autoscale.Decision | None]:
    """One pass over every service whose policy is on; a failing one is skipped (the
    next tick retries) so that one service cannot stop the others' scaling."""
    done: dict[str, autoscale.Decision | None] = {}
    for service_id, name in (
        Service.objects.filter(autoscale__enabled=True).order_by("name").values_list("pk", "name")
    ):
        try:
            done[name] = autoscale_service(service_id=service_id, now=now)
        except Exception:
            logger.exception("autoscaling of service %s failed; the next tick retries", name)
    return done
