"""The worker's HTTP client to the control plane (against a real server: pytest-django's
live server), and the heartbeat thread that uses it (with a recording `send` and an
injected clock)."""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from memrun.errors import ConfigError
from memrun.packaging import build_package
from memrun.wire.hotsets import HotEntry
from tests.worker_daemon.harness import HANDLERS, wait_for
from worker_daemon.control_plane import (
    ControlPlane,
    ControlPlaneError,
    CredentialRefused,
    ProvisionedSettings,
)
from worker_daemon.heartbeat import Heartbeat
from worker_daemon.logs import EventLog, parse_line
from worker_daemon.report import NAME_MAX_CHARS, heartbeat_report


@pytest.fixture
def registered(transactional_db: None, service_name: Callable[[], str], tmp_path: Path):
    """(worker, credential, deployment) of a service whose package is a real artifact."""
    from apps.services.artifacts import artifact_put
    from apps.services.services import deployment_create, service_create
    from apps.workers.services import worker_create

    service = service_create(name=service_name(), partitions=1)
    package = tmp_path / "package.tar.gz"
    info = build_package(HANDLERS / "sync_ops.py", overrides={"name": service.name}, out=package)
    url = artifact_put(path=package, key=f"deployments/{service.name}/{info.sha256}.tar.gz")
    deployment = deployment_create(
        service=service, sha256=info.sha256, size_bytes=info.size_bytes, artifact_url=url
    )
    worker, credential = worker_create(
        service=service, deployment=deployment, name=f"{service.name}-w"
    )
    return worker, credential, deployment


def test_heartbeats_and_the_drain_answer(live_server: Any, registered: Any) -> None:
    from apps.workers.models import Worker
    from apps.workers.services import worker_drain

    worker, credential, deployment = registered
    plane = ControlPlane(url=live_server.url, token=credential)
    report = {"state": "ready", "in_flight": 1, "partitions": [0], "deployment_id": deployment.pk}
    assert plane.heartbeat(worker.name, report) == "run"
    assert Worker.objects.get(pk=worker.pk).state == "ready"

    worker_drain(worker=worker, reason="test")
    assert plane.heartbeat(worker.name, report) == "drain"
    assert plane.heartbeat(worker.name, {"state": "stopped", "exit_code": 0}) == "drain"
    with pytest.raises(CredentialRefused) as refused:
        plane.heartbeat(worker.name, report)
    assert refused.value.status == 401


def test_another_workers_name_is_forbidden(live_server: Any, registered: Any) -> None:
    _, credential, _ = registered
    with pytest.raises(ControlPlaneError) as exc:
        ControlPlane(url=live_server.url, token=credential).heartbeat(
            "someone-else", {"state": "ready"}
        )
    assert exc.value.status == 403 and "another worker" in exc.value.message


def test_an_unreachable_control_plane_is_an_error_not_a_crash() -> None:
    plane = ControlPlane(url="http://127.0.0.1:1", token="mrw_x", timeout_s=2)
    with pytest.raises(ControlPlaneError) as exc:
        plane.heartbeat("w", {"state": "ready"})
    assert exc.value.status == 0 and "cannot reach" in exc.value.message


def test_the_package_is_streamed_and_its_sha256_verified(
    live_server: Any, registered: Any, tmp_path: Path
) -> None:
    _, credential, deployment = registered
    plane = ControlPlane(url=live_server.url, token=credential)
    dest = tmp_path / "got" / "package.tar.gz"
    sha256 = plane.fetch_package(deployment.pk, dest, expected_sha256=deployment.sha256)
    assert sha256 == deployment.sha256 == hashlib.sha256(dest.read_bytes()).hexdigest()

    other = tmp_path / "other.tar.gz"
    with pytest.raises(ControlPlaneError) as exc:
        plane.fetch_package(deployment.pk, other, expected_sha256="0" * 64)
    assert "refusing it" in exc.value.message
    assert not other.exists() and list(other.parent.glob(".other*")) == []


