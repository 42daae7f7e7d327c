"""Reconcile one service: load what is, plan (apps/provisioning/plan.py), carry it out.

The service row is locked (select_for_update) for the whole pass, so concurrent passes
(beat, a deploy, a heartbeat) never both create the same worker. Database changes commit
together; the provisioner's create and destroy run after the commit (on_commit), so a
rolled-back pass starts nothing, and what a failed create leaves behind the next passes
mend: a worker row whose machine was never made gets its create again (backends create
idempotently, by the worker's name), a machine without a row is destroyed once it is
older than MEMRUN_ORPHAN_GRACE_S, and a row whose machine is gone that long is dead and
replaced.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta

import redis
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from apps.provisioning import plan as p
from apps.provisioning.provisioners import LiveWorker, Provisioner, WorkerSpec, provisioner_for
from apps.provisioning.specs import worker_spec_build
from apps.services.models import Deployment, Service
from apps.services.redis_users import redis_user_ensure
from apps.services.services import (
    deployment_back_off,
    deployment_set_degraded,
    deployment_set_status,
)
from apps.workers.models import Worker
from apps.workers.services import (
    worker_create,
    worker_credential_renew,
    worker_drain,
    worker_mark_dead,
    worker_mark_stopped,
    worker_set_machine,
    worker_set_provider_ref,
)

logger = logging.getLogger(__name__)

ACTOR = "reconcile"
LOG_TAIL_MAX_CHARS = 8000


def reconcile_service(
    *,
    service_id: int,
    now: datetime | None = None,
    provisioner: Provisioner | None = None,
) -> list[p.Action]:
    """One pass over the service `service_id`; returns the actions taken ([] when the
    service is gone)."""
    now = now or timezone.now()
    with transaction.atomic():
        service = Service.objects.select_for_update().filter(pk=service_id).first()
        if service is None:
            return []
        backend = provisioner or provisioner_for(service.provider)
        deployments = {
            d.pk: d
            for d in service.deployments.filter(
                status__in=[p.PENDING, p.ROLLING, p.ACTIVE]
            ).order_by("-version")
        }
        rolling = [pk for pk, d in deployments.items() if d.status != p.ACTIVE]
        workers = {
            w.name: w
            for w in service.workers.filter(
                ~Q(state__in=Worker.FINISHED_STATES) | Q(deployment_id__in=rolling)
            ).order_by("created_at")
        }
        live = {lw.name: lw for lw in backend.list({"service": service.name})}
        grace_s = settings.MEMRUN_ORPHAN_GRACE_S
        processes = _settled(live, workers, now=now, grace_s=grace_s)
        # The bounds are the target's (the newest live deployment); a draining worker may
        # be finishing a request of any live version's timeout.
        target = next(iter(deployments.values()), None)
        config = None if target is None else target.config
        timeout_s = max(
            (c.timeout_seconds for d in deployments.values() if (c := d.config)), default=0
        )
        policy = _policy(request_timeout_s=timeout_s)
        actions = p.plan_service(
            service=p.ServiceView(
                service.name,
                service.desired_workers,
                config.min_workers if config else 0,
                config.max_workers if config else 0,
            ),
            deployments=[
                p.DeploymentView(
                    d.pk, d.version, d.status, d.crash_backoff_until, bool(d.degraded_reason)
                )
                for d in deployments.values()
            ],
            workers=[
                _worker_view(w, machine_gone=_machine_gone(w, live, now=now, grace_s=grace_s))
                for w in workers.values()
            ],
            processes=[
                p.ProcessView(lw.name, lw.running, lw.exit_code, lw.log_tail) for lw in processes
            ],
            now=now,
            policy=policy,
            failures=_failures(
                list(deployments), since=now - timedelta(seconds=policy.crash_window_s)
            ),
        )
        for action in actions:
            _apply(action, service, deployments, workers, live, backend, now)
        _create_again(service, deployments, workers, live, actions, backend, now)
        for worker in workers.values():
            if worker.name in live and live[worker.name].machine:
                worker_set_machine(worker=worker, machine=live[worker.name].machine)
    if actions:
        logger.info("reconcile %s: %s", service.name, "; ".join(map(_describe, actions)))
    return actions


def reconcile_all(*, now: datetime | None = None) -> dict[str, list[p.Action]]:
    """One pass over every service; a failing service is logged and skipped. Each
    service's Redis user is ensured first: a restarted Redis has none."""
    done: dict[str, list[p.Action]] = {}
    services = list(Service.objects.order_by("name"))
    try:
        for service in services:
            redis_user_ensure(service=service)
    except redis.RedisError as exc:
        logger.warning("redis users not ensured (%s); the next pass retries", exc)
    for service in services:
        try:
            done[service.name] = reconcile_service(service_id=service.pk, now=now)
        except Exception:
            logger.exception("reconcile of service %s failed; the next pass retries", service.name)
    return done


