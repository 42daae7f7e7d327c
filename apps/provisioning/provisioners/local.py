"""The `local` backend: workers as processes of this machine, run by the local supervisor
(apps/provisioning/local_supervisor.py, a child of `memrun up`).

`create` writes a spec file, `destroy` removes it, `list` reads specs and the supervisor's
status files: this backend owns no process, so it works from any short-lived Celery task.
"""

from __future__ import annotations

import sys
from pathlib import Path

from apps.provisioning.local_layout import (
    LocalLayout,
    LocalWorkerSpec,
    LocalWorkerStatus,
    read_json,
    read_log_tail,
    write_json_atomic,
)
from apps.provisioning.provisioners.base import LiveWorker, WorkerSpec


class LocalProvisioner:
    def __init__(self, home: Path) -> None:
        self.layout = LocalLayout(home)

    def create(self, spec: WorkerSpec) -> str:
        folder = self.layout.worker_dir(spec.name)
        env = dict(spec.env)
        # Its cache root is the supervisor's to give: its service's caches folder.
        env.setdefault("MEMRUN_WORK_ROOT", str(folder / "work"))
        argv = [
            sys.executable,
            "-m",
            "worker_daemon",
            "--service",
            spec.service,
            "--deployment",
            str(spec.deployment_id),
        ]
        local = LocalWorkerSpec(
            name=spec.name,
            argv=argv,
            env=env,
            labels=dict(spec.labels),
            memory_bytes=spec.memory_bytes,
        )
        write_json_atomic(self.layout.spec_path(spec.name), local.to_dict())
        return spec.name

    def drain(self, ref: str) -> None:
        if self.layout.spec_path(ref).exists():
            self.layout.drain_path(ref).touch()

    def destroy(self, ref: str) -> None:
        self.layout.spec_path(ref).unlink(missing_ok=True)
        self.layout.drain_path(ref).unlink(missing_ok=True)

    def server_verify(self, *, server_id: int, worker_name: str) -> bool:
        return False

    def list(self, labels: dict[str, str]) -> list[LiveWorker]:
        found = []
        for name in self.layout.spec_names():
            data = read_json(self.layout.spec_path(name))
            if data is None:
                continue
            spec_labels = {str(k): str(v) for k, v in data.get("labels", {}).items()}
            if any(spec_labels.get(key) != value for key, value in labels.items()):
                continue
            raw = read_json(self.layout.status_path(name))
            status = LocalWorkerStatus.from_dict(raw) if raw else None
            exited = status is not None and status.state in ("exited", "backoff")
            found.append(
                LiveWorker(
                    name=name,
                    ref=name,
                    labels=spec_labels,
                    # Not seen by the supervisor yet counts as running: it is starting.
                    running=not exited,
                    exit_code=status.exit_code if status else None,
                    restarts=status.restarts if status else 0,
                    log_tail=(status.log_tail if status else "")
                    or read_log_tail(self.layout.log_path(name)),
                )
            )
        return found