def test_provisioned_settings_come_from_the_env() -> None:
    env = {
        "MEMRUN_URL": "http://cp:8000/",
        "MEMRUN_WORKER_ID": "svc-v1-abc",
        "MEMRUN_WORKER_TOKEN": "mrw_x",
        "MEMRUN_SERVICE": "svc",
        "MEMRUN_DEPLOYMENT_ID": "7",
        "MEMRUN_HEARTBEAT_INTERVAL_S": "2.5",
    }
    settings = ProvisionedSettings.from_env(env)
    assert settings.url == "http://cp:8000" and settings.deployment_id == 7
    assert settings.heartbeat_interval_s == 2.5
    assert settings.package_sha256 is None
    with pytest.raises(ConfigError, match="MEMRUN_WORKER_TOKEN is not set"):
        ProvisionedSettings.from_env({**env, "MEMRUN_WORKER_TOKEN": ""})
    with pytest.raises(ConfigError, match="not a number"):
        ProvisionedSettings.from_env({**env, "MEMRUN_DEPLOYMENT_ID": "seven"})


# -- the heartbeat thread ----------------------------------------------------------------


class Recorder:
    """`send` for the heartbeat: records reports, answers what the test says."""

    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []
        self.answer: str | Exception = "run"
        self.lock = threading.Lock()

    def __call__(self, report: Mapping[str, Any]) -> str:
        with self.lock:
            self.reports.append(dict(report))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def states(self) -> list[str]:
        with self.lock:
            return [r["state"] for r in self.reports]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_heartbeat(
    send: Recorder,
    stats: dict[str, Any],
    clock: FakeClock,
    log: BinaryIO | None = None,
    **kw: Any,
) -> Heartbeat:
    return Heartbeat(
        send=send,
        stats=lambda: dict(stats),
        log=EventLog(stream=log or open("/dev/null", "wb")),
        interval_s=10.0,
        check_interval_s=0.01,
        clock=clock,
        rng=lambda: 0.5,
        extra={"deployment_id": 3},
        **kw,
    )


def test_beats_at_once_on_every_state_change_and_then_every_interval() -> None:
    send, clock, stats = Recorder(), FakeClock(), {"state": "initializing"}
    heartbeat = make_heartbeat(send, stats, clock)
    heartbeat.start()
    try:
        wait_for(lambda: send.states() == ["booting"], what="the first beat")
        stats["state"] = "running"
        wait_for(lambda: send.states() == ["booting", "ready"], what="the ready beat")
        clock.now = 10.0
        wait_for(lambda: send.states() == ["booting", "ready", "ready"], what="the 10 s beat")
    finally:
        heartbeat.stop(final={"state": "stopped", "exit_code": 0})
    assert send.reports[-1] == {"state": "stopped", "exit_code": 0, "deployment_id": 3}
    assert all(r["deployment_id"] == 3 for r in send.reports)


def test_soon_sends_the_next_beat_before_it_is_due() -> None:
    send, clock, stats = Recorder(), FakeClock(), {"state": "running"}
    heartbeat = make_heartbeat(send, stats, clock)
    heartbeat.start()
    try:
        wait_for(lambda: send.states() == ["ready"], what="the first beat")
        heartbeat.soon()  # partitions were revoked: the clock has not moved
        wait_for(lambda: send.states() == ["ready", "ready"], what="the early beat")
    finally:
        heartbeat.stop()


def test_a_worker_gets_the_hot_sets_other_workers_reported_through_the_control_plane(
    live_server: Any, registered: Any
) -> None:
    from apps.workers.services import worker_create

    old, old_credential, deployment = registered
    new, new_credential = worker_create(
        service=old.service, deployment=deployment, name=f"{old.service.name}-new"
    )
    entry = ["s3://bucket/k.bin", 4096, '"etag"', 1700000000.5]
    report = heartbeat_report(
        {"state": "running", "cache": {"hot_sets": [[3, *entry], [4, *entry[:1], 1, "v", 1.0]]}}
    )
    ControlPlane(url=live_server.url, token=old_credential).heartbeat(old.name, report)
    plane = ControlPlane(url=live_server.url, token=new_credential)
    assert plane.hot_sets(new.name, [3]) == [HotEntry(3, *entry)]
    assert plane.hot_sets(new.name, [5]) == []
    with pytest.raises(ControlPlaneError) as other:
        plane.hot_sets(old.name, [3])
    assert other.value.status == 403


def test_drain_is_passed_on_once_even_before_the_worker_exists() -> None:
    send, clock, stats = Recorder(), FakeClock(), {"state": "starting"}
    send.answer = "drain"
    heartbeat = make_heartbeat(send, stats, clock)
    heartbeat.start()
    try:
        wait_for(lambda: heartbeat.drain_requested, what="the drain answer")
        drained: list[int] = []
        heartbeat.attach(stats=lambda: {"state": "draining"}, on_drain=lambda: drained.append(1))
        assert drained == [1]
        wait_for(lambda: send.states() == ["booting", "draining"], what="the draining beat")
        clock.now = 100.0
        wait_for(lambda: len(send.reports) == 3, what="the next beat")
        assert drained == [1]
    finally:
        heartbeat.stop()


