"""Liveness from the heartbeat's age: live, suspect at 30 s (shown only), dead at 60 s.
Time is passed in, never slept."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client

from apps.services.models import Service
from apps.services.services import deployment_create
from apps.workers.liveness import Liveness, heartbeat_age_s, liveness
from apps.workers.services import worker_create, worker_heartbeat

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("silent_s", "expected"),
    [
        (0, Liveness.LIVE),
        (29.9, Liveness.LIVE),
        (30, Liveness.SUSPECT),
        (59.9, Liveness.SUSPECT),
        (60, Liveness.DEAD),
        (3600, Liveness.DEAD),
    ],
)
def test_liveness_by_silence(silent_s: float, expected: Liveness) -> None:
    assert liveness(T0, T0 + timedelta(seconds=silent_s)) is expected


def test_no_heartbeat_yet_is_unknown_and_clock_skew_is_not_negative() -> None:
    assert liveness(None, T0) is Liveness.UNKNOWN
    assert heartbeat_age_s(T0 + timedelta(seconds=5), T0) == 0.0


@pytest.mark.django_db
def test_the_workers_of_a_service_show_their_liveness(
    service_factory: Callable[..., Service],
    api_client: Client,
    django_assert_max_num_queries,
) -> None:
    from django.utils import timezone

    service = service_factory()
    deployment = deployment_create(
        service=service, sha256="b" * 64, size_bytes=1, artifact_url="file:///tmp/x"
    )
    now = timezone.now()
    for name, silent_s in (("live", 1), ("quiet", 40), ("gone", 90)):
        worker, _ = worker_create(service=service, deployment=deployment, name=f"w-{name}")
        worker_heartbeat(
            worker=worker,
            state="ready",
            stats={"in_flight": 2, "partitions": [1, 0], "lag": 5},
            now=now - timedelta(seconds=silent_s),
        )
    worker_create(service=service, deployment=deployment, name="w-new")

    # token lookup, last-used write, the service, its workers (joined)
    with django_assert_max_num_queries(4):
        rows = api_client.get(f"/api/v1/services/{service.name}/workers").json()
    by_name = {row["name"]: row for row in rows}
    assert {n: r["liveness"] for n, r in by_name.items()} == {
        "w-gone": "dead",
        "w-live": "live",
        "w-new": "unknown",
        "w-quiet": "suspect",
    }
    live = by_name["w-live"]
    assert live["state"] == "ready" and live["deployment_version"] == 1
    assert live["in_flight"] == 2 and live["partitions"] == [0, 1] and live["lag"] == 5
    assert 1 <= live["heartbeat_age_s"] < 30
    assert by_name["w-new"]["heartbeat_age_s"] is None
