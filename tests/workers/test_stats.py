"""Dashboard numbers from heartbeats: per worker and per service, in bounded queries, and
the same numbers at /metrics in Prometheus' text format."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from apps.common.errors import DomainError
from apps.services.models import Deployment, Service
from apps.workers.models import Worker
from apps.workers.services import worker_create, worker_heartbeat
from apps.workers.stats import service_dashboard_list, service_stats_get, worker_stats_get
from worker_daemon.metrics import RequestMetrics
from worker_daemon.report import heartbeat_report

pytestmark = pytest.mark.django_db


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def snapshot(
    durations_ms: list[float], *, failures: int = 0, partitions: dict[int, int], disk_hits: int
) -> dict[str, Any]:
    """What Worker.stats() returns, with request numbers from a real RequestMetrics."""
    metrics = RequestMetrics(clock=Clock())
    for i, duration in enumerate(durations_ms):
        metrics.observe(duration_ms=duration, ok=i >= failures)
    return {
        "state": "running",
        "in_flight": 1,
        "concurrency": 4,
        "lag": sum(partitions.values()),
        "partitions": [{"topic": "t", "partition": p, "lag": lag} for p, lag in partitions.items()],
        "completed": len(durations_ms),
        "requests": metrics.snapshot(),
        "cache": {
            "requests": 10 + disk_hits,
            "hits": {"memory": 8, "disk": disk_hits},
            "misses": 2,
            "bytes": {"memory": 1, "disk": 2, "remote": 3},
            "memory": {"budget_bytes": 1000, "named_bytes": 100, "decoded_bytes": 50},
            "disk": {"used_bytes": 4000, "capacity_bytes": 10_000, "entries": 3},
            "largest": [
                {"tier": "disk", "name": f"s3://data/{disk_hits}.bin", "size_bytes": 3000},
                {"tier": "memory", "name": "model", "size_bytes": 100},
            ],
        },
    }


@pytest.fixture
def served(
    service_factory: Callable[..., Service], deploy_settings: Callable[..., Deployment]
) -> tuple[Service, Worker, Worker]:
    service = service_factory(desired_workers=2)
    deployment = deploy_settings(service, status=Deployment.Status.ACTIVE, max_workers=2)
    a, _ = worker_create(service=service, deployment=deployment, name=f"{service.name}-a")
    b, _ = worker_create(service=service, deployment=deployment, name=f"{service.name}-b")
    fast = snapshot([3.0] * 90, failures=2, partitions={0: 5, 1: 0}, disk_hits=0)
    slow = snapshot([700.0] * 10, partitions={2: 1}, disk_hits=10)
    worker_heartbeat(worker=a, state="ready", stats=_stored(heartbeat_report(fast)))
    worker_heartbeat(worker=b, state="ready", stats=_stored(heartbeat_report(slow)))
    return service, a, b


def _stored(report: dict[str, Any]) -> dict[str, Any]:
    # As the heartbeat API stores it: its `stats` beside the named fields.
    report.pop("state")
    return {**report.pop("stats"), **report}


def test_a_workers_numbers_come_from_its_heartbeat(
    served: tuple[Service, Worker, Worker],
) -> None:
    _, a, _ = served
    stats = worker_stats_get(
        worker=Worker.objects.select_related("service", "deployment").get(pk=a.pk)
    )
    assert (stats.state, stats.liveness, stats.version) == ("ready", "live", 1)
    assert stats.partitions == (0, 1) and stats.partition_lag == {0: 5, 1: 0} and stats.lag == 5
    assert (stats.in_flight, stats.concurrency) == (1, 4)
    assert stats.requests.per_minute == stats.requests.total == 90
    assert stats.requests.errors_per_minute == stats.requests.errors == 2
    # 3 ms falls in the (2.5, 5] bucket: interpolated inside it.
    assert stats.requests.p50_ms is not None and 2.5 < stats.requests.p50_ms <= 5
    assert stats.cache_used_bytes == 4150 and stats.cache_capacity_bytes == 11_000
    tiers = {t.tier: t for t in stats.cache_tiers}
    assert tiers["memory"].hit_ratio == 0.8 and tiers["remote"].hit_ratio == 0.2
    assert tiers["disk"].hits == 0 and tiers["remote"].used_bytes is None
    assert [o.name for o in stats.largest] == ["s3://data/0.bin", "model"]


def test_a_services_numbers_add_up_its_workers(served: tuple[Service, Worker, Worker]) -> None:
    service, a, b = served
    stats = service_stats_get(service=service)
    assert (stats.live_version, stats.workers_ready, stats.workers_desired) == (1, 2, 2)
    assert stats.requests.per_minute == 100 and stats.requests.errors_per_minute == 2
    assert stats.lag == 6 and stats.in_flight == 2 and stats.concurrency == 8
    # Merged buckets: 90 fast and 10 slow requests; p99 lies among the slow ones.
    assert stats.requests.p50_ms is not None and stats.requests.p50_ms <= 5
    assert stats.requests.p99_ms is not None and 500 < stats.requests.p99_ms <= 1000
    tiers = {t.tier: t for t in stats.cache_tiers}
    assert tiers["disk"].hits == 10 and tiers["disk"].hit_ratio == round(10 / 30, 4)
    assert [w.name for w in stats.workers] == [a.name, b.name]
    assert stats.largest[0].size_bytes == 3000 and len(stats.largest) == 4


def test_stopped_workers_do_not_count(served: tuple[Service, Worker, Worker]) -> None:
    service, a, _ = served
    worker_heartbeat(worker=a, state="stopped", stats={"exit_code": 0})
    stats = service_stats_get(service=service)
    assert stats.requests.per_minute == 10 and stats.workers_ready == 1


def test_the_dashboard_takes_three_queries_for_50_services_and_500_workers(
    served: tuple[Service, Worker, Worker],
) -> None:
    template, a, _ = served
    report = Worker.objects.get(pk=a.pk).stats
    services = Service.objects.bulk_create(Service(name=f"{template.name}-s{i}") for i in range(49))
    now = timezone.now()
    Worker.objects.bulk_create(
        Worker(
            service=services[i % 49],
            name=f"{template.name}-w{i}",
            state=Worker.State.READY,
            last_heartbeat_at=now,
            stats=report,
            credential_hash=f"{i:064d}",
        )
        for i in range(498)
    )
    with CaptureQueriesContext(connection) as queries:
        dashboard = service_dashboard_list(dead_letters=False)
    assert len(queries) == 3
    mine = [s for s in dashboard if s.name.startswith(template.name)]
    assert len(mine) == 50 and sum(len(s.workers) for s in mine) == 500
    assert sum(s.requests.per_minute for s in mine) == 100 + 498 * 90


def test_the_dashboard_counts_dead_letters_from_kafka(
    served: tuple[Service, Worker, Worker],
) -> None:
    service, _, _ = served
    [stats] = [s for s in service_dashboard_list() if s.name == service.name]
    assert stats.dead_letters == 0


def test_a_heartbeat_too_big_is_refused(served: tuple[Service, Worker, Worker]) -> None:
    _, a, _ = served
    with pytest.raises(DomainError) as refused:
        worker_heartbeat(worker=a, state="ready", stats={"cache": {"x": "y" * 70_000}})
    assert refused.value.status == 422 and "limit" in refused.value.message


def test_metrics_needs_a_token_and_serves_the_same_numbers(
    served: tuple[Service, Worker, Worker], api_client: Client
) -> None:
    service, a, _ = served
    anonymous = Client().get("/metrics")
    assert anonymous.status_code == 401 and "Bearer" in anonymous["WWW-Authenticate"]
    assert Client(headers={"Authorization": "Bearer mr_wrong"}).get("/metrics").status_code == 401

    response = api_client.get("/metrics")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.content.decode())}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in families.values()
        for s in family.samples
    }
    mine = (("service", service.name),)
    worker = (("service", service.name), ("worker", a.name))
    assert samples[("memrun_service_requests_per_minute", mine)] == 100
    assert samples[("memrun_service_workers_ready", mine)] == 2
    assert samples[("memrun_service_dead_letters", mine)] == 0
    assert samples[("memrun_worker_requests_total", worker)] == 90
    assert samples[("memrun_worker_request_errors_total", worker)] == 2
    assert samples[("memrun_worker_handler_latency_seconds_count", worker)] == 90
    le = (*worker, ("le", "0.005"))
    assert samples[("memrun_worker_handler_latency_seconds_bucket", tuple(sorted(le)))] == 90
    lag = tuple(sorted((*worker, ("partition", "0"))))
    assert samples[("memrun_worker_partition_lag", lag)] == 5
    assert families["memrun_worker_handler_latency_seconds"].type == "histogram"


def test_metrics_for_a_staff_session(served: tuple[Service, Worker, Worker], user: Any) -> None:
    browser = Client()
    browser.force_login(user)
    user.is_staff = False
    user.save()
    refused = browser.get("/metrics")  # signed in, without the read role on all services
    assert refused.status_code == 403
    assert "needs the read role on all services" in refused.json()["message"]
    user.is_staff = True
    user.save()
    assert browser.get("/metrics").status_code == 200
