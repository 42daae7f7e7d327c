"""GET /api/v1/services/{name}/warmth: what is warm where, from real caches' heartbeats.

The stats come from a real WarmCache (local files, some asked for more often than others),
shaped by the worker's own heartbeat_report and stored through worker_heartbeat, as a
worker's heartbeat would be."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from apps.services.models import Deployment, Service
from apps.workers.models import Worker
from apps.workers.services import worker_create, worker_heartbeat, worker_mark_stopped
from memrun.cli.warmth import object_lines, warmth_rows
from worker_daemon.cache import CacheSettings, WarmCache
from worker_daemon.report import heartbeat_report

pytestmark = pytest.mark.django_db
MiB = 2**20


def cache_stats(root: Path, *, files: int) -> dict[str, Any]:
    """A real cache's stats after reading `files` files of growing size, file i i+1 times."""
    cache = WarmCache.open(
        CacheSettings(root=root, service="svc", capacity_bytes=64 * MiB, memory_budget_bytes=0)
    )
    try:
        for index in range(files):
            source = root / "src" / f"f{index}.bin"
            source.parent.mkdir(parents=True, exist_ok=True)
            source.write_bytes(b"x" * (1000 + index))
            for _ in range(index + 1):
                cache.get_or_fetch(str(source))
        return cache.stats()
    finally:
        cache.close()


def beat(worker: Worker, cache: dict[str, Any], partitions: list[int]) -> None:
    report = heartbeat_report(
        {
            "state": "running",
            "partitions": [{"topic": "t", "partition": p, "lag": 0} for p in partitions],
            "cache": cache,
        }
    )
    report.pop("state")
    worker_heartbeat(worker=worker, state="ready", stats={**report.pop("stats"), **report})


@pytest.fixture
def warm_service(
    service_factory: Callable[..., Service],
    deploy_settings: Callable[..., Deployment],
    tmp_path: Path,
) -> Service:
    service = service_factory(desired_workers=2)
    deployment = deploy_settings(service, status=Deployment.Status.ACTIVE, max_workers=3)
    a, _ = worker_create(service=service, deployment=deployment, name=f"{service.name}-a")
    b, _ = worker_create(service=service, deployment=deployment, name=f"{service.name}-b")
    gone, _ = worker_create(service=service, deployment=deployment, name=f"{service.name}-c")
    beat(a, cache_stats(tmp_path / "a", files=25), [0, 1, 2])
    beat(b, cache_stats(tmp_path / "b", files=3), [3])
    worker_mark_stopped(worker=gone, reason="test")
    return service


def test_warmth_lists_each_running_worker_with_bounded_hot_and_large_objects(
    api_client: Client, warm_service: Service
) -> None:
    with CaptureQueriesContext(connection) as queries:
        response = api_client.get(f"/api/v1/services/{warm_service.name}/warmth")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["service"] == warm_service.name
    a, b = body["workers"]  # the stopped worker is not listed
    assert (a["name"], a["partitions"], b["partitions"]) == (
        f"{warm_service.name}-a",
        [0, 1, 2],
        [3],
    )
    assert a["disk_objects"] == 25 and a["s3_fetches"] == 25
    assert a["disk_used_bytes"] == sum(1000 + i for i in range(25))
    assert len(a["hottest"]) == len(a["largest"]) == 10  # bounded, though 25 are cached
    # A file's hits are the requests it served after the one that fetched it.
    assert [o["hits"] for o in a["hottest"]] == list(range(24, 14, -1))
    assert a["hottest"][0]["name"].endswith("/f24.bin") and a["hottest"][0]["tier"] == "disk"
    assert [o["size_bytes"] for o in a["largest"]] == [1000 + i for i in range(24, 14, -1)]
    assert len(b["hottest"]) == 3
    assert len(queries) <= 6  # auth, the service, the workers: not one per worker


def test_warmth_of_an_unknown_service_is_404(api_client: Client) -> None:
    response = api_client.get("/api/v1/services/no-such-service/warmth")
    assert response.status_code == 404
    assert "no-such-service" in response.json()["message"]


def test_the_cli_view_shows_partitions_and_the_hot_objects(
    api_client: Client, warm_service: Service
) -> None:
    workers = api_client.get(f"/api/v1/services/{warm_service.name}/warmth").json()["workers"]
    header, first, second = warmth_rows(workers)
    assert header[:3] == ("NAME", "VERSION", "PARTITIONS")
    assert first[2] == "0-2" and second[2] == "3"
    lines = object_lines(workers[0], top=2)
    assert len(lines) == 4 and lines[0].startswith("hot") and "f24.bin" in lines[0]
