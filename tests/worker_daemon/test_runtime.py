"""The Worker used programmatically, in-process, with the real Kafka and Redis."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from confluent_kafka import Producer

from memrun import MemoryService
from memrun.context import WorkerContext
from memrun.wire.kafka import kafka_client_config, kafka_connection_from_env
from memrun.wire.protocol import request_topic
from tests.worker_daemon.conftest import ServiceUnderTest
from tests.worker_daemon.harness import (
    make_package,
    make_producer,
    produce_requests,
    wait_for,
    wait_outcomes,
)
from worker_daemon.logs import EventLog
from worker_daemon.main import load_package
from worker_daemon.package.errors import ServiceLoadError
from worker_daemon.runtime import EXIT_INIT_FAILED, EXIT_OK, Worker
from worker_daemon.settings import WorkerSettings, kafka_fields


class DictCache:
    """A DataCache with only tier 1: enough for handlers that keep objects."""

    def __init__(self) -> None:
        self.objects: dict[str, Any] = {}

    def get_or_fetch(self, url: str, **options: Any) -> Any:
        raise NotImplementedError(url)

    def set_object(self, name: str, obj: Any, *, size_bytes: int | None = None) -> None:
        self.objects[name] = obj

    def get_object(self, name: str, default: Any = None) -> Any:
        return self.objects.get(name, default)

    def upload_result(self, data: Any, key: str) -> str:
        raise NotImplementedError(key)

    def stats(self) -> dict[str, Any]:
        return {"objects": len(self.objects)}


class Lines:
    """An in-memory log stream whose lines a test can read."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []
        self._buffer = b""

    def write(self, data: bytes) -> int:
        self._buffer += data
        *done, self._buffer = self._buffer.split(b"\n")
        self.lines.extend(json.loads(line) for line in done)
        return len(data)

    def flush(self) -> None:
        pass


def make_worker(
    service: ServiceUnderTest,
    svc: MemoryService,
    redis_client: redis.Redis,
    after_init: Callable[[], None] = lambda: None,
    **kw: Any,
) -> tuple[Worker, Lines, list[dict[str, Any]]]:
    settings = WorkerSettings(
        service=svc.name,
        package_path=Path("."),
        **kafka_fields(
            dataclasses.replace(kafka_connection_from_env(), bootstrap_servers=service.bootstrap)
        ),
        redis_url=service.redis_url,
        worker_id=f"{svc.name}-inproc",
        stats_interval_s=0.2,
        **kw,
    )
    lines = Lines()
    stats: list[dict[str, Any]] = []
    worker = Worker(
        settings=settings,
        service=svc,
        cache=DictCache(),
        redis=redis_client,
        producer=Producer(kafka_client_config(settings.kafka)),
        log=EventLog(lines, worker=settings.worker_id),  # type: ignore[arg-type]
        on_stats=stats.append,
        after_init=after_init,
    )
    return worker, lines, stats


def test_a_worker_runs_in_process_reports_stats_and_stops_on_request(
    service_factory: Callable[..., ServiceUnderTest], redis_client: redis.Redis
) -> None:
    service = service_factory(partitions=3)
    svc = MemoryService(service.name, concurrency=2)

    @svc.init_handler()
    async def warm(ctx: WorkerContext) -> None:
        ctx.set_object("greeting", "hello")

    @svc.handler()
    async def handle(ctx: Any, request: dict[str, Any]) -> dict[str, Any]:
        return {"text": f"{ctx.get_object('greeting')} {request['name']}", "key": ctx.key}

    worker, lines, stats = make_worker(service, svc, redis_client)
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(worker.run()))
    thread.start()
    try:
        wait_for(lambda: any(s["assigned"] == 3 for s in stats), what="3 partitions in the stats")
        ids = produce_requests(
            make_producer(service.bootstrap),
            service.topic,
            [(f"k{i}", {"name": f"n{i}"}) for i in range(10)],
        )
        outcomes = wait_outcomes(redis_client, service.name, ids)
        assert [outcomes[i].result["text"] for i in ids] == [f"hello n{i}" for i in range(10)]
        snapshot = wait_for(
            lambda: (s := worker.stats())["completed"] == 10 and s["lag"] == 0 and s,
            what="stats with 10 completed and no lag",
        )
        json.dumps(snapshot)
        assert snapshot["state"] == "running" and snapshot["cache"] == {"objects": 1}
        assert snapshot["in_flight"] == 0 and snapshot["paused"] is False
        assert {p["topic"] for p in snapshot["partitions"]} == {request_topic(service.name)}
    finally:
        worker.request_stop()
        thread.join(60)
    assert codes == [EXIT_OK]
    assert lines.lines[-1]["event"] == "worker.stopped"
    assert lines.lines[-1]["completed"] == 10


