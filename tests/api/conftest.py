"""Fixtures of the API tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.test import Client

from tests.worker_daemon.harness import WorkerProcess, make_package, worker_env


@pytest.fixture
def served(
    api_client: Client,
    service_name: Callable[[], str],
    kafka_bootstrap: str,
    redis_url: str,
    tmp_path: Path,
) -> Iterator[str]:
    """A service created through the API (so its topic exists) with one worker serving."""
    name = service_name()
    created = api_client.post(
        "/api/v1/services",
        {"name": name, "sticky_key": "user", "partitions": 4, "max_workers": 2},
        content_type="application/json",
    )
    assert created.status_code == 201, created.content
    package = make_package(tmp_path / "pkg", service=name)
    env = worker_env(
        service=name, bootstrap=kafka_bootstrap, redis_url=redis_url, cache_root=tmp_path / "c"
    )
    worker = WorkerProcess(
        service=name, package=package, worker_id="w1", env=env, log_path=tmp_path / "w1.log"
    )
    try:
        worker.wait_event("worker.assigned")
        yield name
    finally:
        worker.stop()
