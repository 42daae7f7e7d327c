"""Reconcile's decisions on plain data: desired vs live workers -> actions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from apps.provisioning.plan import (
    ActivateDeployment,
    BackOff,
    ClearDegraded,
    CreateWorker,
    DeploymentView,
    Destroy,
    Drain,
    FailDeployment,
    FailureView,
    MarkDead,
    MarkDegraded,
    MarkStopped,
    Policy,
    ProcessView,
    ServiceView,
    StartRollout,
    WorkerView,
    plan_service,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
POLICY = Policy(boot_timeout_s=300, drain_grace_s=120, dead_after_s=60)
V1 = DeploymentView(id=1, version=1, status="active")


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def worker(
    name: str,
    *,
    deployment: int = 1,
    state: str = "ready",
    age_s: float = 600,
    silent_s: float | None = 5,
    ready: bool | None = None,
    state_age_s: float | None = None,
    exit_code: int | None = None,
    error: str = "",
) -> WorkerView:
    ready = state in ("ready", "draining") if ready is None else ready
    return WorkerView(
        name=name,
        deployment_id=deployment,
        state=state,
        created_at=ago(age_s),
        state_changed_at=ago(age_s if state_age_s is None else state_age_s),
        last_heartbeat_at=None if silent_s is None else ago(silent_s),
        ready_at=ago(age_s) if ready else None,
        exit_code=exit_code,
        error=error,
    )


def running(*names: str) -> list[ProcessView]:
    return [ProcessView(name, running=True) for name in names]


def plan(
    workers: list[WorkerView],
    *,
    desired: int = 2,
    deployments: list[DeploymentView] | None = None,
    processes: list[ProcessView] | None = None,
    min_workers: int = 0,
    max_workers: int = 8,
    failures: list[FailureView] | None = None,
    policy: Policy = POLICY,
) -> list[object]:
    return plan_service(
        service=ServiceView("svc", desired, min_workers, max_workers),
        deployments=[V1] if deployments is None else deployments,
        workers=workers,
        processes=running(*(w.name for w in workers)) if processes is None else processes,
        now=NOW,
        policy=policy,
        failures=failures or [],
    )


def test_creates_the_missing_workers() -> None:
    assert plan([], desired=2) == [CreateWorker(1), CreateWorker(1)]


def test_a_steady_service_needs_nothing() -> None:
    assert plan([worker("a"), worker("b")]) == []


def test_desired_is_held_within_min_and_max() -> None:
    assert plan([], desired=5, max_workers=1) == [CreateWorker(1)]
    assert plan([], desired=0, min_workers=1) == [CreateWorker(1)]


def test_scaling_down_drains_not_ready_then_newest_first() -> None:
    workers = [
        worker("old", age_s=900),
        worker("newer", age_s=100),
        worker("booting", state="booting", age_s=50),
    ]
    assert plan(workers, desired=1) == [
        Drain("booting", "scaled to 1"),
        Drain("newer", "scaled to 1"),
    ]


def test_a_suspect_worker_is_shown_but_not_acted_on() -> None:
    assert plan([worker("a", silent_s=45), worker("b")]) == []


def test_a_silent_worker_is_dead_destroyed_and_replaced() -> None:
    actions = plan([worker("a", silent_s=61), worker("b")])
    assert actions == [MarkDead("a", "no heartbeat for 61 s"), CreateWorker(1), Destroy("a")]


def test_a_worker_that_never_comes_up_is_dead_after_the_boot_timeout() -> None:
    stuck = worker("stuck", state="provisioning", silent_s=None, age_s=301)
    young = worker("young", state="provisioning", silent_s=None, age_s=10)
    actions = plan([stuck, young])
    assert actions == [
        MarkDead("stuck", "not ready within the boot timeout of 300 s"),
        CreateWorker(1),
        Destroy("stuck"),
    ]


def test_a_drain_past_its_grace_is_stopped() -> None:
    draining = worker("d", state="draining", state_age_s=121)
    actions = plan([worker("a"), worker("b"), draining])
    assert actions == [MarkStopped("d", "still draining after 120 s"), Destroy("d")]
    assert plan([worker("a"), worker("b"), worker("d", state="draining", state_age_s=60)]) == []


def test_processes_without_a_running_worker_are_destroyed() -> None:
    stopped = worker("done", state="stopped")
    actions = plan(
        [worker("a"), worker("b"), stopped], processes=running("a", "b", "done", "stray")
    )
    assert actions == [Destroy("done"), Destroy("stray")]


def test_without_a_deployment_nothing_runs() -> None:
    assert plan([], deployments=[]) == []
    assert plan([worker("a")], deployments=[]) == [
        Drain("a", "the service has no deployment to run")
    ]


# -- rolling deploys -------------------------------------------------------------------

V2 = DeploymentView(id=2, version=2, status="rolling")


def test_a_new_deployment_starts_new_workers_before_any_old_one_drains() -> None:
    pending = DeploymentView(id=2, version=2, status="pending")
    actions = plan([worker("a"), worker("b")], deployments=[V1, pending])
    assert actions == [StartRollout(2), CreateWorker(2), CreateWorker(2)]


def test_old_workers_drain_one_per_ready_new_worker() -> None:
    old = [worker("a", age_s=900), worker("b", age_s=800)]
    new = [
        worker("n1", deployment=2, age_s=30),
        worker("n2", deployment=2, state="booting", age_s=20),
    ]
    actions = plan(old + new, deployments=[V1, V2])
    assert actions == [Drain("a", "replaced by v2")]


def test_the_rollout_completes_when_every_new_worker_is_ready() -> None:
    old = [worker("b", age_s=800)]
    new = [worker("n1", deployment=2), worker("n2", deployment=2)]
    draining = [worker("a", state="draining", state_age_s=10)]
    actions = plan(old + new + draining, deployments=[V1, V2])
    assert actions == [Drain("b", "replaced by v2"), ActivateDeployment(2, supersede=(1,))]


def test_a_version_whose_worker_exits_before_ready_fails_and_the_old_one_serves() -> None:
    old = [worker("a"), worker("b")]
    crashed = worker(
        "n1", deployment=2, state="stopped", exit_code=1, error="init raised ValueError: boom"
    )
    booting = worker("n2", deployment=2, state="booting", age_s=20)
    processes = [
        *running("a", "b", "n2"),
        ProcessView("n1", running=False, exit_code=1, log_tail="Traceback ...\nValueError: boom"),
    ]
    actions = plan([*old, crashed, booting], deployments=[V1, V2], processes=processes)
    assert actions == [
        FailDeployment(
            2,
            "worker n1 of v2 exited with code 1 before it was ready: init raised ValueError: boom",
            "Traceback ...\nValueError: boom",
        ),
        MarkStopped("n2", "v2 failed"),
        Destroy("n2"),
        Destroy("n1"),
    ]


def test_a_crash_seen_only_by_the_provisioner_fails_the_rollout_too() -> None:
    new = worker("n1", deployment=2, state="booting", age_s=20)
    processes = [*running("a"), ProcessView("n1", running=False, exit_code=-9, log_tail="x")]
    actions = plan([worker("a"), new], desired=1, deployments=[V1, V2], processes=processes)
    assert actions[0] == FailDeployment(
        2, "worker n1 of v2 exited with code -9 before it was ready", "x"
    )


def test_a_new_version_not_ready_within_the_boot_timeout_fails() -> None:
    slow = worker("n1", deployment=2, state="booting", age_s=301)
    actions = plan([worker("a"), slow], desired=1, deployments=[V1, V2])
    assert isinstance(actions[0], FailDeployment)
    assert "not ready within the boot timeout of 300 s (last state: booting)" in (actions[0].reason)


def test_a_first_deployment_that_fails_leaves_nothing_running() -> None:
    first = DeploymentView(id=2, version=1, status="rolling")
    crashed = worker("n1", deployment=2, state="stopped", exit_code=1)
    actions = plan([crashed], deployments=[first], processes=[])
    assert [type(a) for a in actions] == [FailDeployment]


def test_a_new_worker_that_crashes_after_it_was_ready_is_only_replaced() -> None:
    crashed = worker("n1", deployment=2, state="ready", silent_s=61)
    actions = plan([worker("a"), worker("b"), crashed], deployments=[V1, V2])
    assert not any(isinstance(a, FailDeployment) for a in actions)
    assert MarkDead("n1", "no heartbeat for 61 s") in actions
    assert actions.count(CreateWorker(2)) == 2


def test_a_rollback_is_a_newer_deployment_like_any_other() -> None:
    failed = DeploymentView(id=2, version=2, status="failed")
    rollback = DeploymentView(id=3, version=3, status="pending")
    actions = plan([worker("a"), worker("b")], deployments=[V1, failed, rollback])
    assert actions == [StartRollout(3), CreateWorker(3), CreateWorker(3)]


def test_scaled_to_zero_during_a_rollout_activates_and_drains_everything() -> None:
    actions = plan([worker("a")], desired=0, deployments=[V1, V2])
    assert actions == [Drain("a", "replaced by v2"), ActivateDeployment(2, supersede=(1,))]


# -- crash loops -----------------------------------------------------------------------

CRASHY = Policy(
    boot_timeout_s=300,
    drain_grace_s=120,
    dead_after_s=60,
    crash_window_s=600,
    crash_backoff_base_s=10,
    crash_backoff_max_s=40,
    degraded_after_failures=3,
)


def died(*ages_s: float, deployment: int = 1) -> list[FailureView]:
    return [
        FailureView(deployment, f"gone-{i}", ago(age), "exit code 75")
        for i, age in enumerate(ages_s)
    ]


def test_a_single_death_is_replaced_at_once() -> None:
    assert plan([worker("a")], failures=died(1), policy=CRASHY) == [CreateWorker(1)]


def test_repeated_deaths_back_off_exponentially_from_the_last_one() -> None:
    # Second death: base (10 s) after it; third: 20 s; then 40 s, the maximum.
    for ages, wait_s in (((50, 5), 10), ((90, 50, 5), 20), ((200, 90, 50, 5), 40)):
        actions = plan([worker("a")], failures=died(*ages), policy=CRASHY)
        [backoff] = [a for a in actions if isinstance(a, BackOff)]
        assert backoff.until == ago(5) + timedelta(seconds=wait_s)
        assert f"{len(ages)} workers of v1 died" in backoff.reason
        assert not any(isinstance(a, CreateWorker) for a in actions)
    # Once the wait is over the replacement starts; deaths past the window are forgotten.
    assert plan([worker("a")], failures=died(50, 15), policy=CRASHY) == [CreateWorker(1)]
    assert plan([worker("a")], failures=died(900, 700, 5), policy=CRASHY) == [CreateWorker(1)]


def test_a_backoff_already_recorded_is_not_recorded_again() -> None:
    held = DeploymentView(1, 1, "active", backoff_until=ago(5) + timedelta(seconds=10))
    assert plan([worker("a")], deployments=[held], failures=died(50, 5), policy=CRASHY) == []


def test_enough_deaths_mark_the_target_degraded_with_the_log_tail() -> None:
    failures = died(90, 50, 5)
    processes = [ProcessView("gone-2", running=False, exit_code=75, log_tail="Traceback: stuck")]
    actions = plan([worker("a")], failures=failures, processes=processes, policy=CRASHY)
    [degraded] = [a for a in actions if isinstance(a, MarkDegraded)]
    assert degraded.deployment_id == 1 and degraded.log_tail == "Traceback: stuck"
    assert "3 workers of v1 died within 600 s" in degraded.reason
    assert "gone-2: exit code 75" in degraded.reason
    # Already degraded: not again; a window without deaths clears it.
    sick = DeploymentView(1, 1, "active", degraded=True)
    again = plan([worker("a")], deployments=[sick], failures=failures, policy=CRASHY)
    assert not any(isinstance(a, MarkDegraded) for a in again)
    assert plan([worker("a"), worker("b")], deployments=[sick], policy=CRASHY) == [
        ClearDegraded(1, "no worker of v1 died in 600 s")
    ]


def test_a_worker_declared_dead_now_counts_as_a_death() -> None:
    silent = worker("a", silent_s=120)
    actions = plan([silent, worker("b")], failures=died(30), policy=CRASHY)
    assert MarkDead("a", "no heartbeat for 120 s") in actions
    assert any(isinstance(a, BackOff) for a in actions)
    assert not any(isinstance(a, CreateWorker) for a in actions)


def test_a_rolling_version_retires_old_workers_only_after_min_ready() -> None:
    v2 = DeploymentView(2, 2, "rolling")
    policy = Policy(boot_timeout_s=300, drain_grace_s=120, dead_after_s=60, min_ready_s=30)
    old = [worker("old1"), worker("old2")]
    fresh = [worker("new1", deployment=2, age_s=10), worker("new2", deployment=2, age_s=10)]
    assert plan(old + fresh, deployments=[V1, v2], policy=policy) == []
    settled = [worker("new1", deployment=2, age_s=40), worker("new2", deployment=2, age_s=40)]
    actions = plan(old + settled, deployments=[V1, v2], policy=policy)
    assert Drain("old1", "replaced by v2") in actions and ActivateDeployment(2, (1,)) in actions


def test_once_a_rolling_version_was_ready_its_deaths_are_a_loop_not_a_failed_rollout() -> None:
    v2 = DeploymentView(2, 2, "rolling")
    was_ready = worker("v2-a", deployment=2, state="stopped", ready=True, exit_code=1)
    crashed = worker("v2-b", deployment=2, state="stopped", ready=False, exit_code=1)
    actions = plan(
        [worker("old1"), was_ready, crashed],
        desired=1,
        deployments=[V1, v2],
        failures=died(20, 5, deployment=2),
        policy=CRASHY,
    )
    assert not any(isinstance(a, FailDeployment) for a in actions)
    [backoff] = [a for a in actions if isinstance(a, BackOff)]
    assert backoff.deployment_id == 2 and backoff.until == ago(5) + timedelta(seconds=10)
    # Never ready: a broken package, failed at once (rule 1).
    never = worker("v2-a", deployment=2, state="stopped", ready=False, exit_code=1)
    actions = plan([worker("old1"), never], desired=1, deployments=[V1, v2], policy=CRASHY)
    assert any(isinstance(a, FailDeployment) for a in actions)
