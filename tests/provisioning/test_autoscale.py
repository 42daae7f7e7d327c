"""Autoscaling: the decision (pure, with the clock passed in), the lag and the time in
queue the control plane measures from real Kafka, the pass that records every decision,
and the policy's API.
The end-to-end run with real workers is test_autoscale_end_to_end.py."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from django.test import Client, TestCase
from django.utils import timezone

from apps.common.errors import DomainError
from apps.provisioning.autoscale import Decision, Observed, Policy, Windows, decide
from apps.provisioning.autoscaling import autoscale_service
from apps.provisioning.lag import service_lag
from apps.provisioning.models import ScaleDecision
from apps.provisioning.queuetime import queue_heads, queue_seconds
from apps.provisioning.services import autoscale_policy_set, service_scale
from apps.services.models import Service
from apps.services.tokens import apitoken_create
from apps.services.topics import topics_ensure
from memrun.wire import protocol
from tests.fixtures.services import kafka_test_config
from tests.worker_daemon.harness import wait_for

POLICY = Policy(
    min_workers=1,
    max_workers=4,
    lag_per_worker=100,
    scale_up_window_s=30,
    scale_down_window_s=120,
    scale_up_cooldown_s=60,
    scale_down_cooldown_s=180,
)


def start() -> datetime:
    return datetime(2026, 1, 1, tzinfo=timezone.get_current_timezone())


def observed(
    lag: int | None, workers: int, *, in_flight: int = 0, queue_s: float | None = None
) -> Observed:
    return Observed(
        lag=lag,
        workers=workers,
        in_flight=in_flight,
        concurrency=4,
        partitions=8,
        bounds=(0, 10),
        queue_seconds=queue_s,
    )


def run(
    ticks: list[tuple[float, int | None]] | list[tuple[float, int | None, float | None]],
    *,
    workers: int = 1,
    policy: Policy = POLICY,
) -> list[Decision]:
    """Decide at each (seconds from start, lag[, seconds in queue]), applying every change
    as reconcile would."""
    windows = Windows()
    made = []
    for at_s, lag, *queue in ticks:
        decision = decide(
            policy=policy,
            observed=observed(lag, workers, queue_s=queue[0] if queue else None),
            windows=windows,
            now=start() + timedelta(seconds=at_s),
        )
        windows, workers = decision.windows, decision.workers
        made.append(decision)
    return made


def test_a_backlog_scales_up_only_once_it_has_lasted_the_window() -> None:
    made = run([(0, 500), (10, 500), (29, 500), (30, 500)])
    assert [(d.action, d.reason) for d in made] == [
        ("hold", "pressure_window"),
        ("hold", "pressure_window"),
        ("hold", "pressure_window"),
        ("up", "lag_above"),
    ]
    # Towards ceil(lag / lag_per_worker), within the maximum.
    assert made[-1].workers == 4 and "500 on 1 worker(s)" in made[-1].message


def test_after_a_scale_up_the_cooldown_and_the_maximum_hold_it() -> None:
    made = run([(0, 150), (30, 150), (40, 900), (70, 900), (89, 900), (100, 900)], workers=1)
    assert [(d.action, d.reason, d.workers) for d in made] == [
        ("hold", "pressure_window", 1),
        ("up", "lag_above", 2),
        ("hold", "pressure_window", 2),  # a new window starts after each change
        ("hold", "cooldown", 2),  # 40 s since the change, 60 s cooldown
        ("hold", "cooldown", 2),
        ("up", "lag_above", 4),
    ]
    [last] = run([(0, 9000), (30, 9000)], workers=4)[1:]
    assert (last.action, last.reason, last.workers) == ("hold", "at_max", 4)


def test_lag_that_dips_below_the_threshold_within_the_window_never_scales() -> None:
    # Bursts above the threshold that never last 30 s, and lulls that never last 120 s.
    ticks = [(t, 250 if (t // 10) % 2 else 40) for t in range(0, 600, 5)]
    made = run(ticks, workers=2)
    assert {d.action for d in made} == {"hold"}
    assert {d.reason for d in made} <= {"pressure_window", "steady", "idle_window"}


def test_idle_workers_are_removed_one_at_a_time_after_the_window_and_cooldown() -> None:
    made = run([(0, 0), (120, 0), (130, 0), (250, 0), (300, 0), (430, 0), (600, 0)], workers=3)
    assert [(d.action, d.reason, d.workers) for d in made] == [
        ("hold", "idle_window", 3),
        ("down", "idle", 2),
        ("hold", "idle_window", 2),
        ("hold", "cooldown", 2),  # idle 120 s, but 130 s since the change (cooldown 180 s)
        ("down", "idle", 1),
        ("hold", "idle_window", 1),
        ("hold", "at_min", 1),
    ]


def test_busy_workers_are_not_idle_though_nothing_waits() -> None:
    decision = decide(
        policy=POLICY,
        observed=observed(0, 2, in_flight=4),
        windows=Windows(idle_since=start()),
        now=start() + timedelta(seconds=1000),
    )
    assert (decision.action, decision.reason) == ("hold", "steady")


def test_unknown_lag_holds_and_forgets_the_windows() -> None:
    decision = decide(
        policy=POLICY,
        observed=observed(None, 2),
        windows=Windows(pressure_since=start()),
        now=start() + timedelta(seconds=1000),
    )
    assert (decision.action, decision.reason) == ("hold", "lag_unknown")
    assert decision.windows.pressure_since is None


def test_never_more_workers_than_partitions_nor_outside_the_deployments_bounds() -> None:
    now = start()
    few = Observed(lag=10_000, workers=2, in_flight=0, concurrency=4, partitions=2, bounds=(0, 9))
    long_ago = Windows(pressure_since=now - timedelta(seconds=600))
    decision = decide(policy=POLICY, observed=few, windows=long_ago, now=now)
    assert (decision.action, decision.reason) == ("hold", "at_max")
    raised = Observed(lag=0, workers=1, in_flight=0, concurrency=4, partitions=8, bounds=(2, 9))
    decision = decide(policy=POLICY, observed=raised, windows=Windows(), now=now)
    assert (decision.action, decision.reason, decision.workers) == ("up", "below_min", 2)


QUEUE_POLICY = dataclasses.replace(POLICY, max_queue_seconds=20)


@pytest.mark.parametrize(
    ("ticks", "workers", "expected"),
    [
        pytest.param(
            # Few messages, long waits: lag alone (threshold 100) never sees them.
            [(0, 6, 45.0), (15, 6, 60.0), (30, 6, 75.0)],
            2,
            [
                ("hold", "pressure_window", 2, "time in queue above the maximum for 0s"),
                ("hold", "pressure_window", 2, "oldest waiting 60.0s (max 20s)"),
                # One worker more: a wait says nothing of how many would clear it.
                ("up", "queue_time_above", 3, "oldest waiting 75.0s (max 20s) for 30s: 2 -> 3"),
            ],
            id="queue-time-alone-adds-one-worker",
        ),
        pytest.param(
            [(0, 500, 45.0), (30, 500, 75.0)],
            1,
            [
                ("hold", "pressure_window", 1, "lag and time in queue above their limits"),
                # Both above: lag names the reason and sizes the step.
                ("up", "lag_above", 4, "lag 500 on 1 worker(s)"),
            ],
            id="both-above-scale-on-lag",
        ),
        pytest.param(
            # A long wait that clears within the window (a lull of one tick) moves nothing.
            [(0, 60, 45.0), (20, 60, 5.0), (25, 60, 45.0), (50, 60, 45.0), (55, 60, 45.0)],
            2,
            [
                ("hold", "pressure_window", 2, "for 0s of the 30s window"),
                ("hold", "steady", 2, "oldest waiting 5.0s"),
                ("hold", "pressure_window", 2, "for 0s of the 30s window"),
                ("hold", "pressure_window", 2, "for 25s of the 30s window"),
                ("up", "queue_time_above", 3, "for 30s"),
            ],
            id="the-window-restarts-when-the-wait-clears",
        ),
        pytest.param(
            # Unmeasured (Kafka answered the lag but no message head): lag decides.
            [(0, 60, None), (30, 60, None)],
            2,
            [
                ("hold", "steady", 2, "time in queue unknown (max 20s)"),
                ("hold", "steady", 2, "time in queue unknown"),
            ],
            id="unknown-time-in-queue-leaves-lag-to-decide",
        ),
        pytest.param(
            # Idle by lag, but the oldest request has waited more than half the maximum.
            [(0, 0, 15.0), (200, 0, 15.0), (210, 0, 5.0), (330, 0, 5.0)],
            3,
            [
                ("hold", "steady", 3, "oldest waiting 15.0s"),
                ("hold", "steady", 3, "oldest waiting 15.0s"),
                ("hold", "idle_window", 3, "idle for 0s"),
                ("down", "idle", 2, "3 -> 2 worker(s)"),
            ],
            id="no-scale-down-while-requests-wait-half-the-maximum",
        ),
    ],
)
def test_time_in_queue_is_a_second_trigger(
    ticks: list[tuple[float, int, float | None]],
    workers: int,
    expected: list[tuple[str, str, int, str]],
) -> None:
    made = run(ticks, workers=workers, policy=QUEUE_POLICY)
    assert [(d.action, d.reason, d.workers) for d in made] == [e[:3] for e in expected]
    for decision, (*_, words) in zip(made, expected, strict=True):
        assert words in decision.message, (words, decision.message)


def test_without_a_maximum_time_in_queue_is_ignored() -> None:
    made = run([(0, 60, 900.0), (60, 60, 900.0)], workers=2)
    assert [(d.action, d.reason) for d in made] == [("hold", "steady")] * 2
    assert "waiting" not in made[-1].message and "queue" not in made[-1].message


# -- against the database and real Kafka ---------------------------------------------------


@pytest.fixture
def deployed(
    service_factory: Callable[..., Service], deploy_settings: Callable[..., Any], settings: Any
) -> Service:
    settings.MEMRUN_RECONCILE_ON_EVENTS = False
    service = service_factory(desired_workers=1, partitions=4)
    topics_ensure(service=service.name, partitions=4)
    # A new topic answers offset requests once its partitions have settled on the broker.
    wait_for(lambda: service_lag(service=service.name, partitions=4), timeout_s=120, what="lag")
    deploy_settings(service, status="active", min_workers=1, max_workers=3, concurrency=2)
    return service


def produce(
    service: Service,
    count: int,
    *,
    partition: int | None = None,
    timestamps_ms: list[int] | None = None,
) -> None:
    """`count` messages (to `partition`, else by key), each with its timestamp from
    `timestamps_ms` when given (else the producer's clock)."""
    producer = Producer(kafka_test_config(_bootstrap(), {"partitioner": protocol.PARTITIONER}))
    for i in range(count):
        kwargs: dict[str, int] = {} if partition is None else {"partition": partition}
        if timestamps_ms is not None:
            kwargs["timestamp"] = timestamps_ms[i]
        producer.produce(service.request_topic, key=f"k{i}".encode(), value=b"{}", **kwargs)
    assert producer.flush(30) == 0


def commit(service: Service, offsets: dict[int, int]) -> None:
    """Commit `offsets` for the service's group, as its workers would."""
    consumer = Consumer(
        kafka_test_config(
            _bootstrap(),
            {"group.id": protocol.consumer_group(service.name), "enable.auto.commit": False},
        )
    )
    try:
        consumer.commit(
            offsets=[TopicPartition(service.request_topic, p, o) for p, o in offsets.items()],
            asynchronous=False,
        )
    finally:
        consumer.close()


def _bootstrap() -> str:
    from django.conf import settings

    return str(settings.KAFKA_BOOTSTRAP_SERVERS)


def tick(service: Service, at: datetime) -> Decision | None:
    with TestCase.captureOnCommitCallbacks(execute=True):
        return autoscale_service(service_id=service.pk, now=at)


@pytest.mark.django_db
def test_lag_is_measured_from_the_topic_ends_and_the_groups_commits(deployed: Service) -> None:
    assert service_lag(service=deployed.name, partitions=4).total == 0  # type: ignore[union-attr]
    produce(deployed, 30, partition=0)
    produce(deployed, 10, partition=3)
    lag = service_lag(service=deployed.name, partitions=4)
    assert lag is not None and lag.total == 40 and lag.partitions_with_lag == 2
    commit(deployed, {0: 25})
    lag = service_lag(service=deployed.name, partitions=4)
    assert lag is not None and lag.per_partition == {0: 5, 1: 0, 2: 0, 3: 10}


@pytest.mark.django_db
def test_time_in_queue_is_the_age_of_the_first_uncommitted_message(deployed: Service) -> None:
    base_ms = int(time.time() * 1000) - 3_600_000  # an hour ago: no clock of ours is near
    produce(deployed, 5, partition=0, timestamps_ms=[base_ms + i * 1000 for i in range(5)])
    produce(deployed, 3, partition=3, timestamps_ms=[base_ms + 90_000 + i for i in range(3)])
    commit(deployed, {0: 2})

    lag = service_lag(service=deployed.name, partitions=4)
    assert lag is not None and lag.backlog_starts == {0: 2, 3: 0}
    heads = queue_heads(service=deployed.name, starts=lag.backlog_starts)
    assert heads == {0: base_ms + 2000, 3: base_ms + 90_000}
    at = datetime.fromtimestamp((base_ms + 12_000) / 1000, tz=timezone.get_current_timezone())
    assert queue_seconds(heads=heads, now=at) == pytest.approx(10.0)

    # The same (kept) consumer follows the commits on the next pass.
    commit(deployed, {0: 4, 3: 3})
    lag = service_lag(service=deployed.name, partitions=4)
    assert lag is not None and lag.backlog_starts == {0: 4}
    heads = queue_heads(service=deployed.name, starts=lag.backlog_starts)
    assert heads == {0: base_ms + 4000}
    assert queue_seconds(heads=heads, now=at) == pytest.approx(8.0)
    # Nothing waiting is no wait at all; a producer's clock ahead of ours is not negative.
    commit(deployed, {0: 5})
    lag = service_lag(service=deployed.name, partitions=4)
    assert lag is not None and lag.total == 0
    assert queue_heads(service=deployed.name, starts=lag.backlog_starts) == {}
    assert queue_seconds(heads={}, now=at) == 0.0
    assert queue_seconds(heads={1: base_ms + 60_000}, now=at) == 0.0
    assert queue_seconds(heads=None, now=at) is None


@pytest.mark.django_db
def test_a_long_wait_scales_up_and_is_recorded_with_the_measured_age(deployed: Service) -> None:
    autoscale_policy_set(
        service=deployed,
        enabled=True,
        lag_per_worker=1000,  # lag alone never adds a worker here
        max_queue_seconds=60,
        scale_up_window_s=10,
    )
    t0 = timezone.now()
    waiting_since_ms = int(t0.timestamp() * 1000) - 120_000
    produce(deployed, 3, partition=1, timestamps_ms=[waiting_since_ms] * 3)
    first = tick(deployed, t0)
    assert first is not None and first.reason == "pressure_window"
    assert "time in queue above the maximum" in first.message
    up = tick(deployed, t0 + timedelta(seconds=10))
    assert up is not None and (up.action, up.reason, up.workers) == ("up", "queue_time_above", 2)
    assert "oldest waiting 130.0s (max 60s)" in up.message and "1 -> 2" in up.message
    recorded = ScaleDecision.objects.filter(service=deployed).first()
    assert recorded is not None and recorded.reason == "queue_time_above"
    assert recorded.queue_seconds == pytest.approx(130.0, abs=0.01)
    assert recorded.lag == 3 and recorded.inputs["max_queue_seconds"] == 60

    # Turned off, the wait is neither measured nor a trigger: 3 messages on 2 workers is
    # idle by lag.
    autoscale_policy_set(service=deployed, max_queue_seconds=None, scale_up_cooldown_s=0)
    held = tick(deployed, t0 + timedelta(seconds=100))
    assert held is not None and held.reason == "idle_window" and "waiting" not in held.message
    assert ScaleDecision.objects.filter(service=deployed).first().queue_seconds is None  # type: ignore[union-attr]


@pytest.mark.django_db
def test_each_step_is_recorded_with_its_reason_and_inputs(deployed: Service) -> None:
    autoscale_policy_set(
        service=deployed,
        enabled=True,
        min_workers=1,
        max_workers=3,
        lag_per_worker=10,
        scale_up_window_s=20,
        scale_down_window_s=60,
        scale_up_cooldown_s=30,
        scale_down_cooldown_s=30,
    )
    t0 = timezone.now()
    produce(deployed, 50)
    assert tick(deployed, t0).reason == "pressure_window"  # type: ignore[union-attr]
    assert tick(deployed, t0 + timedelta(seconds=5)).reason == "pressure_window"  # type: ignore[union-attr]
    up = tick(deployed, t0 + timedelta(seconds=20))
    assert up is not None and (up.action, up.workers) == ("up", 3)  # ceil(50 / 10), max 3
    deployed.refresh_from_db()
    assert deployed.desired_workers == 3
    lag = service_lag(service=deployed.name, partitions=4)
    assert lag is not None
    commit(deployed, {p: lag.per_partition[p] for p in range(4)})  # the backlog is done
    assert tick(deployed, t0 + timedelta(seconds=30)).reason == "idle_window"  # type: ignore[union-attr]
    down = tick(deployed, t0 + timedelta(seconds=90))
    assert down is not None and (down.action, down.workers) == ("down", 2)

    log = list(ScaleDecision.objects.filter(service=deployed).order_by("decided_at"))
    # The repeated pressure_window hold is recorded once.
    assert [(d.action, d.reason, d.workers_before, d.workers_after) for d in log] == [
        ("hold", "pressure_window", 1, 1),
        ("up", "lag_above", 1, 3),
        ("hold", "idle_window", 3, 3),
        ("down", "idle", 3, 2),
    ]
    assert log[1].lag == 50 and log[1].lag_source == "kafka"
    assert log[1].inputs["lag_per_worker"] == 10 and log[1].inputs["partitions_with_lag"] >= 1
    assert "50 on 1 worker(s)" in log[1].message and "1 -> 3" in log[1].message


@pytest.mark.django_db
def test_kafka_down_falls_back_to_heartbeats_and_else_holds(
    deployed: Service, kafka_down: str
) -> None:
    autoscale_policy_set(service=deployed, enabled=True, scale_up_window_s=0)
    decision = tick(deployed, timezone.now())
    assert decision is not None and decision.reason == "lag_unknown"
    [recorded] = ScaleDecision.objects.filter(service=deployed)
    assert recorded.lag is None and recorded.lag_source == ""


@pytest.mark.django_db
def test_a_service_without_a_policy_on_is_left_alone(deployed: Service) -> None:
    assert tick(deployed, timezone.now()) is None
    autoscale_policy_set(service=deployed, enabled=False, max_workers=2)
    assert tick(deployed, timezone.now()) is None
    assert not ScaleDecision.objects.exists()


@pytest.mark.django_db
def test_the_policy_api_sets_shows_and_refuses_bad_input(
    deployed: Service, api_client: Client, viewer: Any
) -> None:
    path = f"/api/v1/services/{deployed.name}/autoscale"
    shown = api_client.get(path)
    assert shown.status_code == 200 and shown.json()["enabled"] is False
    assert (shown.json()["min_workers"], shown.json()["max_workers"]) == (1, 3)

    body = {"enabled": True, "min_workers": 1, "max_workers": 2, "lag_per_worker": 50}
    set_ = api_client.put(path, body, content_type="application/json")
    assert set_.status_code == 200, set_.content
    assert set_.json()["enabled"] is True and set_.json()["lag_per_worker"] == 50

    for bad, field in [
        ({"max_workers": 9}, "max_workers"),  # above the deployment's 3
        ({"min_workers": 3, "max_workers": 2}, "min_workers"),
        ({"lag_per_worker": 0}, "lag_per_worker"),
        ({"scale_up_window_s": -1}, "scale_up_window_s"),
        ({"max_queue_seconds": 0}, "max_queue_seconds"),
        ({"max_queue_seconds": -5}, "max_queue_seconds"),
        ({"max_queue_seconds": "soon"}, "max_queue_seconds"),
        ({"max_queue_seconds": 10**9}, "max_queue_seconds"),
        ({"surprise": 1}, "surprise"),
    ]:
        refused = api_client.put(path, bad, content_type="application/json")
        assert refused.status_code == 422, (bad, refused.content)
        assert field in refused.content.decode()

    # Time in queue: off until set, and a null turns it off again (a null elsewhere
    # changes nothing).
    assert set_.json()["max_queue_seconds"] is None
    queued = api_client.put(path, {"max_queue_seconds": 45}, content_type="application/json")
    assert queued.status_code == 200 and queued.json()["max_queue_seconds"] == 45
    assert queued.json()["lag_per_worker"] == 50
    cleared = api_client.put(
        path, {"max_queue_seconds": None, "lag_per_worker": None}, content_type="application/json"
    )
    assert cleared.status_code == 200 and cleared.json()["max_queue_seconds"] is None
    assert cleared.json()["lag_per_worker"] == 50
    # The service refuses what the API's schema would, for the web form's sake.
    with pytest.raises(DomainError) as refused_here:
        autoscale_policy_set(service=deployed, max_queue_seconds=0.0)
    assert refused_here.value.status == 422
    assert "max_queue_seconds" in str(refused_here.value.details)

    # A manual scale would be undone by the next tick: refused while autoscaling is on.
    scaled = api_client.post(
        f"/api/v1/services/{deployed.name}/scale", {"workers": 2}, content_type="application/json"
    )
    assert scaled.status_code == 409 and "--off" in scaled.json()["message"]
    # The read role shows the policy; changing it takes the deploy role.
    _, secret = apitoken_create(user=viewer, name="viewer")
    reader = Client(headers={"Authorization": f"Bearer {secret}"})
    assert reader.get(path).status_code == 200
    refused = reader.put(path, {"enabled": False}, content_type="application/json")
    assert refused.status_code == 403 and "deploy" in refused.json()["message"]
    off = api_client.put(path, {"enabled": False}, content_type="application/json")
    assert off.status_code == 200 and off.json()["enabled"] is False
    assert service_scale(service=deployed, workers=2).desired_workers == 2

    missing = api_client.get("/api/v1/services/nope-nope/autoscale")
    assert missing.status_code == 404
