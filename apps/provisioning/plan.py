"""Reconcile's decisions, as a pure function of data: desired vs live workers -> actions.

`plan_service` sees one service's deployments, its workers (as recorded from heartbeats)
and what its provisioner reports, at `now`, and returns what to do; reconcile.py loads
the data under the service's row lock and carries the actions out. No I/O here, so every
rule is tested on plain values.

The rules, in order:
1. Rollout failure. While the newest deployment is pending or rolling and none of its
   workers was ever ready, one that exits with an error, or that is not ready within the
   boot timeout, fails the deployment (with the reason and the log tail) and stops its
   workers; the version before it keeps serving. Once one was ready, the package is known
   to work, and later deaths are a crash loop (rule 5), not a broken package.
2. Liveness. A worker silent for DEAD_AFTER_S is dead; one that never became ready within
   the boot timeout is dead too, and so is one whose machine is gone (reconcile says so
   only after the orphan grace). Dead workers are destroyed and replaced by rule 4.
3. Drain grace. A draining worker that has not stopped within the grace is stopped.
4. Counts. The target (newest deployment that has not failed) gets `desired` workers;
   extra ones drain, not-ready ones first. Workers of older deployments drain only as
   target workers become ready (and stay ready for `min_ready_s`), so capacity never
   drops during a rollout; once enough are ready and every old worker was asked to drain,
   the target becomes active and the deployment before it superseded.
5. Crash loops. A worker of the target that dies (exits with an error, or goes silent)
   is replaced at once the first time; while more keep dying within `crash_window_s`,
   replacements back off exponentially (`crash_backoff_base_s` doubling up to
   `crash_backoff_max_s`, from the last death), and after `degraded_after_failures`
   deaths the target is marked degraded with the reason and the log tail. A window
   without deaths clears it.
6. Cleanup. A process or machine that belongs to no running worker is destroyed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

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
    min_ready_s: float = 0.0
    crash_window_s: float = 900.0
    crash_backoff_base_s: float = 10.0
    crash_backoff_max_s: float = 600.0
    degraded_after_failures: int = 3


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
    backoff_until: datetime | None = None
    degraded: bool = False


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
    machine_gone: bool = False


@dataclass(frozen=True)
class ProcessView:
    """What the provisioner reports of a worker's process or machine."""

    name: str
    running: bool
    exit_code: int | None = None
    log_tail: str = ""


@dataclass(frozen=True)
class FailureView:
    """A worker of `deployment_id` that died at `at`: it exited with an error or went
    silent, without being asked to stop."""

    deployment_id: int
    worker: str
    at: datetime
    reason: str


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


@dataclass(frozen=True)
class BackOff:
    """Start no replacement worker of `deployment_id` before `until`."""

    deployment_id: int
    until: datetime
    reason: str


@dataclass(frozen=True)
class MarkDegraded:
    deployment_id: int
    reason: str
    log_tail: str


@dataclass(frozen=True)
class ClearDegraded:
    deployment_id: int
    reason: str


Action = (
    CreateWorker
    | MarkDead
    | Drain
    | MarkStopped
    | Destroy
    | StartRollout
    | FailDeployment
    | ActivateDeployment
    | BackOff
    | MarkDegraded
    | ClearDegraded
)


def plan_service(
    *,
    service: ServiceView,
    deployments: Sequence[DeploymentView],
    workers: Sequence[WorkerView],
    processes: Sequence[ProcessView],
    now: datetime,
    policy: Policy = Policy(),
    failures: Sequence[FailureView] = (),
) -> list[Action]:
    """What to do for one service now. `workers` are its unfinished workers plus every
    worker of a deployment still rolling out; `processes` what its provisioner lists;
    `failures` its deployments' workers that died lately (at least `crash_window_s`)."""
    actions: list[Action] = []
    by_process = {p.name: p for p in processes}
    gone: set[str] = set()  # workers stopped or declared dead by this plan
    target = _target(deployments)

    if (
        target is not None
        and target.status in (PENDING, ROLLING)
        and not any(w.deployment_id == target.id and w.ready_at is not None for w in workers)
    ):
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
    died = list(failures)
    for worker in unfinished:
        dead = _dead_reason(worker, now, policy)
        if dead is not None:
            actions.append(MarkDead(worker.name, dead))
            gone.add(worker.name)
            if worker.deployment_id is not None:
                died.append(FailureView(worker.deployment_id, worker.name, now, dead))
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
        recent = sorted(
            (
                f
                for f in died
                if f.deployment_id == target.id and _age(f.at, now) < policy.crash_window_s
            ),
            key=lambda f: f.at,
        )
        actions += _crash_loop(target, recent, by_process, now, policy)
        hold = _held_until(recent, policy)
        counted = _counts(service, target, deployments, running, now, policy)
        if hold is not None and now < hold and any(isinstance(a, CreateWorker) for a in counted):
            counted = [a for a in counted if not isinstance(a, CreateWorker)]
            if target.backoff_until != hold:
                latest = recent[-1]
                counted.append(
                    BackOff(
                        target.id,
                        hold,
                        f"{len(recent)} workers of v{target.version} died within "
                        f"{policy.crash_window_s:g} s (last: {latest.worker}, {latest.reason}); "
                        f"the next replacement waits {(hold - latest.at).total_seconds():g} s",
                    )
                )
        actions += counted

    keep = {w.name for w in unfinished if w.name not in gone}
    actions += [Destroy(name) for name in sorted(gone)]
    actions += [Destroy(p.name) for p in processes if p.name not in keep and p.name not in gone]
    return actions


def _held_until(recent: Sequence[FailureView], policy: Policy) -> datetime | None:
    """When the next replacement may start: the first death is replaced at once (an
    accident), the n-th waits base * 2^(n-2) after the last one, up to the maximum."""
    if len(recent) < 2:
        return None
    delay = policy.crash_backoff_base_s * 2 ** min(len(recent) - 2, 32)
    return recent[-1].at + timedelta(seconds=min(delay, policy.crash_backoff_max_s))


def _crash_loop(
    target: DeploymentView,
    recent: Sequence[FailureView],
    processes: dict[str, ProcessView],
    now: datetime,
    policy: Policy,
) -> list[Action]:
    if not target.degraded and len(recent) >= policy.degraded_after_failures:
        latest = recent[-1]
        process = processes.get(latest.worker)
        return [
            MarkDegraded(
                target.id,
                f"{len(recent)} workers of v{target.version} died within "
                f"{policy.crash_window_s:g} s; the last, {latest.worker}: {latest.reason}",
                process.log_tail if process is not None else "",
            )
        ]
    if target.degraded and not recent:
        return [
            ClearDegraded(
                target.id, f"no worker of v{target.version} died in {policy.crash_window_s:g} s"
            )
        ]
    return []


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
    if worker.machine_gone:
        return "its machine is gone (deleted outside memrun?)"
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
    now: datetime,
    policy: Policy,
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
    ready_new = sum(
        1
        for w in new
        if w.state == READY
        and w not in extra
        and (w.ready_at is None or _age(w.ready_at, now) >= policy.min_ready_s)
    )
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
