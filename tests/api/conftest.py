"""Fixtures of the API tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from tests.worker_daemon.harness import WorkerProcess, make_package, worker_env


@pytest.fixture
def served(
    api_client: Client,
    service_name: Callable[[], str],
    deploy_settings: Callable[..., Any],
    kafka_bootstrap: str,
    redis_url: str,
    tmp_path: Path,
) -> Iterator[str]:
    """A service created through the API (so its topic exists), deployed with sticky key
    `user`, with one worker serving."""
    from apps.services.models import Service

    name = service_name()
    created = api_client.post(
        "/api/v1/services", {"name": name, "partitions": 4}, content_type="application/json"
    )
    assert created.status_code == 201, created.content
    deploy_settings(
        Service.objects.get(name=name), status="active", sticky_key="user", max_workers=2
    )
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