def test_a_drain_answer_to_a_stopping_worker_is_not_logged() -> None:
    send, clock, stats = Recorder(), FakeClock(), {"state": "running"}
    send.answer = "drain"
    log = io.BytesIO()
    heartbeat = make_heartbeat(send, stats, clock, log)
    heartbeat.start()
    try:
        wait_for(lambda: heartbeat.drain_requested, what="the drain answer")
    finally:
        heartbeat.stop()
    assert [parse_line(line)["event"] for line in log.getvalue().splitlines()] == [
        "heartbeat.drain_requested"
    ]

    send, stopping_log = Recorder(), io.BytesIO()
    send.answer = "drain"
    heartbeat = make_heartbeat(send, {"state": "stopping"}, clock, stopping_log)
    heartbeat.start()
    try:
        wait_for(lambda: heartbeat.drain_requested, what="the drain answer")
    finally:
        heartbeat.stop(final={"state": "stopped", "exit_code": 0})
    assert send.states() == ["draining", "stopped"]
    assert stopping_log.getvalue() == b""


def test_a_refused_credential_ends_the_heartbeats() -> None:
    send, clock, stats = Recorder(), FakeClock(), {"state": "running"}
    send.answer = CredentialRefused("401", status=401)
    refused: list[int] = []
    heartbeat = make_heartbeat(send, stats, clock, on_refused=lambda: refused.append(1))
    heartbeat.start()
    wait_for(lambda: heartbeat.refused, what="the refusal")
    heartbeat.stop(final={"state": "stopped"})
    assert refused == [1] and len(send.reports) == 1


def test_an_unreachable_control_plane_is_retried_at_the_next_beat() -> None:
    send, clock, stats = Recorder(), FakeClock(), {"state": "running"}
    send.answer = ControlPlaneError("cannot reach")
    heartbeat = make_heartbeat(send, stats, clock)
    heartbeat.start()
    try:
        wait_for(lambda: len(send.reports) == 1, what="a first attempt")
        send.answer = "run"
        clock.now = 11.0
        wait_for(lambda: heartbeat.sent == 1, what="the next beat")
    finally:
        heartbeat.stop()


def test_a_stats_snapshot_becomes_a_compact_heartbeat_report() -> None:
    stats = {
        "worker": "w",
        "state": "running",
        "in_flight": 2,
        "concurrency": 4,
        "lag": 4,
        "requests": {"total": 9, "errors": 1},
        "config": {"name": "svc", "concurrency": 4},
        "cache": {
            "requests": 10,
            "hits": {"memory": 6, "disk": 3},
            "misses": 1,
            "bytes": {"memory": 60, "disk": 30, "remote": 10},
            "memory": {"budget_bytes": 100, "named_bytes": 5, "decoded_bytes": 7},
            "disk": {"used_bytes": 40, "capacity_bytes": 1000, "entries": 2},
            "largest": [{"tier": "disk", "name": "s3://b/" + "k" * 1000, "size_bytes": 30}],
        },
        "partitions": [
            {"topic": "t", "partition": 3, "lag": 4, "committed": 8, "high": 12},
            {"topic": "t", "partition": 1, "lag": None, "committed": -1, "high": None},
        ],
        "handled": 9,
        "nested": {"not": "a counter"},
    }
    report = heartbeat_report(stats, deployment_id=1)
    cache = report.pop("cache")
    assert report == {
        "state": "ready",
        "in_flight": 2,
        "concurrency": 4,
        "lag": 4,
        "requests": {"total": 9, "errors": 1},
        "config": {"name": "svc", "concurrency": 4},
        "partitions": [1, 3],
        "partition_lag": {"3": 4},
        "stats": {"handled": 9},
        "deployment_id": 1,
    }
    assert cache["memory"] | cache["disk"] | cache["remote"] and cache["requests"] == 10
    assert (cache["memory"]["hits"], cache["memory"]["used_bytes"]) == (6, 12)
    assert (cache["disk"]["hits"], cache["disk"]["capacity_bytes"]) == (3, 1000)
    assert (cache["remote"]["hits"], cache["remote"]["bytes"]) == (1, 10)
    [largest] = cache["largest"]
    assert largest["size_bytes"] == 30 and len(largest["name"]) == NAME_MAX_CHARS