def test_a_failing_init_handler_stops_the_worker_before_it_consumes(
    service_factory: Callable[..., ServiceUnderTest], redis_client: redis.Redis
) -> None:
    service = service_factory(partitions=1)
    svc = MemoryService(service.name)

    @svc.init_handler()
    def broken(ctx: WorkerContext) -> None:
        raise RuntimeError("model file missing")

    @svc.handler()
    def handle(ctx: Any, request: Any) -> None:
        return None

    after_init: list[str] = []
    worker, lines, _ = make_worker(
        service, svc, redis_client, after_init=lambda: after_init.append("called")
    )
    assert worker.run() == EXIT_INIT_FAILED
    failed = [line for line in lines.lines if line["event"] == "worker.init_failed"]
    assert failed and failed[0]["error"] == "model file missing"
    assert not any(line["event"] == "worker.consuming" for line in lines.lines)
    assert after_init == []


def test_after_init_runs_once_the_init_handlers_ran_and_before_the_worker_consumes(
    service_factory: Callable[..., ServiceUnderTest], redis_client: redis.Redis
) -> None:
    # run_worker freezes the process's heap there (gc.freeze): what init built must be in it.
    service = service_factory(partitions=1)
    svc = MemoryService(service.name)
    seen: list[str] = []

    @svc.init_handler()
    def warm(ctx: WorkerContext) -> None:
        seen.append("init")

    @svc.handler()
    def handle(ctx: Any, request: Any) -> None:
        return None

    def after_init() -> None:
        consuming = any(line["event"] == "worker.consuming" for line in lines.lines)
        seen.append("after_init, consuming" if consuming else "after_init")

    worker, lines, stats = make_worker(service, svc, redis_client, after_init=after_init)
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(worker.run()))
    thread.start()
    try:
        wait_for(lambda: any(s["assigned"] == 1 for s in stats), what="1 partition in the stats")
    finally:
        worker.request_stop()
        thread.join(60)
    assert codes == [EXIT_OK]
    assert seen == ["init", "after_init"]
    assert any(line["event"] == "worker.consuming" for line in lines.lines)


def test_the_package_must_declare_the_service_the_worker_serves(tmp_path: Path) -> None:
    package = make_package(tmp_path / "pkg", service="loader-test")
    settings = WorkerSettings(service="loader-test", package_path=package, work_root=tmp_path)
    with pytest.MonkeyPatch.context() as patch:
        # The code names another service and other limits: the deployed manifest (the
        # code's config merged with `memrun deploy`'s flags) is what the worker runs.
        patch.setenv("MEMRUN_SERVICE", "renamed")
        manifest = json.loads((package / "manifest.json").read_text())
        manifest["config"]["concurrency"] = 2
        (package / "manifest.json").write_text(json.dumps(manifest))
        loaded = load_package(settings)
        config = loaded.config()
        assert (config.name, config.concurrency, config.timeout_seconds) == ("loader-test", 2, 30)
        # The deployment's settings (a PATCH's, which does not rebuild the package) win.
        deployed = dataclasses.replace(config, concurrency=7, sticky_key="user")
        with_config = dataclasses.replace(settings, service_config=deployed)
        assert load_package(with_config).config() == deployed
        other = WorkerSettings(service="other-svc", package_path=package, work_root=tmp_path)
        with pytest.raises(ServiceLoadError, match="declares service 'loader-test'"):
            load_package(other)
    missing = WorkerSettings(service="x-y", package_path=tmp_path / "nope", work_root=tmp_path)
    with pytest.raises(ServiceLoadError, match="does not exist"):
        load_package(missing)
