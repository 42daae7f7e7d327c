"""The local backend: the provisioner writes and removes specs, the supervisor runs them as
real processes, restarts the ones that die, and stops the ones whose spec went. The
supervisor runs in this process and is ticked by the test, which waits on conditions."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from apps.provisioning.local_layout import (
    LocalLayout,
    LocalWorkerSpec,
    process_start_ticks,
    read_json,
    write_json_atomic,
)
from apps.provisioning.local_supervisor import LocalSupervisor, SupervisorSettings
from apps.provisioning.provisioners import WorkerSpec
from apps.provisioning.provisioners.local import LocalProvisioner
from apps.services.principals import kafka_principal_connection
from memrun.wire.protocol import consumer_group, request_topic
from tests.worker_daemon.harness import (
    MEMRUN,
    make_package,
    make_producer,
    member_worker_id,
    produce_requests,
    wait_for,
    wait_outcomes,
)

FAST = SupervisorSettings(stop_grace_s=10.0, restart_backoff_s=0.05, restart_backoff_max_s=0.2)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def supervisor(home: Path) -> Iterator[LocalSupervisor]:
    running = LocalSupervisor(
        LocalLayout(home), settings=FAST, base_env={**os.environ, "SECRET_KEY": "s3cret"}
    )
    yield running
    running.stop_all()


def python(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


def add_spec(
    home: Path, name: str, argv: list[str], env: dict[str, str] | None = None, service: str = "svc"
) -> None:
    spec = LocalWorkerSpec(name=name, argv=argv, env=env or {}, labels={"service": service})
    write_json_atomic(
        LocalLayout(home).spec_path(name),
        {"name": spec.name, "argv": spec.argv, "env": spec.env, "labels": spec.labels},
    )


def status(home: Path, name: str) -> dict[str, Any]:
    return read_json(LocalLayout(home).status_path(name)) or {}


def until(supervisor: LocalSupervisor, condition: Callable[[], Any], what: str) -> Any:
    def ticked() -> Any:
        supervisor.tick()
        return condition()

    return wait_for(ticked, timeout_s=60, what=what)


def test_a_worker_gets_its_spec_env_and_not_the_appliances(
    home: Path, supervisor: LocalSupervisor, tmp_path: Path
) -> None:
    out = tmp_path / "env.json"
    dump = "import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], 'w'))"
    add_spec(home, "w-env", python(dump, str(out)), {"MEMRUN_WORKER_TOKEN": "mrw_x"})
    until(supervisor, lambda: status(home, "w-env").get("state") == "exited", "a clean exit")

    env = json.loads(out.read_text())
    assert env["MEMRUN_WORKER_TOKEN"] == "mrw_x" and env["PATH"] == os.environ["PATH"]
    assert "SECRET_KEY" not in env and "DATABASE_URL" not in env
    # A clean exit is final: no restart.
    for _ in range(5):
        supervisor.tick()
    assert status(home, "w-env")["restarts"] == 0 and status(home, "w-env")["exit_code"] == 0


def test_a_failing_worker_is_restarted_and_its_exit_and_log_recorded(
    home: Path, supervisor: LocalSupervisor
) -> None:
    add_spec(home, "w-crash", python("print('init failed: boom', flush=True); raise SystemExit(3)"))
    until(supervisor, lambda: status(home, "w-crash").get("restarts", 0) >= 2, "two restarts")
    until(supervisor, lambda: status(home, "w-crash").get("exit_code") == 3, "the exit code")

    [live] = LocalProvisioner(home).list({"service": "svc"})
    assert live.name == "w-crash" and live.exit_code == 3 and live.restarts >= 2
    assert "init failed: boom" in live.log_tail
    assert LocalProvisioner(home).list({"service": "other"}) == []


def test_a_refused_credential_is_not_restarted(home: Path, supervisor: LocalSupervisor) -> None:
    add_spec(home, "w-refused", python("raise SystemExit(77)"))
    until(supervisor, lambda: status(home, "w-refused").get("state") == "exited", "the exit")
    assert status(home, "w-refused")["restarts"] == 0


def left_running(home: Path, name: str, *, state: str = "running") -> subprocess.Popen[bytes]:
    """A worker an earlier supervisor started and recorded, then died without stopping."""
    proc = subprocess.Popen(python("import time\nwhile True: time.sleep(1)"))
    write_json_atomic(
        LocalLayout(home).status_path(name),
        {
            "name": name,
            "state": state,
            "pid": proc.pid,
            "pid_start_ticks": process_start_ticks(proc.pid),
            "restarts": 2,
        },
    )
    return proc


def test_a_left_worker_whose_spec_went_is_stopped_and_one_whose_pid_was_reused_is_not_adopted(
    home: Path, supervisor: LocalSupervisor
) -> None:
    orphan = left_running(home, "w-orphan")  # its spec went while no supervisor ran
    kept = left_running(home, "w-kept")
    add_spec(home, "w-kept", python("import time\nwhile True: time.sleep(1)"))
    # The recorded pid now names another process (other start time): not ours to adopt.
    reused = left_running(home, "w-reused")
    data = read_json(LocalLayout(home).status_path("w-reused"))
    assert data is not None
    write_json_atomic(
        LocalLayout(home).status_path("w-reused"),
        {**data, "pid_start_ticks": data["pid_start_ticks"] - 1},
    )
    add_spec(home, "w-reused", python("import time\nwhile True: time.sleep(1)"))
    try:
        orphan_status = LocalLayout(home).status_path("w-orphan")
        until(
            supervisor,
            lambda: orphan.poll() is not None and not orphan_status.exists(),
            "the orphan to be stopped and forgotten",
        )
        assert orphan.returncode == -signal.SIGTERM
        # Adopted: the same process, its restart count kept; no second one started.
        assert supervisor.pid_of("w-kept") == kept.pid and kept.poll() is None
        assert status(home, "w-kept")["restarts"] == 2
        # Not adopted: a process of its own; the stranger is left alone.
        assert supervisor.pid_of("w-reused") not in (None, reused.pid)
        assert reused.poll() is None
    finally:
        for proc in (orphan, kept, reused):
            proc.kill()
            proc.wait()


def test_a_worker_that_ignores_sigterm_is_killed_after_the_grace(home: Path) -> None:
    supervisor = LocalSupervisor(LocalLayout(home), settings=SupervisorSettings(stop_grace_s=0.5))
    stubborn = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "while True: time.sleep(1)\n"
    )
    add_spec(home, "w-stubborn", python(stubborn))
    log = LocalLayout(home).log_path("w-stubborn")
    until(supervisor, lambda: log.exists() and "ready" in log.read_text(), "the process")
    pid = supervisor.pid_of("w-stubborn")
    LocalProvisioner(home).destroy("w-stubborn")
    until(supervisor, lambda: supervisor.pid_of("w-stubborn") is None, "the kill")
    assert (
        not Path(f"/proc/{pid}").exists()
        or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    )
    assert not LocalLayout(home).status_path("w-stubborn").exists()


def test_a_drained_worker_gets_sigterm_at_once_and_is_not_restarted(
    home: Path, supervisor: LocalSupervisor
) -> None:
    # Exits 3 on SIGTERM: even a non-zero exit of a draining worker is final.
    graceful = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))\n"
        "print('ready', flush=True)\n"
        "while True: time.sleep(1)\n"
    )
    add_spec(home, "w-drain", python(graceful))
    log = LocalLayout(home).log_path("w-drain")
    until(supervisor, lambda: log.exists() and "ready" in log.read_text(), "the process")
    LocalProvisioner(home).drain("w-drain")
    until(supervisor, lambda: status(home, "w-drain").get("state") == "exited", "the drain")
    for _ in range(5):
        supervisor.tick()
    assert status(home, "w-drain")["exit_code"] == 3
    assert status(home, "w-drain")["restarts"] == 0
    LocalProvisioner(home).destroy("w-drain")
    assert not LocalLayout(home).drain_path("w-drain").exists()


@pytest.mark.slow
@pytest.mark.django_db
def test_real_memrun_workers_are_started_restarted_and_stopped(
    home: Path,
    supervisor: LocalSupervisor,
    service_factory: Callable[..., Any],
    kafka_bootstrap: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    service = service_factory(partitions=2)
    package = make_package(tmp_path / "package", service=service.name)
    provisioner = LocalProvisioner(home)
    layout = LocalLayout(home)
    env = {
        "MEMRUN_SERVICE": service.name,
        # The service's own Kafka principal, as worker_spec_build gives it.
        **kafka_principal_connection(service=service).env(),
        "REDIS_URL": redis_url,
        "MEMRUN_SESSION_TIMEOUT_MS": "6000",
    }
    name = f"{service.name}-w1"
    # The provisioner's own spec runs `python -m worker_daemon --deployment`; this one serves a
    # package folder, so that only the supervisor is under test here.
    provisioner.create(WorkerSpec(name=name, service=service.name, deployment_id=1, env=env))
    spec = read_json(layout.spec_path(name))
    assert spec is not None and spec["argv"][-4:] == [
        "--service",
        service.name,
        "--deployment",
        "1",
    ]
    assert "MEMRUN_CACHE_ROOT" not in spec["env"]  # the supervisor's to give
    assert oct(layout.spec_path(name).stat().st_mode & 0o777) == "0o600"
    argv = [str(MEMRUN), "worker", "--service", service.name, "--package", str(package)]
    add_spec(home, name, argv, {**spec["env"], "MEMRUN_WORKER_ID": name}, service.name)

    def log_has(event: str, count: int = 1) -> bool:
        path = layout.log_path(name)
        return path.exists() and path.read_text().count(f'"event":"{event}"') >= count

    until(supervisor, lambda: log_has("worker.assigned"), "the worker to join its group")
    first = supervisor.pid_of(name)
    assert first is not None and layout.cache_root(service.name, name).is_dir()

    os.kill(first, signal.SIGKILL)
    until(supervisor, lambda: status(home, name).get("restarts") == 1, "the restart")
    assert status(home, name)["exit_code"] == -signal.SIGKILL
    until(supervisor, lambda: log_has("worker.assigned", 2), "the restarted worker to join")
    second = supervisor.pid_of(name)
    assert second not in (None, first)
    [live] = provisioner.list({"service": service.name})
    assert live.running and live.restarts == 1

    provisioner.destroy(name)
    until(supervisor, lambda: supervisor.pid_of(name) is None, "the worker to stop")
    assert log_has("worker.stopped")  # SIGTERM: a clean drain, not a kill
    assert provisioner.list({"service": service.name}) == []
    assert not layout.cache_root(service.name, name).exists()
    assert layout.log_path(name).exists()


def start_supervisor(home: Path, out: Path) -> subprocess.Popen[bytes]:
    """The supervisor as `memrun up` runs it: its own process, so a test can SIGKILL it."""
    with out.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "apps.provisioning.local_supervisor", "--home", str(home)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def group_members(admin: AdminClient, service: str) -> list[str]:
    group = consumer_group(service)
    description = admin.describe_consumer_groups([group])[group].result(timeout=10)
    return sorted(member_worker_id(m) for m in description.members)


def echo(producer: Producer, redis_client: redis.Redis, service: str) -> str:
    [request_id] = produce_requests(producer, request_topic(service), [("k", {"op": "echo"})])
    outcome = wait_outcomes(redis_client, service, [request_id])[request_id]
    assert outcome.ok, outcome
    return str(outcome.result["worker"])


@pytest.mark.slow
@pytest.mark.django_db
def test_a_new_supervisor_adopts_the_workers_of_a_killed_one(
    home: Path,
    service_factory: Callable[..., Any],
    kafka_admin: AdminClient,
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    service = service_factory(partitions=2)
    layout = LocalLayout(home)
    name = f"{service.name}-w1"
    # In the worker's own folder: a sandboxed worker sees nothing else of the machine's.
    package = make_package(layout.worker_dir(name) / "work" / "package", service=service.name)
    env = {
        "MEMRUN_SERVICE": service.name,
        "MEMRUN_WORKER_ID": name,
        # The service's own Kafka principal, as worker_spec_build gives it.
        **kafka_principal_connection(service=service).env(),
        "REDIS_URL": redis_url,
        "MEMRUN_SESSION_TIMEOUT_MS": "6000",
    }
    argv = [str(MEMRUN), "worker", "--service", service.name, "--package", str(package)]
    add_spec(home, name, argv, env, service.name)
    first_out, second_out = tmp_path / "first.out", tmp_path / "second.out"
    producer = make_producer(kafka_bootstrap)

    def worker_pid() -> int | None:
        pid = status(home, name).get("pid")
        return pid if status(home, name).get("state") == "running" else None

    def log_count(event: str) -> int:
        path = layout.log_path(name)
        return path.read_text().count(f'"event":"{event}"') if path.exists() else 0

    first = start_supervisor(home, first_out)
    second: subprocess.Popen[bytes] | None = None
    pids: set[int] = set()
    try:
        wait_for(lambda: log_count("worker.assigned") >= 1, timeout_s=120, what="the worker")
        pid = wait_for(worker_pid, what="the worker's status")
        pids.add(pid)
        assert echo(producer, redis_client, service.name) == name

        first.send_signal(signal.SIGKILL)
        first.wait(30)
        assert process_start_ticks(pid) == status(home, name)["pid_start_ticks"]

        second = start_supervisor(home, second_out)
        wait_for(lambda: f"adopted {name} (pid {pid})" in second_out.read_text(), what="adoption")
        assert f"started {name}" not in second_out.read_text()
        assert echo(producer, redis_client, service.name) == name
        assert group_members(kafka_admin, service.name) == [name]
        assert log_count("worker.consuming") == 1 and process_start_ticks(pid) is not None

        # The adopted worker dies: the new supervisor restarts it, and only it is a member.
        # Its process group is the worker (and, sandboxed, the bwrap that holds it).
        os.killpg(pid, signal.SIGKILL)
        restarted = wait_for(
            lambda: (p := worker_pid()) not in (None, pid) and p, what="the restart"
        )
        pids.add(restarted)
        assert status(home, name)["restarts"] == 1
        wait_for(lambda: log_count("worker.assigned") >= 2, timeout_s=120, what="the rejoin")
        assert echo(producer, redis_client, service.name) == name
        wait_for(
            lambda: group_members(kafka_admin, service.name) == [name],
            timeout_s=60,
            what="one group member",
        )
    finally:
        for supervisor in (first, second):
            if supervisor is not None and supervisor.poll() is None:
                supervisor.send_signal(signal.SIGTERM)
                supervisor.wait(60)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def test_a_stopped_workers_cache_is_handed_over_and_its_peers_are_found(
    home: Path, supervisor: LocalSupervisor, tmp_path: Path
) -> None:
    layout = LocalLayout(home)
    out = tmp_path / "env.json"
    dump = "import json, os, sys, time; json.dump(dict(os.environ), open(sys.argv[1], 'w'))"
    add_spec(home, "w-new", python(dump + "; time.sleep(600)", str(out)))
    until(supervisor, out.exists, "the new worker's env")
    env = json.loads(out.read_text())
    assert env["MEMRUN_CACHE_ROOT"] == str(layout.cache_root("svc", "w-new"))
    assert env["MEMRUN_CACHE_HANDOVER_DIR"] == str(layout.handover_dir("svc"))
    assert env["MEMRUN_CACHE_PEERS_DIR"] == str(layout.peers_dir("svc"))

    source = tmp_path / "data.bin"
    source.write_bytes(b"d" * 4096)
    keep_cache = (
        "import os, sys, time; from worker_daemon.cache import CacheSettings, WarmCache; "
        "c = WarmCache.open(CacheSettings.from_env('svc', disk_bytes=2**26, memory_bytes=0)); "
        "c.get_or_fetch(sys.argv[1]); c.close(); open(sys.argv[2], 'w').close(); "
        "time.sleep(600)"
    )
    ready = tmp_path / "old-ready"
    add_spec(home, "w-old", python(keep_cache, str(source), str(ready)))
    until(supervisor, ready.exists, "the old worker's cache")
    assert (layout.cache_root("svc", "w-old") / "svc" / "files").is_dir()

    layout.spec_path("w-old").unlink()
    handed = layout.handover_dir("svc") / "w-old"
    until(supervisor, lambda: (handed / "files").is_dir(), "the handover")
    assert len(list((handed / "files").iterdir())) == 1
    assert not layout.cache_root("svc", "w-old").exists()
