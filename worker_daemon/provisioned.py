"""A provisioned worker: what `python -m worker_daemon --deployment ID` runs under a provisioner.

    heartbeat (booting) -> fetch the package from the control plane (sha256 verified)
    -> run_worker: prepare (safe extract, PEP 723 venv), import the service, run the
    Worker (heartbeats report ready, then every 10 s) -> final heartbeat (stopped, code)

A failure before the Worker runs (download, dependencies, import) or in its init
handlers is reported in the final heartbeat with the reason, and the exit code is 1:
the control plane fails the rollout with that reason instead of waiting for a timeout.
"drain" in a heartbeat answer stops the worker as SIGTERM does (exit 0); a refused
credential stops it too, with EXIT_CREDENTIAL_REFUSED (no restart).
"""

from __future__ import annotations

import dataclasses
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from memrun.errors import MemrunError
from worker_daemon.control_plane import (
    EXIT_CREDENTIAL_REFUSED,
    ControlPlane,
    ControlPlaneError,
    ProvisionedSettings,
)
from worker_daemon.heartbeat import Heartbeat
from worker_daemon.logs import EventLog
from worker_daemon.report import heartbeat_report
from worker_daemon.runtime import EXIT_RESTART, Worker
from worker_daemon.settings import WorkerSettings

EXIT_START_FAILED = 1
_ERROR_MAX_CHARS = 4000

# worker_daemon.main.run_worker(settings, log=..., on_worker=...) -> exit code
RunWorker = Callable[..., int]


class _FailureTap(EventLog):
    """The worker's event log, remembering why init failed for the final heartbeat."""

    error = ""

    def event(self, name: str, /, **fields: Any) -> None:
        if name == "worker.init_failed":
            self.error = (
                f"an init handler failed: {fields.get('error_type')}: {fields.get('error')}"
            )
        super().event(name, **fields)


def run_provisioned_worker(
    settings: ProvisionedSettings,
    *,
    run_worker: RunWorker,
    control_plane: ControlPlane | None = None,
    log: EventLog | None = None,
    worker_overrides: dict[str, Any] | None = None,
    on_stopped: Callable[[], None] = lambda: None,
) -> int:
    """Fetch, prepare and run the deployment's package; returns the exit code.
    `run_worker` is worker_daemon.main.run_worker (passed in to keep this testable).
    `on_stopped` is called once the worker has stopped (or failed to start), before its
    final heartbeat: the process entry point makes SIGTERM harmless there, as the final
    heartbeat is what tells a supervisor to send one, and the last lines must still leave."""
    log = log or _FailureTap(worker=settings.worker_id, service=settings.service)
    plane = control_plane or ControlPlane(
        url=settings.url, token=settings.token, timeout_s=settings.request_timeout_s
    )
    booting: dict[str, Any] = {"state": "starting", "phase": "fetching"}
    current: dict[str, Worker] = {}

    def refused() -> None:
        if "worker" in current:
            current["worker"].request_stop()

    heartbeat = Heartbeat(
        send=lambda report: plane.heartbeat(settings.worker_id, report),
        stats=lambda: dict(booting),
        log=log,
        interval_s=settings.heartbeat_interval_s,
        jitter=settings.heartbeat_jitter,
        extra={"deployment_id": settings.deployment_id},
        on_refused=refused,
    )
    heartbeat.start()
    try:
        base = WorkerSettings.from_env(
            service=settings.service,
            worker_id=settings.worker_id,
            package_path=Path("."),
            package_sha256=settings.package_sha256,
            **(worker_overrides or {}),
        )
        package = base.work_root / "downloads" / f"deployment-{settings.deployment_id}.tar.gz"
        plane.fetch_package(
            settings.deployment_id, package, expected_sha256=settings.package_sha256
        )
    except (ControlPlaneError, MemrunError) as exc:
        return _failed(heartbeat, log, f"{type(exc).__name__}: {exc.message}", on_stopped)
    if heartbeat.refused:
        heartbeat.stop()
        return EXIT_CREDENTIAL_REFUSED
    booting["phase"] = "preparing"

    def attach(worker: Worker) -> None:
        current["worker"] = worker
        heartbeat.attach(stats=worker.stats, on_drain=worker.request_stop)
        worker.on_revoked = heartbeat.soon  # hot sets reach the next owner at once
        if heartbeat.refused:
            worker.request_stop()

    try:
        code = run_worker(
            dataclasses.replace(base, package_path=package),
            log=log,
            on_worker=attach,
            hot_sets=lambda partitions: plane.hot_sets(settings.worker_id, partitions),
        )
    except MemrunError as exc:  # the package, its dependencies, Kafka or Redis
        return _failed(heartbeat, log, f"{type(exc).__name__}: {exc.message}", on_stopped)
    except Exception as exc:
        log.event("worker.crashed", error=repr(exc), traceback=traceback.format_exc())
        return _failed(heartbeat, log, f"{type(exc).__name__}: {exc}", on_stopped)
    if heartbeat.refused:
        heartbeat.stop()
        return EXIT_CREDENTIAL_REFUSED
    if code == EXIT_RESTART:
        # Restarted under the same name, it keeps its partitions: not a stop.
        heartbeat.stop()
        return code
    error = log.error if isinstance(log, _FailureTap) else ""
    on_stopped()
    heartbeat.stop(final={**_last_report(current), "exit_code": code, "error": error})
    return code


def _last_report(current: dict[str, Worker]) -> dict[str, Any]:
    """The stopped worker's last counters (what its cache fetched while draining too), so
    that the control plane keeps them; just the state if they cannot be read."""
    worker = current.get("worker")
    report: dict[str, Any] = {}
    if worker is not None:
        try:
            report = heartbeat_report(worker.stats())
        except Exception:  # a stats bug must not lose the final heartbeat
            report = {}
    return {**report, "state": "stopped"}


def _failed(heartbeat: Heartbeat, log: EventLog, error: str, on_stopped: Callable[[], None]) -> int:
    error = error[:_ERROR_MAX_CHARS]
    log.event("worker.start_failed", error=error)
    log.flush()
    on_stopped()
    heartbeat.stop(final={"state": "stopped", "exit_code": EXIT_START_FAILED, "error": error})
    return EXIT_CREDENTIAL_REFUSED if heartbeat.refused else EXIT_START_FAILED
