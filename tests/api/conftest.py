"""Fixtures of the API tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from tests.worker_daemon.harness import WorkerProcess, make_package, wait_for, worker_env


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


@pytest.fixture
def asgi_url(transactional_db: None) -> Iterator[str]:
    """The appliance's ASGI application (memrun_site/asgi.py, as `memrun up` serves it)
    under uvicorn in a thread of this process, on the test database; its base URL.
    Django's live_server is WSGI, which cannot serve a stream of events."""
    import socket
    import threading

    import uvicorn

    from memrun_site.asgi import application

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(application, lifespan="off", log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, what="uvicorn started")
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        # The views' database work ran on asgiref's one thread for sync code: close its
        # connection there, or the test database cannot be dropped.
        from asgiref.sync import SyncToAsync
        from django.db import connections

        SyncToAsync.single_thread_executor.submit(connections.close_all).result(10)
