"""Reconcile's decisions, as a pure function of data: desired vs live workers -> actions.

`plan_service` sees one service's deployments, its workers (as recorded from heartbeats)
and what its provisioner reports, at `now`, and returns what to do; reconcile.py loads
the data under the service's row lock and carries the actions out. No I/O here, so every
rule is tested on plain values.

The rules, in order:
1. Rollout failure. While the newest deployment is pending or rolling, one of its workers
   that exits with an error before it was ever ready, or that is not ready within the
   boot timeout, fails the deployment (with the reason and the log tail) and stops its
   workers; the version before it keeps serving.
2. Liveness. A worker silent for DEAD_AFTER_S is dead; one that never became ready within
   the boot timeout is dead too. Dead workers are destroyed and replaced by rule 4.
3. Drain grace. A draining worker that has not stopped within the grace is stopped.
4. Counts. The target (newest deployment that has not failed) gets `desired` workers;
   extra ones drain, not-ready ones first. Workers of older deployments drain only as
   target workers become ready, so capacity never drops during a rollout; once enough
   are ready and every old worker was asked to drain, the target becomes active and the
   deployment before it superseded.
5. Cleanup. A process or machine that belongs to no running worker is destroyed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from apps.workers.liveness import DEAD_AFTER_S, heartbeat_age_s

PENDING, ROLLING, ACTIVE, SUPERSEDED, FAILED = (
    "pending",
    "rolling",
    "active",
    "superseded",
    "failed",
)
PROVISIONING, BOOTING, READY, DRAINING, STOPPED, DEAD = (
    "provisioning",
    "booting",
    "ready",
    "draining",
    "stopped",
    "dead",
)
FINISHED = (STOPPED, DEAD)


@dataclass(frozen=True)
class Policy:
    boot_timeout_s: float = 600.0
    drain_grace_s: float = 360.0
    dead_after_s: float = DEAD_AFTER_S


@dataclass(frozen=True)
class ServiceView:
    name: str
    desired_workers: int
    min_workers: int
    max_workers: int

    @property
    def desired(self) -> int:
        return min(max(self.desired_workers, self.min_workers), self.max_workers)


@dataclass(frozen=True)
class DeploymentView:
    id: int
    version: int
    status: str


@dataclass(frozen=True)
class WorkerView:
    name: str
    deployment_id: int | None
    state: str
    created_at: datetime
    state_changed_at: datetime
    last_heartbeat_at: datetime | None = None
    ready_at: datetime | None = None
    exit_code: int | None = None
    error: str = ""


@dataclass(frozen=True)
class ProcessView:
    """What the provisioner reports of a worker's process or machine."""

    name: str
    running: bool
    exit_code: int | None = None
    log_tail: str = ""


# -- actions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateWorker:
    deployment_id: int


@dataclass(frozen=True)
class MarkDead:
    worker: str
    reason: str


@dataclass(frozen=True)
class Drain:
    worker: str
    reason: str


@dataclass(frozen=True)
class MarkStopped:
    worker: str
    reason: str


@dataclass(frozen=True)
class Destroy:
    """Stop and free the process or machine of worker `worker` (idempotent)."""

    worker: str


@dataclass(frozen=True)
class StartRollout:
    deployment_id: int


@dataclass(frozen=True)
class FailDeployment:
    deployment_id: int
    reason: str
    log_tail: str


@dataclass(frozen=True)
class ActivateDeployment:
    """The target becomes active; `supersede` are the deployments it replaces."""

    deployment_id: int
    supersede: tuple[int, ...]


Action = (
    CreateWorker
    | MarkDead
    | Drain
    | MarkStopped
    | Destroy
    | StartRollout
    | FailDeployment
    | ActivateDeployment
)


def plan_service(
    *,
    service: ServiceView,
    deployments: Sequence[DeploymentView],
    workers: Sequence[WorkerView],
    processes: Sequence[ProcessView],
    now: datetime,
    policy: Policy = Policy(),
) -> list[Action]:
    """What to do for one service now. `workers` are its unfinished workers plus every
    worker of a deployment still rolling out; `processes` what its provisioner lists."""
    actions: list[Action] = []
    by_process = {p.name: p for p in processes}
    gone: set[str] = set()  # workers stopped or declared dead by this plan
    target = _target(deployments)

    if target is not None and target.status in (PENDING, ROLLING):
        failure = _rollout_failure(target, workers, by_process, now, policy)
        if failure is not None:
            reason, log_tail = failure
            actions.append(FailDeployment(target.id, reason, log_tail))
            for worker in workers:
                if worker.deployment_id == target.id and worker.state not in FINISHED:
                    actions.append(MarkStopped(worker.name, f"v{target.version} failed"))
                    gone.add(worker.name)
            target = _target([d for d in deployments if d.id != target.id])

    unfinished = [w for w in workers if w.state not in FINISHED and w.name not in gone]
    for worker in unfinished:
        dead = _dead_reason(worker, now, policy)
        if dead is not None:
            actions.append(MarkDead(worker.name, dead))
            gone.add(worker.name)
        elif worker.state == DRAINING and _age(worker.state_changed_at, now) >= (
            policy.drain_grace_s
        ):
            actions.append(
                MarkStopped(worker.name, f"still draining after {policy.drain_grace_s:g} s")
            )
            gone.add(worker.name)

    running = [w for w in unfinished if w.name not in gone and w.state != DRAINING]
    if target is None:
        actions += [Drain(w.name, "the service has no deployment to run") for w in running]
    else:
        actions += _counts(service, target, deployments, running)

    keep = {w.name for w in unfinished if w.name not in gone}
    actions += [Destroy(name) for name in sorted(gone)]
    actions += [Destroy(p.name) for p in processes if p.name not in keep and p.name not in gone]
    return actions


