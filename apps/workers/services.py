"""Writes for workers: registration, heartbeats, and every state change (each recorded as a
WorkerEvent). Reconcile decides; these functions only record what was decided or reported."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from django.db import transaction
from django.utils import timezone

from apps.common.credentials import WORKER_TOKEN_PREFIX, secret_hash, secret_new
from apps.common.errors import DomainError, full_clean_or_raise
from apps.services.models import Deployment, Provider, Service
from apps.workers.models import Worker, WorkerEvent, WorkerState

# What a worker may say about itself; the control plane alone decides `dead`.
REPORTED_STATES = (
    WorkerState.BOOTING,
    WorkerState.READY,
    WorkerState.DRAINING,
    WorkerState.STOPPED,
)
RUNNING_STATES = (WorkerState.PROVISIONING, WorkerState.BOOTING, WorkerState.READY)
Action = Literal["run", "drain"]
ACTION_RUN: Action = "run"
ACTION_DRAIN: Action = "drain"


def worker_create(
    *,
    service: Service,
    name: str,
    provider: str = Provider.LOCAL,
    deployment: Deployment | None = None,
    provider_ref: str = "",
    address: str = "",
    now: datetime | None = None,
) -> tuple[Worker, str]:
    """Register a worker about to be provisioned; returns it with its credential, a
    secret scoped to this worker alone, which is not stored (only its sha256 is)."""
    now = now or timezone.now()
    credential = secret_new(prefix=WORKER_TOKEN_PREFIX)
    worker = Worker(
        service=service,
        deployment=deployment,
        name=name,
        provider=provider,
        provider_ref=provider_ref,
        address=address,
        credential_hash=secret_hash(credential),
        state_changed_at=now,
    )
    with transaction.atomic():
        full_clean_or_raise(worker, what="worker")
        worker.save()
        WorkerEvent.objects.create(
            worker=worker, from_state="", to_state=worker.state, reason="created", at=now
        )
    return worker, credential


def worker_heartbeat(
    *, worker: Worker, state: str, stats: Mapping[str, Any], now: datetime | None = None
) -> Action:
    """Record a heartbeat: the worker's own state and stats. Returns the action for it:
    "drain" once it is draining (asked by the control plane, or on its own) or stopped,
    else "run".

    A worker asked to drain stays draining whatever it reports until it says stopped.
    """
    if state not in REPORTED_STATES:
        raise DomainError(
            f"state must be one of {', '.join(REPORTED_STATES)}; got {state!r}",
            status=422,
            details={"fields": {"state": [f"one of {', '.join(REPORTED_STATES)}"]}},
        )
    now = now or timezone.now()
    with transaction.atomic():
        locked = Worker.objects.select_for_update().get(pk=worker.pk)
        locked.last_heartbeat_at = now
        locked.stats = dict(stats)
        if locked.state in Worker.FINISHED_STATES:
            target = locked.state
        elif state == WorkerState.STOPPED:
            target = WorkerState.STOPPED
        elif locked.state == WorkerState.DRAINING:
            target = WorkerState.DRAINING
        else:
            target = WorkerState(state)
        before = locked.state
        _transition(locked, target, reason=_reported_reason(state, stats), now=now)
        locked.save()
        if locked.state != before and locked.state in (WorkerState.READY, WorkerState.STOPPED):
            # The rollout can move on now rather than at the next periodic pass.
            transaction.on_commit(functools.partial(_reconcile_soon, service_id=worker.service_id))
    worker.state, worker.last_heartbeat_at = locked.state, locked.last_heartbeat_at
    return ACTION_RUN if locked.state in RUNNING_STATES else ACTION_DRAIN


def worker_mark_dead(*, worker: Worker, reason: str, now: datetime | None = None) -> bool:
    """Declare an unfinished worker dead (silent, or never came up); False if it already
    finished. Its credential stops working at once."""
    return _worker_set_state(worker, WorkerState.DEAD, reason=reason, now=now)


def worker_drain(*, worker: Worker, reason: str, now: datetime | None = None) -> bool:
    """Ask a worker to drain (its next heartbeat answers "drain"); False if it is
    already draining or finished."""
    return _worker_set_state(worker, WorkerState.DRAINING, reason=reason, now=now)


def worker_mark_stopped(*, worker: Worker, reason: str, now: datetime | None = None) -> bool:
    """Record that a worker is gone for good (drain grace over, rollout failed)."""
    return _worker_set_state(worker, WorkerState.STOPPED, reason=reason, now=now)


def worker_set_provider_ref(*, worker: Worker, provider_ref: str) -> None:
    Worker.objects.filter(pk=worker.pk).update(provider_ref=provider_ref)
    worker.provider_ref = provider_ref


def _worker_set_state(worker: Worker, state: str, *, reason: str, now: datetime | None) -> bool:
    now = now or timezone.now()
    with transaction.atomic():
        locked = Worker.objects.select_for_update().get(pk=worker.pk)
        if locked.state in Worker.FINISHED_STATES or locked.state == state:
            return False
        _transition(locked, state, reason=reason, now=now)
        locked.save()
    worker.state, worker.state_changed_at = locked.state, locked.state_changed_at
    return True


def _transition(worker: Worker, state: str, *, reason: str, now: datetime) -> None:
    """Move `worker` (locked, saved by the caller) to `state`, recording the event."""
    if worker.state == state:
        return
    WorkerEvent.objects.create(
        worker=worker, from_state=worker.state, to_state=state, reason=reason, at=now
    )
    worker.state = state
    worker.state_changed_at = now
    if state == WorkerState.READY and worker.ready_at is None:
        worker.ready_at = now


def _reconcile_soon(*, service_id: int) -> None:
    # Imported here: provisioning builds on workers, not the other way round.
    from apps.provisioning.tasks import reconcile_soon

    reconcile_soon(service_id=service_id)


def _reported_reason(state: str, stats: Mapping[str, Any]) -> str:
    if state != WorkerState.STOPPED:
        return "reported by the worker"
    code = stats.get("exit_code")
    error = stats.get("error")
    if code in (None, 0):
        return "the worker stopped"
    return f"the worker exited with code {code}" + (f": {error}" if error else "")
