"""Writes for workers: registration, heartbeats, and every state change (each recorded as a
WorkerEvent); and their log lines. Reconcile decides; these functions only record what was
decided or reported.

Log retention is enforced cheaply: an ingest prunes its own worker when its batch takes
the global line id past a multiple of MEMRUN_LOG_PRUNE_EVERY_LINES (so a worker is pruned
about that often per line it sends, busy workers most), and the beat task
`prune_worker_logs` sweeps every worker as a backstop. So a worker may hold a little more
than the bound (MEMRUN_LOG_MAX_LINES_PER_WORKER lines, none older than
MEMRUN_LOG_RETENTION_S by the worker's clock) between two prunes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from apps.common.credentials import WORKER_TOKEN_PREFIX, secret_hash, secret_new
from apps.common.errors import DomainError, full_clean_or_raise
from apps.common.events import ServiceFleetChanged, event_emit_on_commit
from apps.services.models import Deployment, Provider, Service
from apps.workers.models import Worker, WorkerEvent, WorkerLogLine, WorkerState

# What a worker may say about itself; the control plane alone decides `dead`.
REPORTED_STATES = (
    WorkerState.BOOTING,
    WorkerState.READY,
    WorkerState.DRAINING,
    WorkerState.STOPPED,
)
RUNNING_STATES = (WorkerState.PROVISIONING, WorkerState.BOOTING, WorkerState.READY)
# A heartbeat's stats are kept on the Worker row: bounded, so 500 workers stay cheap to
# read (the worker sends a few KB: totals, owned partitions' lag, top cache entries).
HEARTBEAT_MAX_BYTES = 64 * 1024
Action = Literal["run", "drain"]
ACTION_RUN: Action = "run"
ACTION_DRAIN: Action = "drain"
# What one POST may carry (the API refuses a larger body before reading it); the
# worker's shipper sends well under both.
MAX_BATCH_LINES = 1000
MAX_BATCH_BYTES = 1024 * 1024
_TRUNCATED = "... [{} more characters]"


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
    size = len(json.dumps(stats, default=str))
    if size > HEARTBEAT_MAX_BYTES:
        raise DomainError(
            f"the heartbeat's stats are {size} bytes of JSON; the limit is "
            f"{HEARTBEAT_MAX_BYTES}: send totals and owned partitions only",
            status=422,
            details={"size": size, "limit": HEARTBEAT_MAX_BYTES},
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
            event_emit_on_commit(event=ServiceFleetChanged(service_id=worker.service_id))
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


def worker_credential_renew(*, worker: Worker) -> str:
    """A new credential for the worker; the old one stops working, the new one is
    returned and not stored. For a machine made again (the first attempt failed), and for
    a remote worker's join: the credential minted at `worker_create` never leaves the
    appliance, so nothing in its user-data or its server's metadata is a usable secret."""
    credential = secret_new(prefix=WORKER_TOKEN_PREFIX)
    Worker.objects.filter(pk=worker.pk).update(credential_hash=secret_hash(credential))
    worker.credential_hash = secret_hash(credential)
    return credential


def worker_set_machine(*, worker: Worker, machine: Mapping[str, Any]) -> None:
    """Record what the provisioner says of the worker's machine (server, type, cost)."""
    if worker.machine != machine:
        Worker.objects.filter(pk=worker.pk).update(machine=dict(machine))
        worker.machine = dict(machine)


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


def _reported_reason(state: str, stats: Mapping[str, Any]) -> str:
    if state != WorkerState.STOPPED:
        return "reported by the worker"
    code = stats.get("exit_code")
    error = stats.get("error")
    if code in (None, 0):
        return "the worker stopped"
    return f"the worker exited with code {code}" + (f": {error}" if error else "")


@dataclass(frozen=True)
class LogLineData:
    """One line as the worker sent it."""

    ts: datetime
    level: str
    event: str
    request_id: str
    message: str
    fields: dict[str, Any]


def worker_log_ingest(
    *, worker: Worker, lines: list[LogLineData], now: datetime | None = None
) -> int:
    """Store `lines` of `worker` in one INSERT; returns how many. Messages longer than
    WorkerLogLine.MESSAGE_MAX_CHARS are cut, saying by how much; more than
    MAX_BATCH_LINES lines is a 413."""
    if len(lines) > MAX_BATCH_LINES:
        raise DomainError(
            f"the log batch has {len(lines)} lines; the limit is {MAX_BATCH_LINES}: "
            "send smaller batches",
            status=413,
            details={"lines": len(lines), "limit": MAX_BATCH_LINES},
        )
    if not lines:
        return 0
    received_at = now or timezone.now()
    rows = [
        WorkerLogLine(
            worker=worker,
            service_id=worker.service_id,
            ts=line.ts,
            received_at=received_at,
            level=line.level,
            event=line.event,
            request_id=line.request_id,
            message=_bounded(line.message),
            fields=line.fields,
        )
        for line in lines
    ]
    with transaction.atomic():
        created = WorkerLogLine.objects.bulk_create(rows)
    ids = [row.pk for row in created if row.pk is not None]
    if ids and _crosses_prune_mark(min(ids), max(ids)):
        worker_logs_prune(worker=worker, now=received_at)
    return len(rows)


def worker_logs_prune(*, worker: Worker | None = None, now: datetime | None = None) -> int:
    """Delete `worker`'s (default: every worker's) lines beyond the retention bound;
    returns how many went. Two queries per worker: find the count cut-off, delete."""
    cutoff = (now or timezone.now()) - timedelta(seconds=settings.MEMRUN_LOG_RETENTION_S)
    worker_ids = (
        [worker.pk] if worker is not None else list(Worker.objects.values_list("pk", flat=True))
    )
    return sum(_prune_one(worker_id=worker_id, cutoff=cutoff) for worker_id in worker_ids)


def _prune_one(*, worker_id: int, cutoff: datetime) -> int:
    keep = settings.MEMRUN_LOG_MAX_LINES_PER_WORKER
    lines = WorkerLogLine.objects.filter(worker_id=worker_id)
    # The newest line beyond the count bound, found on the (worker, ts) index.
    beyond = lines.order_by("-ts", "-id").values_list("ts", "pk")[keep : keep + 1].first()
    doomed = Q(ts__lt=cutoff)
    if beyond is not None:
        ts, pk = beyond
        doomed |= Q(ts__lt=ts) | Q(ts=ts, pk__lte=pk)
    deleted, _ = lines.filter(doomed).delete()
    return deleted


def _crosses_prune_mark(first_id: int, last_id: int) -> bool:
    every = settings.MEMRUN_LOG_PRUNE_EVERY_LINES
    return (first_id - 1) // every != last_id // every


def _bounded(message: str) -> str:
    limit = WorkerLogLine.MESSAGE_MAX_CHARS
    if len(message) <= limit:
        return message
    # Leave room for the note (its count has at most as many digits as the length).
    head = limit - len(_TRUNCATED.format(len(message)))
    return message[:head] + _TRUNCATED.format(len(message) - head)
