"""Autoscaling end to end on real Kafka, with real workers under the local supervisor: a
backlog grows the service within the window, idleness shrinks it back (the removed worker
drains), every request's true result arrives, steady load below the threshold flips
nothing, and the decision log explains each step. The autoscaler's pass is called
directly with a clock the test moves (never beat's schedule); the lag is real."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import TestCase
from django.utils import timezone

from apps.provisioning.autoscaling import autoscale_service
from apps.provisioning.lag import service_lag
from apps.provisioning.models import ScaleDecision
from apps.provisioning.services import autoscale_policy_set
from apps.workers.stats import service_stats_get
from tests.provisioning.test_end_to_end import (  # fixtures, used by name
    Scenario,
    eager_celery,
    scenario,
    supervisor,
    worker_grace_period_s,
)
from tests.worker_daemon.harness import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
__all__ = ["eager_celery", "scenario", "supervisor", "worker_grace_period_s"]

UP_WINDOW_S = 20
DOWN_WINDOW_S = 60
COOLDOWN_S = 30


def tick(scenario: Scenario, at: Any) -> tuple[str, str, int]:
    with TestCase.captureOnCommitCallbacks(execute=True):
        decision = autoscale_service(service_id=scenario.service.pk, now=at)
    assert decision is not None
    return decision.action, decision.reason, decision.workers


def submit(scenario: Scenario, users: range, *, sleep_s: float) -> list[str]:
    return [
        scenario.submit_payload({"user": user, "sleep_s": sleep_s}, sticky_template="user")
        for user in users
    ]


def check_answers(scenario: Scenario, ids: list[str], users: list[int]) -> set[str]:
    """Every request answered with its own result; the workers that answered."""
    outcomes = scenario.outcomes(ids)
    assert all(o is not None and o.ok for o in outcomes)
    assert [(o.result["user"], o.result["double"]) for o in outcomes] == [(u, 2 * u) for u in users]
    return {o.result["worker"] for o in outcomes}


def lag_of(scenario: Scenario) -> int | None:
    lag = service_lag(service=scenario.name, partitions=scenario.service.partitions)
    return None if lag is None else lag.total


def test_a_backlog_grows_the_service_and_idleness_shrinks_it_without_loss(
    scenario: Scenario,
) -> None:
    v1 = scenario.deploy("slow.py")
    scenario.until(lambda: scenario.status(v1) == "active", "v1 to be live")
    autoscale_policy_set(
        service=scenario.service,
        enabled=True,
        min_workers=1,
        max_workers=2,
        lag_per_worker=10,
        scale_up_window_s=UP_WINDOW_S,
        scale_down_window_s=DOWN_WINDOW_S,
        scale_up_cooldown_s=COOLDOWN_S,
        scale_down_cooldown_s=COOLDOWN_S,
    )

    # A backlog: 120 requests of 0.25 s on one worker with 2 slots is 15 s of work.
    users = list(range(120))
    ids = submit(scenario, range(120), sleep_s=0.25)
    wait_for(lambda: (lag_of(scenario) or 0) > 20, timeout_s=60, what="a backlog in Kafka")
    t0 = timezone.now()
    assert tick(scenario, t0) == ("hold", "pressure_window", 1)
    assert tick(scenario, t0 + timedelta(seconds=UP_WINDOW_S - 1)) == ("hold", "pressure_window", 1)
    assert tick(scenario, t0 + timedelta(seconds=UP_WINDOW_S)) == ("up", "lag_above", 2)
    scenario.until(
        lambda: (
            len(ready := scenario.workers("ready")) == 2
            and all(w.stats.get("partitions") for w in ready)
        ),
        "a second ready worker with partitions",
    )
    check_answers(scenario, ids, users)

    # Idle: nothing waits, nothing runs. The lag is back to 0 once the commits land.
    wait_for(lambda: lag_of(scenario) == 0, timeout_s=60, what="the backlog committed")
    # Idleness also counts what the workers last reported in flight (their heartbeats).
    wait_for(
        lambda: service_stats_get(service=scenario.service).in_flight == 0,
        timeout_s=60,
        what="the workers to report nothing in flight",
    )
    t1 = t0 + timedelta(seconds=UP_WINDOW_S + COOLDOWN_S)
    assert tick(scenario, t1) == ("hold", "idle_window", 2)
    assert tick(scenario, t1 + timedelta(seconds=DOWN_WINDOW_S)) == ("down", "idle", 1)
    scenario.until(
        lambda: len(scenario.workers("ready")) == 1 and len(scenario.workers("stopped")) == 1,
        "one worker drained",
    )
    [survivor] = scenario.workers("ready")

    # Steady load below the threshold: every tick holds, the fleet stays at one worker.
    steady_ids: list[str] = []
    at = t1 + timedelta(seconds=DOWN_WINDOW_S + COOLDOWN_S)
    steady: list[tuple[str, str, int]] = []
    for round_ in range(8):
        # The test's clock moves 15 s a round, the real one far less: each round's requests
        # are answered and committed before its tick, as they would be in 15 real seconds.
        users_now = range(1000 + 3 * round_, 1003 + 3 * round_)
        ids_now = submit(scenario, users_now, sleep_s=0.05)
        check_answers(scenario, ids_now, list(users_now))
        wait_for(lambda: lag_of(scenario) == 0, timeout_s=60, what="this round committed")
        steady_ids += ids_now
        at += timedelta(seconds=15)
        steady.append(tick(scenario, at))
    assert {action for action, _, _ in steady} == {"hold"}
    assert {workers for _, _, workers in steady} == {1}
    assert check_answers(scenario, steady_ids, list(range(1000, 1024))) == {survivor.name}
    assert scenario.service.desired_workers == 1

    # The log explains each step: what it saw, what it did, why.
    log = list(ScaleDecision.objects.filter(service=scenario.service).order_by("decided_at"))
    steps = [(d.action, d.reason, d.workers_before, d.workers_after) for d in log]
    assert steps[:4] == [
        ("hold", "pressure_window", 1, 1),
        ("up", "lag_above", 1, 2),
        ("hold", "idle_window", 2, 2),
        ("down", "idle", 2, 1),
    ]
    assert all(action == "hold" for action, _, _, _ in steps[4:])
    up, down = log[1], log[3]
    assert up.lag is not None and up.lag > 20 and up.lag_source == "kafka"
    assert f"lag {up.lag} on 1 worker(s)" in up.message and "1 -> 2 worker(s)" in up.message
    assert down.lag == 0 and "2 -> 1 worker(s), the removed one drains" in down.message