def _policy(*, request_timeout_s: int) -> p.Policy:
    return p.Policy(
        boot_timeout_s=settings.MEMRUN_WORKER_BOOT_TIMEOUT_S,
        drain_grace_s=request_timeout_s + settings.MEMRUN_WORKER_DRAIN_GRACE_S,
        min_ready_s=settings.MEMRUN_ROLLOUT_MIN_READY_S,
        crash_window_s=settings.MEMRUN_CRASH_WINDOW_S,
        crash_backoff_base_s=settings.MEMRUN_CRASH_BACKOFF_BASE_S,
        crash_backoff_max_s=settings.MEMRUN_CRASH_BACKOFF_MAX_S,
        degraded_after_failures=settings.MEMRUN_CRASH_DEGRADED_AFTER_FAILURES,
    )


def _failures(deployment_ids: list[int], *, since: datetime) -> list[p.FailureView]:
    """Workers of these deployments that died since `since`: declared dead, or stopped
    with a non-zero exit code (a clean exit, or a stop the control plane decided, is not
    a death)."""
    found = []
    finished = Worker.objects.filter(
        deployment_id__in=deployment_ids,
        state__in=Worker.FINISHED_STATES,
        state_changed_at__gte=since,
    ).only("name", "deployment_id", "state", "state_changed_at", "stats")
    for worker in finished:
        view = _worker_view(worker)
        if worker.state == Worker.State.DEAD or view.exit_code not in (None, 0):
            reason = f"exit code {view.exit_code}" if view.exit_code is not None else "dead"
            if view.error:
                reason += f": {view.error}"
            assert worker.deployment_id is not None  # filtered on it
            found.append(
                p.FailureView(worker.deployment_id, worker.name, view.state_changed_at, reason)
            )
    return found


def _settled(
    live: dict[str, LiveWorker], workers: dict[str, Worker], *, now: datetime, grace_s: float
) -> list[LiveWorker]:
    """What the plan may act on: every machine, except one that no worker row names yet
    made less than `grace_s` ago (a create in flight, a listing that lags)."""
    unknown = {
        name
        for name, lw in live.items()
        if name not in workers
        and lw.created_at is not None
        and (now - lw.created_at).total_seconds() < grace_s
    }
    if unknown:
        unknown -= set(Worker.objects.filter(name__in=unknown).values_list("name", flat=True))
    return [lw for name, lw in live.items() if name not in unknown]


def _machine_gone(
    worker: Worker, live: dict[str, LiveWorker], *, now: datetime, grace_s: float
) -> bool:
    """The worker's machine was made (it has a ref) but the backend lists it no more."""
    return (
        bool(worker.provider_ref)
        and worker.name not in live
        and worker.state not in Worker.FINISHED_STATES
        and (now - worker.created_at).total_seconds() >= grace_s
    )


def _create_again(
    service: Service,
    deployments: dict[int, Deployment],
    workers: dict[str, Worker],
    live: dict[str, LiveWorker],
    actions: list[p.Action],
    backend: Provisioner,
    now: datetime,
) -> None:
    """Workers whose create failed (no ref, no machine, still provisioning) are made
    again, with a new credential; the backend finds a machine the first try made after
    all by its name, so this never makes a second."""
    touched = {a.worker for a in actions if isinstance(a, (p.MarkDead, p.MarkStopped, p.Drain))}
    retry_s = settings.MEMRUN_CREATE_RETRY_S
    for worker in workers.values():
        if (
            worker.state != Worker.State.PROVISIONING
            or worker.provider_ref
            or worker.name in live
            or worker.name in touched
            or worker.deployment_id not in deployments
            or (now - worker.created_at).total_seconds() < retry_s
        ):
            continue
        deployment = deployments[worker.deployment_id]
        spec = worker_spec_build(
            worker=worker,
            credential=worker_credential_renew(worker=worker),
            service=service,
            deployment=deployment,
        )
        transaction.on_commit(_later(_start, worker, backend, spec), robust=True)


def _start(worker: Worker, backend: Provisioner, spec: WorkerSpec) -> None:
    worker_set_provider_ref(worker=worker, provider_ref=backend.create(spec))


