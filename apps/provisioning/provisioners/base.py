"""The provisioner interface: create, destroy and list the machines or processes that run
workers. Backends are registered by provider name (apps/provisioning/provisioners/__init__.py);
reconcile decides, a provisioner only carries it out."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True)
class WorkerSpec:
    """One worker to start. `env` is the worker daemon's whole configuration (MEMRUN_URL,
    MEMRUN_WORKER_TOKEN, ...): it holds the worker's own credential and nothing more
    privileged (I8). `labels` (service, worker, deployment) are what `list` filters by."""

    name: str
    service: str
    deployment_id: int
    env: dict[str, str]
    labels: dict[str, str] = field(default_factory=dict)
    memory_bytes: int = 0
    disk_bytes: int = 0
    # The service's machine choice, for cloud backends ("" = chosen from memory and disk).
    server_type: str = ""
    location: str = ""


@dataclass(frozen=True)
class LiveWorker:
    """A worker as its backend sees it. `running` is False once its process or machine
    has exited; `exit_code`, `restarts` and `log_tail` say how it went, where known."""

    name: str
    ref: str
    labels: dict[str, str]
    running: bool
    exit_code: int | None = None
    restarts: int = 0
    log_tail: str = ""
    # When the machine was made (cloud backends; None = unknown), and what it is: server
    # id, type, location, addresses, hourly and monthly cost (see Worker.machine).
    created_at: datetime | None = None
    machine: dict[str, Any] = field(default_factory=dict)


class Provisioner(Protocol):
    """Contract of a backend. Every method is idempotent: creating a worker that exists,
    or destroying one that is gone, is not an error."""

    def create(self, spec: WorkerSpec) -> str:
        """Start the worker; returns its ref (a process name, a server id)."""
        ...

    def drain(self, ref: str) -> None:
        """Ask the worker to stop taking work now and exit once its in-flight work is done
        (for a process: SIGTERM). The heartbeat's "drain" answer says the same, but only
        at the worker's next heartbeat; this makes a rolling deploy hand over at once."""
        ...

    def destroy(self, ref: str) -> None:
        """Stop the worker gracefully (SIGTERM, then a kill after a grace period) and
        free everything it held."""
        ...

    def list(self, labels: dict[str, str]) -> list[LiveWorker]:
        """The workers whose labels include all of `labels`."""
        ...

    def server_verify(self, *, server_id: int, worker_name: str) -> bool:
        """True when `server_id` is a machine this backend made for `worker_name` (the
        join exchange checks a booting machine's claim with it); False where there is
        no such machine to check (local processes)."""
        ...
