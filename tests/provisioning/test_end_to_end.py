"""Running workers end to end, with real processes: the live control plane (pytest-django's
live server), the local supervisor as `memrun up` runs it, `python -m worker_daemon
--deployment` processes that fetch an uploaded package and heartbeat, Kafka and Redis.
Reconcile runs when the test calls it and on worker events (Celery eager); time is never
slept, the test waits on conditions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from memrun import Client
from memrun.cli.logs import log_lines
from memrun.packaging import build_package
from memrun.wire import install_env_pick
from tests.fixtures.envprobe import probe_index
from tests.worker_daemon.harness import wait_for, wait_outcomes

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

HANDLERS = Path(__file__).parent / "handlers"
REPO = Path(__file__).resolve().parents[2]
BOOT_TIMEOUT_S = 120.0


@pytest.fixture
def worker_grace_period_s() -> int:
    """Long enough for a stopped worker to finish the requests of a rollout's overlap."""
    return 20


@pytest.fixture
def eager_celery() -> Iterator[None]:
    """Tasks run where they are queued: the rollout a deploy starts, the reconcile a
    heartbeat wakes. Nothing goes to the shared Redis broker."""
    from memrun_site.celery import app

    before = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = before


@pytest.fixture
def supervisor(live_home: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The local supervisor, run the way `memrun up` runs it."""
    log = (live_home / "supervisor.log").open("wb")
    argv = [sys.executable, "-m", "apps.provisioning.local_supervisor", "--home", str(live_home)]
    process = subprocess.Popen(
        [*argv, "--stop-grace-s", "5"],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    yield process
    process.send_signal(signal.SIGTERM)
    process.wait(60)
    log.close()


class Scenario:
    def __init__(self, name: str, home: Path, tmp: Path, redis: Any, client: Client) -> None:
        self.name = name
        self.home = home
        self.tmp = tmp
        self.redis = redis
        self.client = client

    @property
    def service(self) -> Any:
        from apps.services.models import Service

        return Service.objects.get(name=self.name)

    def deploy(self, handler: str | Path, **overrides: Any) -> Any:
        """Upload a package built from `handler` (a file in handlers/, or a path), as
        `memrun deploy --name` (and flags such as `secrets`) would."""
        from apps.services.deployments import deployment_upload
        from apps.services.uploads import Upload

        source = handler if isinstance(handler, Path) else HANDLERS / handler
        package = self.tmp / f"{source.name}-{len(list(self.tmp.glob('*.tar.gz')))}.tar.gz"
        build_package(source, overrides={"name": self.name, **overrides}, out=package)
        upload = Upload(package, package.stat().st_size, package.name, False, "")
        return deployment_upload(service_name=self.name, upload=upload)

    def status(self, deployment: Any) -> str:
        deployment.refresh_from_db()
        return str(deployment.status)

    def reconcile(self, *, now: Any = None) -> list[Any]:
        from apps.provisioning.reconcile import reconcile_service

        return reconcile_service(service_id=self.service.pk, now=now)

    def until(self, condition: Callable[[], Any], what: str) -> Any:
        """Reconcile until `condition` holds."""

        def reconciled() -> Any:
            self.reconcile()
            return condition()

        return wait_for(reconciled, timeout_s=BOOT_TIMEOUT_S, what=what)

    def workers(self, state: str | None = None, version: int | None = None) -> list[Any]:
        from apps.workers.models import Worker

        workers = Worker.objects.filter(service__name=self.name).select_related("deployment")
        if state:
            workers = workers.filter(state=state)
        if version:
            workers = workers.filter(deployment__version=version)
        return list(workers.order_by("name"))

    def log_of(self, worker: str) -> str:
        path = self.home / "workers" / worker / "worker.log"
        return path.read_text() if path.exists() else ""

    def shipped_lines(self, worker: str) -> list[dict[str, Any]]:
        """The worker's lines as `memrun logs NAME --worker W` reads them from the API."""
        return list(log_lines(self.client, self.name, worker=worker, limit=1000))

    def submit(self, users: range) -> list[str]:
        return [self.submit_payload({"user": user}, sticky_template="user") for user in users]

    def submit_payload(self, payload: dict[str, Any], *, sticky_template: str) -> str:
        from asgiref.sync import async_to_sync

        from apps.services.invoke import InvokeTarget, requests_submit
        from apps.services.requestids import request_id_new
        from memrun.wire.sticky import StickyTemplate

        sticky = StickyTemplate.parse(sticky_template)
        target = InvokeTarget(service=self.name, sticky=sticky, timeout_seconds=120, refusal=None)
        # An id as the control plane makes it, so GET /requests/{id} finds the request.
        request_id = request_id_new(service=self.name, caller=None)
        async_to_sync(requests_submit)(
            target=target,
            items=[(sticky.key_for(payload), json.dumps(payload).encode())],
            request_ids=[request_id],
        )
        return request_id

    def outcomes(self, request_ids: list[str]) -> list[Any]:
        """The outcomes, read where the workers write them (the wait is the harness's)."""
        found = wait_outcomes(self.redis, self.name, request_ids, timeout_s=BOOT_TIMEOUT_S)
        return [found[i] for i in request_ids]


@pytest.fixture
def scenario(
    live_home: Path,
    supervisor: subprocess.Popen[bytes],
    eager_celery: None,
    service_name: Callable[[], str],
    tmp_path: Path,
    redis_client: Any,
    live_server: Any,
    api_token: tuple[Any, str],
) -> Scenario:
    client = Client(live_server.url, api_token[1])
    return Scenario(service_name(), live_home, tmp_path, redis_client, client)


def test_deploy_invoke_scale_and_replace_dead_workers(scenario: Scenario) -> None:
    v1 = scenario.deploy("echo.py")
    scenario.until(lambda: scenario.status(v1) == "active", "v1 to be live")
    assert len(scenario.workers("ready")) == 1
    [first] = scenario.outcomes(scenario.submit(range(1)))
    assert first.ok and first.result["worker"] == scenario.workers("ready")[0].name

    # 1 -> 3 -> 1 while requests keep coming: every one is answered.
    from apps.provisioning.services import service_scale

    ids = scenario.submit(range(0, 100))
    service_scale(service=scenario.service, workers=3)
    ids += scenario.submit(range(100, 200))
    scenario.until(
        lambda: (
            len(ready := scenario.workers("ready")) == 3
            and all(w.stats.get("partitions") for w in ready)
        ),
        "three ready workers, each with partitions",
    )
    ids += scenario.submit(range(200, 300))
    service_scale(service=scenario.service, workers=1)
    ids += scenario.submit(range(300, 400))
    scenario.until(
        lambda: len(scenario.workers("stopped")) == 2 and len(scenario.workers("ready")) == 1,
        "two drained workers",
    )
    outcomes = scenario.outcomes(ids)
    assert all(o is not None and o.ok for o in outcomes)
    assert len({o.result["worker"] for o in outcomes}) >= 2
    for drained in scenario.workers("stopped"):
        # Its last line leaves after its final heartbeat marked it stopped, and arrives.
        last = json.loads(scenario.log_of(drained.name).splitlines()[-1])
        assert last["event"] == "worker.stopped"

        def last_line_shipped(name: str = drained.name, uptime_s: float = last["uptime_s"]) -> bool:
            return any(
                line["event"] == "worker.stopped" and line["fields"]["uptime_s"] == uptime_s
                for line in scenario.shipped_lines(name)
            )

        wait_for(last_line_shipped, timeout_s=30, what=f"{drained.name}'s last line in its logs")

    # kill -9: the supervisor restarts it under the same name, and it serves again.
    [survivor] = scenario.workers("ready")
    status = json.loads(
        (scenario.home / "local-workers" / f"{survivor.name}.status.json").read_text()
    )
    os.killpg(status["pid"], signal.SIGKILL)  # the worker's group: its sandbox and it

    def restarted() -> dict[str, Any] | None:
        path = scenario.home / "local-workers" / f"{survivor.name}.status.json"
        now = json.loads(path.read_text())
        return now if now["restarts"] == 1 and now["state"] == "running" else None

    restarted_status = wait_for(restarted, timeout_s=60, what="the supervisor's restart")
    assert restarted_status["exit_code"] == -signal.SIGKILL
    [answer] = scenario.outcomes(scenario.submit(range(1)))
    assert answer.ok and answer.result["worker"] == survivor.name
    # Its "ready" heartbeat is recorded before it is frozen: one still in flight would be
    # recorded after a reconcile pass that started before it, and read as newer.
    wait_for(
        lambda: survivor.events.filter(from_state="booting", to_state="ready").count() == 2,
        timeout_s=60,
        what="the restarted worker's ready heartbeat",
    )

    # Silent for 60 s (frozen, so it cannot heartbeat; its clock moved on): dead and replaced.
    from apps.workers.models import Worker

    os.killpg(restarted_status["pid"], signal.SIGSTOP)
    Worker.objects.filter(pk=survivor.pk).update(
        last_heartbeat_at=timezone.now() - timedelta(seconds=61)
    )
    scenario.reconcile()
    survivor.refresh_from_db()
    assert survivor.state == "dead" and survivor.events.last().reason.startswith("no heartbeat")
    scenario.until(
        lambda: [w.name for w in scenario.workers("ready")] not in ([], [survivor.name]),
        "a replacement",
    )
    [replacement] = scenario.workers("ready")
    assert replacement.name != survivor.name
    [answer] = scenario.outcomes(scenario.submit(range(1)))
    assert answer.ok and answer.result["worker"] == replacement.name
    wait_for(
        lambda: (
            not (scenario.home / "local-workers" / f"{survivor.name}.json").exists()
            and not Path(f"/proc/{restarted_status['pid']}/cmdline").exists()
        ),
        timeout_s=60,
        what="the dead worker's process to go",
    )


def test_a_broken_version_fails_and_the_old_one_keeps_serving(scenario: Scenario) -> None:
    v1 = scenario.deploy("echo.py")
    scenario.until(lambda: scenario.status(v1) == "active", "v1 to be live")
    v2 = scenario.deploy("broken_init.py")
    scenario.until(lambda: scenario.status(v2) == "failed", "v2 to fail")
    assert "before it was ready" in v2.failure_reason
    assert "ValueError: boom: the database is not there" in v2.failure_reason
    assert "log tail:" in v2.failure_reason
    v1.refresh_from_db()
    assert v1.status == "active"
    assert [w.deployment.version for w in scenario.workers("ready")] == [1]
    assert all(w.state in ("stopped", "dead") for w in scenario.workers(version=2))

    [answer] = scenario.outcomes(scenario.submit(range(1)))
    assert answer.ok and answer.result["version"] == 1
    # Reconcile leaves it at that: no v2 worker is started again.
    assert not any(type(a).__name__ == "CreateWorker" for a in scenario.reconcile())


def test_version_two_takes_over_with_no_failed_request(scenario: Scenario) -> None:
    v1 = scenario.deploy("echo.py")
    scenario.until(lambda: scenario.status(v1) == "active", "v1 to be live")
    v2_source = scenario.tmp / "echo_v2.py"
    v2_source.write_text((HANDLERS / "echo.py").read_text().replace('"version": 1', '"version": 2'))
    ids = scenario.submit(range(0, 100))
    v2 = scenario.deploy(v2_source)
    batch = iter(range(100, 10_000, 10))

    def taken_over() -> bool:
        # Traffic keeps coming during the whole rollout.
        start = next(batch)
        ids.extend(scenario.submit(range(start, start + 10)))
        return scenario.status(v2) == "active" and all(
            w.state == "stopped" for w in scenario.workers(version=1)
        )

    scenario.until(taken_over, "v2 to take over from v1")
    after = scenario.submit(range(0, 50))
    outcomes = scenario.outcomes(ids + after)
    assert all(o is not None and o.ok for o in outcomes)
    assert {o.result["version"] for o in outcomes[: len(ids)]} <= {1, 2}
    assert {o.result["version"] for o in outcomes[len(ids) :]} == {2}
    v1.refresh_from_db()
    assert v1.status == "superseded"


def test_the_readme_example_serves_from_s3_then_from_memory(
    scenario: Scenario, s3_client: Any, s3_settings: Any, unique_name: str, s3_secret: str
) -> None:
    from examples.warm_lookup.make_dataset import make_csv

    bucket = s3_settings.bucket
    key = f"tests/{unique_name}/sales.csv"
    s3_client.put_object(Bucket=bucket, Key=key, Body=make_csv(1000))
    deployment = scenario.deploy(REPO / "examples" / "warm_lookup" / "handler.py")
    scenario.until(lambda: scenario.status(deployment) == "active", "the example to be live")
    payload = {"user_id": 7, "dataset_id": "sales", "dataset_url": f"s3://{bucket}/{key}"}
    answers = []
    for _ in range(2):
        request_id = scenario.submit_payload(payload, sticky_template="user_id:dataset_id")
        [outcome] = scenario.outcomes([request_id])
        assert outcome.ok, outcome.error
        answers.append(outcome.result)
    assert [a["served_from"] for a in answers] == ["remote", "memory"]
    assert answers[0]["rows"] == 1000 and answers[0]["sum"] == answers[1]["sum"]
    assert answers[0]["worker"] == answers[1]["worker"]


def test_pep723_dependencies_install_with_the_machines_settings_and_no_secrets(
    scenario: Scenario, settings: Any, s3_secret: str
) -> None:
    """humanize comes from the machine's index over its trust store (here PyPI, reached
    through a CA that uv does not ship); the env probe, from an extra index set in the
    appliance's environment, records what the worker's installer saw."""
    # The worker is sandboxed: its installer writes the record in its own home folder.
    record = Path("~/installer-env.json")
    # The worker has these (its token; AWS_* from its secret), its installer must not.
    worker_secrets = {"MEMRUN_WORKER_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    appliance_only = {"DATABASE_URL", "SECRET_KEY"}
    with probe_index(record) as index_url:
        appliance_env = {
            **os.environ,
            "UV_EXTRA_INDEX_URL": index_url,
            "no_proxy": "127.0.0.1,localhost",
            "SECRET_KEY": "not-for-workers",
        }
        assert appliance_only <= set(appliance_env)
        settings.MEMRUN_WORKER_INSTALL_ENV = install_env_pick(appliance_env)
        deployment = scenario.deploy("with_dependencies.py", secrets=[s3_secret])
        scenario.until(
            lambda: scenario.status(deployment) in ("active", "failed"), "the rollout to end"
        )
    assert deployment.status == "active", deployment.failure_reason
    request_id = scenario.submit_payload({"user": 1, "bytes": 3_000_000}, sticky_template="user")
    [outcome] = scenario.outcomes([request_id])
    assert outcome.ok, outcome.error
    assert outcome.result == {"size": "3.0 MB", "probed": True}

    # The install's progress reached the rollout page, through the worker's shipped events.
    from apps.web.selectors import deployment_rollout

    [worker] = scenario.workers("ready")

    def install_shown() -> list[str]:
        lines = deployment_rollout(deployment=deployment).lines
        said = [line for line in lines if line.startswith(f"worker {worker.name}: ")]
        return said if len(said) == 2 else []

    installing, installed = scenario.until(install_shown, "the install in the rollout lines")
    assert installing.startswith(f"worker {worker.name}: installing 2 dependencies (humanize")
    assert installed.startswith(f"worker {worker.name}: dependencies installed in ")

    [written] = scenario.home.glob(f"workers/{scenario.name}-*/work/installer-env.json")
    seen = json.loads(written.read_text())
    assert seen["UV_EXTRA_INDEX_URL"] == index_url
    assert seen["no_proxy"] == "127.0.0.1,localhost"
    assert seen["UV_SYSTEM_CERTS"] == "1"
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE"):
        assert seen.get(name) == os.environ.get(name), name
    worker_settings = {"REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS"}
    assert not (worker_secrets | appliance_only | worker_settings) & set(seen)


def test_an_idle_workers_stats_go_to_its_heartbeats_not_its_log(
    scenario: Scenario,
    settings: Any,
    live_server: Any,
    api_token: tuple[Any, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from memrun.cli import main

    # Stats every 0.2 s: ten seconds idle are fifty stats rounds, eight minutes' worth.
    settings.MEMRUN_WORKER_EXTRA_ENV = {
        **settings.MEMRUN_WORKER_EXTRA_ENV,
        "MEMRUN_STATS_INTERVAL_S": "0.2",
    }
    v1 = scenario.deploy("echo.py")
    scenario.until(lambda: scenario.status(v1) == "active", "v1 to be live")
    [worker] = scenario.workers("ready")
    [answer] = scenario.outcomes(scenario.submit(range(1)))
    assert answer.ok

    def idle_and_reported() -> bool:
        worker.refresh_from_db()
        assert worker.last_heartbeat_at is not None and worker.ready_at is not None
        idle = worker.last_heartbeat_at - worker.ready_at >= timedelta(seconds=10)
        return idle and (worker.stats.get("requests") or {}).get("total") == 1

    wait_for(idle_and_reported, timeout_s=BOOT_TIMEOUT_S, what="ten idle seconds of heartbeats")
    # The numbers travel in the heartbeat.
    assert worker.stats["partitions"] and set(worker.stats["partition_lag"]) <= {
        str(p) for p in worker.stats["partitions"]
    }
    assert worker.stats["requests"]["last_minute"]["requests"] == 1
    assert {"memory", "disk", "remote"} <= set(worker.stats["cache"])

    monkeypatch.setenv("MEMRUN_URL", live_server.url)
    monkeypatch.setenv("MEMRUN_TOKEN", api_token[1])

    def shipped() -> list[str]:
        main(["logs", scenario.name, "-n", "1000"])
        lines = capsys.readouterr().out.splitlines()
        return lines if any(" request " in line for line in lines) else []

    lines = wait_for(shipped, timeout_s=60, what="the request's log line, shipped")
    assert not [line for line in lines if "worker.stats" in line]
    # Boot, assignment and the one request: a person can read it.
    assert len(lines) < 40, "\n".join(lines)


def test_a_crash_looping_version_backs_off_while_the_old_one_keeps_serving(
    scenario: Scenario, settings: Any, redis_client: Any
) -> None:
    from apps.services.models import DeploymentEvent
    from apps.workers.models import Worker

    settings.MEMRUN_CRASH_BACKOFF_BASE_S = 4
    settings.MEMRUN_CRASH_BACKOFF_MAX_S = 300
    settings.MEMRUN_CRASH_DEGRADED_AFTER_FAILURES = 3
    minute = timedelta(seconds=60)
    v1 = scenario.deploy("echo.py")
    scenario.until(lambda: scenario.status(v1) == "active", "v1 to be live")
    settings.MEMRUN_ROLLOUT_MIN_READY_S = 3600  # v2 never gets to retire v1 here
    v2 = scenario.deploy("breaks_later.py")
    [first] = scenario.until(lambda: scenario.workers("ready", version=2), "a ready v2 worker")

    # What v2 needs goes away, and its worker is killed: it and every replacement die
    # at start from now on.
    broken_key = f"memrun:{scenario.name}:test-broken"
    redis_client.set(broken_key, "1")
    try:
        status = json.loads(
            (scenario.home / "local-workers" / f"{first.name}.status.json").read_text()
        )
        broken_at = timezone.now()
        # Its process group: the worker, and the sandbox (bwrap) around it.
        os.killpg(status["pid"], signal.SIGKILL)
        ids: list[str] = []
        batch = iter(range(0, 100_000, 10))

        def looped_a_minute() -> bool:
            start = next(batch)
            ids.extend(scenario.submit(range(start, start + 10)))
            v2.refresh_from_db()
            return v2.degraded and timezone.now() - broken_at >= minute

        wait_for(
            lambda: scenario.reconcile() is not None and looped_a_minute(),
            timeout_s=4 * BOOT_TIMEOUT_S,
            what="v2 to crash-loop for a minute and be marked degraded",
        )
    finally:
        redis_client.delete(broken_key)

    # Replacements backed off: the first at once, then 4, 8, 16 s after each death, so at
    # most four start within the minute (without backoff, one per failed boot).
    created = Worker.objects.filter(deployment=v2, created_at__gt=broken_at)
    in_the_minute = [w for w in created if w.created_at - broken_at < minute]
    assert 2 <= len(in_the_minute) <= 4, [w.created_at - broken_at for w in created]
    waits = DeploymentEvent.objects.filter(deployment=v2, reason__startswith="crash loop")
    assert waits.exists() and all(e.to_status == "rolling" for e in waits)
    assert v2.status == "rolling" and "ConnectionError: the feature store is gone" in (
        v2.degraded_reason
    )
    assert "log tail:" in v2.degraded_reason

    # v1 kept serving all along: every request answered, by v1.
    v1.refresh_from_db()
    assert v1.status == "active"
    assert [w.deployment.version for w in scenario.workers("ready")] == [1]
    outcomes = scenario.outcomes(ids)
    assert all(o.ok for o in outcomes) and {o.result["version"] for o in outcomes} == {1}


# Each setting, changed to a value the echo handler's v1 does not have.
SETTING_CHANGES = [
    ("memory", "3Gi", "memory_bytes", 3 * 2**30),
    ("disk", "2Gi", "disk_bytes", 2 * 2**30),
    ("concurrency", 2, "concurrency", 2),
    ("timeout_seconds", 20, "timeout_seconds", 20),
    ("sticky_key", "user:op", "sticky_key", "user:op"),
    ("max_workers", 2, "max_workers", 2),
    ("min_workers", 0, "min_workers", 0),
]


def test_each_setting_change_rolls_out_and_the_workers_and_provisioner_agree(
    scenario: Scenario, api_client: Any
) -> None:
    """I10: a PATCH of any setting is a new deployment of the same package; its worker
    runs, and is started and sized with, exactly that deployment's settings."""
    v1 = scenario.deploy("echo.py")
    scenario.until(lambda: scenario.status(v1) == "active", "v1 to be live")
    url = f"/api/v1/services/{scenario.name}"
    for arg, value, field, expected in SETTING_CHANGES:
        response = api_client.patch(url, {arg: value}, content_type="application/json")
        assert response.status_code == 200, response.json()
        body = response.json()
        assert body["config"][field] == expected
        version = body["version"]
        deployment = scenario.service.deployments.get(version=version)
        assert deployment.sha256 == v1.sha256 and arg in deployment.message
        scenario.until(
            lambda d=deployment, v=version: (
                scenario.status(d) == "active"
                and [w.deployment.version for w in scenario.workers("ready")] == [v]
                and scenario.workers("ready")[0].stats.get("config") is not None
            ),
            f"v{version} ({arg}={value}) to take over",
        )
        [worker] = scenario.workers("ready")
        config = deployment.config
        assert config is not None and getattr(config, field) == expected
        # The worker runs these settings, and the cache it opened is sized from them.
        assert worker.stats["config"] == config.to_dict()
        assert worker.stats["cache"]["disk"]["capacity_bytes"] == config.disk_bytes
        assert worker.stats["cache"]["memory"]["capacity_bytes"] == config.memory_bytes // 2
        # The provisioner started it with them.
        spec = json.loads((scenario.home / "local-workers" / f"{worker.name}.json").read_text())
        assert json.loads(spec["env"]["MEMRUN_SERVICE_CONFIG"]) == config.to_dict()

    # A change the service cannot take is refused, and nothing rolls.
    refused = api_client.patch(url, {"max_workers": 65}, content_type="application/json")
    assert refused.status_code == 422
    assert "cannot exceed the 64 partitions" in refused.json()["message"]
    assert scenario.service.deployments.count() == 1 + len(SETTING_CHANGES)
    # The last settings serve: the sticky key is now "user:op". Once the last handover is
    # over (the drained worker has left the group), only the new worker can answer.
    scenario.until(
        lambda: len([w for w in scenario.workers() if w.state not in ("stopped", "dead")]) == 1,
        "the last drained worker to stop",
    )
    request_id = scenario.submit_payload({"user": 1, "op": "x"}, sticky_template="user:op")
    [answer] = scenario.outcomes([request_id])
    assert answer.ok and answer.result["worker"] == scenario.workers("ready")[0].name