def _worker_view(worker: Worker, *, machine_gone: bool = False) -> p.WorkerView:
    exit_code = worker.stats.get("exit_code") if isinstance(worker.stats, dict) else None
    return p.WorkerView(
        name=worker.name,
        deployment_id=worker.deployment_id,
        state=worker.state,
        created_at=worker.created_at,
        state_changed_at=worker.state_changed_at or worker.created_at,
        last_heartbeat_at=worker.last_heartbeat_at,
        ready_at=worker.ready_at,
        exit_code=exit_code if isinstance(exit_code, int) else None,
        error=str(worker.stats.get("error") or "") if isinstance(worker.stats, dict) else "",
        machine_gone=machine_gone,
    )


def _apply(
    action: p.Action,
    service: Service,
    deployments: dict[int, Deployment],
    workers: dict[str, Worker],
    live: dict[str, LiveWorker],
    backend: Provisioner,
    now: datetime,
) -> None:
    match action:
        case p.CreateWorker(deployment_id):
            _create(service, deployments[deployment_id], backend, now)
        case p.MarkDead(name, reason):
            worker_mark_dead(worker=workers[name], reason=reason, now=now)
        case p.MarkStopped(name, reason):
            worker_mark_stopped(worker=workers[name], reason=reason, now=now)
        case p.Drain(name, reason):
            worker_drain(worker=workers[name], reason=reason, now=now)
            ref = live[name].ref if name in live else (workers[name].provider_ref or name)
            transaction.on_commit(_later(backend.drain, ref), robust=True)
        case p.Destroy(name):
            ref = live[name].ref if name in live else (workers[name].provider_ref or name)
            transaction.on_commit(_later(backend.destroy, ref), robust=True)
        case p.StartRollout(deployment_id):
            deployment_set_status(
                deployment=deployments[deployment_id],
                status=p.ROLLING,
                actor=ACTOR,
                reason="starting new-version workers",
                now=now,
            )
        case p.FailDeployment(deployment_id, reason, log_tail):
            tail = log_tail[-LOG_TAIL_MAX_CHARS:]
            deployment_set_status(
                deployment=deployments[deployment_id],
                status=p.FAILED,
                actor=ACTOR,
                reason=reason,
                failure_reason=f"{reason}\n\nlog tail:\n{tail}" if tail else reason,
                now=now,
            )
        case p.BackOff(deployment_id, until, reason):
            deployment_back_off(
                deployment=deployments[deployment_id],
                until=until,
                actor=ACTOR,
                reason=f"crash loop: {reason}",
                now=now,
            )
        case p.MarkDegraded(deployment_id, reason, log_tail):
            tail = log_tail[-LOG_TAIL_MAX_CHARS:]
            deployment_set_degraded(
                deployment=deployments[deployment_id],
                degraded_reason=f"{reason}\n\nlog tail:\n{tail}" if tail else reason,
                actor=ACTOR,
                reason=f"degraded: {reason}",
                now=now,
            )
        case p.ClearDegraded(deployment_id, reason):
            deployment_set_degraded(
                deployment=deployments[deployment_id],
                degraded_reason="",
                actor=ACTOR,
                reason=f"recovered: {reason}",
                now=now,
            )
        case p.ActivateDeployment(deployment_id, supersede):
            target = deployments[deployment_id]
            for old in supersede:
                deployment_set_status(
                    deployment=deployments[old],
                    status=p.SUPERSEDED,
                    actor=ACTOR,
                    reason=f"replaced by v{target.version}",
                    now=now,
                )
            deployment_set_status(
                deployment=target,
                status=p.ACTIVE,
                actor=ACTOR,
                reason="every desired worker is ready",
                now=now,
            )


def _create(service: Service, deployment: Deployment, backend: Provisioner, now: datetime) -> None:
    worker, credential = worker_create(
        service=service,
        deployment=deployment,
        name=f"{service.name}-v{deployment.version}-{secrets.token_hex(3)}",
        provider=service.provider,
        now=now,
    )
    spec = worker_spec_build(
        worker=worker, credential=credential, service=service, deployment=deployment
    )
    transaction.on_commit(_later(_start, worker, backend, spec), robust=True)


def _later(func: Callable[..., None], *args: object) -> Callable[[], None]:
    """`func(*args)` as an on_commit callback: a named function, since Django names the
    callback when it logs its failure (a functools.partial has no name to give)."""

    def call() -> None:
        func(*args)

    call.__qualname__ = getattr(func, "__qualname__", repr(func))
    return call


def _describe(action: p.Action) -> str:
    """A log line's worth: FailDeployment's log tail is left out."""
    values = (str(v).splitlines()[0][:200] if str(v) else "''" for v in vars(action).values())
    return f"{type(action).__name__}({', '.join(values)})"