# -- the provisioned worker's flow, with a stub control plane and run_worker --------------


class StubPlane(ControlPlane):
    """Answers heartbeats from a script and "downloads" a fixed file."""

    def __init__(self, answer: str | Exception = "run") -> None:
        super().__init__(url="http://stub", token="mrw_stub")
        self.reports: list[dict[str, Any]] = []
        self.answer = answer

    def heartbeat(self, worker_id: str, report: Mapping[str, Any]) -> str:
        self.reports.append(dict(report))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def fetch_package(self, deployment_id: int, dest: Path, *, expected_sha256: str | None) -> str:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(b"package")
        return hashlib.sha256(b"package").hexdigest()


class StubWorker:
    def __init__(self) -> None:
        self.stopped = threading.Event()

    def stats(self) -> dict[str, Any]:
        return {"state": "draining" if self.stopped.is_set() else "running"}

    def request_stop(self) -> None:
        self.stopped.set()


def provisioned() -> ProvisionedSettings:
    return ProvisionedSettings(
        url="http://stub",
        worker_id="svc-v1-abc",
        token="mrw_stub",
        service="svc",
        deployment_id=4,
        package_sha256=None,
        heartbeat_interval_s=0.05,
    )


def run(tmp_path: Path, plane: StubPlane, run_worker: Callable[..., int]) -> int:
    from worker_daemon.provisioned import run_provisioned_worker

    return run_provisioned_worker(
        provisioned(),
        run_worker=run_worker,
        control_plane=plane,
        worker_overrides={"work_root": tmp_path / "work"},
    )


def test_a_failed_init_is_reported_in_the_final_heartbeat(tmp_path: Path) -> None:
    from worker_daemon.provisioned import _FailureTap

    def init_fails(settings: Any, *, log: Any, on_worker: Any, hot_sets: Any) -> int:
        assert isinstance(log, _FailureTap)
        assert settings.package_path == tmp_path / "work" / "downloads" / "deployment-4.tar.gz"
        assert settings.worker_id == settings.group_instance_id == "svc-v1-abc"
        log.event("worker.init_failed", error_type="ValueError", error="boom")
        return 1

    plane = StubPlane()
    assert run(tmp_path, plane, init_fails) == 1
    assert plane.reports[0]["state"] == "booting" and plane.reports[0]["deployment_id"] == 4
    assert plane.reports[-1] == {
        "state": "stopped",
        "exit_code": 1,
        "error": "an init handler failed: ValueError: boom",
        "deployment_id": 4,
    }


def test_a_package_that_cannot_load_is_reported(tmp_path: Path) -> None:
    from worker_daemon.package import ServiceLoadError

    def import_fails(settings: Any, *, log: Any, on_worker: Any, hot_sets: Any) -> int:
        raise ServiceLoadError("importing handler.py failed: ImportError: no numpy")

    plane = StubPlane()
    assert run(tmp_path, plane, import_fails) == 1
    final = plane.reports[-1]
    assert final["state"] == "stopped" and final["exit_code"] == 1
    assert final["error"] == "ServiceLoadError: importing handler.py failed: ImportError: no numpy"


def test_drain_stops_the_worker_and_it_reports_stopped(tmp_path: Path) -> None:
    def serve(settings: Any, *, log: Any, on_worker: Any, hot_sets: Any) -> int:
        worker = StubWorker()
        on_worker(worker)
        assert worker.stopped.wait(30), "the drain answer never reached the worker"
        return 0

    plane = StubPlane(answer="drain")
    assert run(tmp_path, plane, serve) == 0
    assert plane.reports[-1]["state"] == "stopped" and plane.reports[-1]["exit_code"] == 0


def test_a_refused_credential_exits_77_without_a_final_heartbeat(tmp_path: Path) -> None:
    def serve(settings: Any, *, log: Any, on_worker: Any, hot_sets: Any) -> int:
        raise AssertionError("must not start after a refusal")

    plane = StubPlane(answer=CredentialRefused("401", status=401))
    assert run(tmp_path, plane, serve) == 77
    assert len(plane.reports) == 1


def test_restart_me_leaves_the_worker_registered(tmp_path: Path) -> None:
    def give_up(settings: Any, *, log: Any, on_worker: Any, hot_sets: Any) -> int:
        on_worker(StubWorker())
        return 75

    plane = StubPlane()
    assert run(tmp_path, plane, give_up) == 75
    assert all(r["state"] != "stopped" for r in plane.reports)