def _target(deployments: Sequence[DeploymentView]) -> DeploymentView | None:
    """The newest deployment that has not failed (nor been superseded): what should run."""
    candidates = [d for d in deployments if d.status in (PENDING, ROLLING, ACTIVE)]
    return max(candidates, key=lambda d: d.version, default=None)


def _rollout_failure(
    target: DeploymentView,
    workers: Sequence[WorkerView],
    processes: dict[str, ProcessView],
    now: datetime,
    policy: Policy,
) -> tuple[str, str] | None:
    """(reason, log tail) when a worker of `target` failed before it was ever ready."""
    for worker in workers:
        if worker.deployment_id != target.id or worker.ready_at is not None:
            continue
        process = processes.get(worker.name)
        log_tail = process.log_tail if process is not None else ""
        if worker.state in FINISHED and worker.exit_code not in (None, 0):
            detail = f": {worker.error}" if worker.error else ""
            return (
                f"worker {worker.name} of v{target.version} exited with code "
                f"{worker.exit_code} before it was ready{detail}",
                log_tail,
            )
        if (
            process is not None
            and process.exit_code not in (None, 0)
            and worker.state not in FINISHED
        ):
            return (
                f"worker {worker.name} of v{target.version} exited with code "
                f"{process.exit_code} before it was ready",
                log_tail,
            )
        if worker.state not in FINISHED and _age(worker.created_at, now) >= policy.boot_timeout_s:
            return (
                f"worker {worker.name} of v{target.version} was not ready within the boot "
                f"timeout of {policy.boot_timeout_s:g} s (last state: {worker.state})",
                log_tail,
            )
    return None


def _dead_reason(worker: WorkerView, now: datetime, policy: Policy) -> str | None:
    age = heartbeat_age_s(worker.last_heartbeat_at, now)
    if age is not None and age >= policy.dead_after_s:
        return f"no heartbeat for {age:.0f} s"
    if worker.state in (PROVISIONING, BOOTING) and (
        _age(worker.created_at, now) >= policy.boot_timeout_s
    ):
        return f"not ready within the boot timeout of {policy.boot_timeout_s:g} s"
    return None


def _counts(
    service: ServiceView,
    target: DeploymentView,
    deployments: Sequence[DeploymentView],
    running: Sequence[WorkerView],
) -> list[Action]:
    actions: list[Action] = []
    desired = service.desired
    new = [w for w in running if w.deployment_id == target.id]
    old = [w for w in running if w.deployment_id != target.id]
    if target.status == PENDING:
        actions.append(StartRollout(target.id))
    actions += [CreateWorker(target.id) for _ in range(desired - len(new))]
    # Not-ready workers go first, then the newest: the oldest ready ones have warm caches.
    drain_order = sorted(new, key=lambda w: (w.state == READY, -w.created_at.timestamp()))
    extra = drain_order[: max(len(new) - desired, 0)]
    actions += [Drain(w.name, f"scaled to {desired}") for w in extra]
    ready_new = sum(1 for w in new if w.state == READY and w not in extra)
    keep_old = max(desired - ready_new, 0)
    old_order = sorted(old, key=lambda w: (w.state == READY, w.created_at.timestamp()))
    actions += [
        Drain(w.name, f"replaced by v{target.version}")
        for w in old_order[: max(len(old) - keep_old, 0)]
    ]
    if target.status != ACTIVE and ready_new >= desired and keep_old == 0:
        supersede = tuple(
            d.id
            for d in deployments
            if d.id != target.id
            and d.version < target.version
            and d.status
            in (
                PENDING,
                ROLLING,
                ACTIVE,
            )
        )
        actions.append(ActivateDeployment(target.id, supersede))
    return actions


def _age(since: datetime, now: datetime) -> float:
    return (now - since).total_seconds()
