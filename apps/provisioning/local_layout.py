"""Where local workers live under MEMRUN_HOME, and the files the local provisioner and the
local supervisor exchange. Django-free: the supervisor imports it without settings.

    {home}/local-workers/{name}.json         spec: argv, env, labels (provisioner writes)
    {home}/local-workers/{name}.status.json  status: pid, exit code, restarts, log tail
                                             (supervisor writes)
    {home}/workers/{name}/worker.log         the worker's stdout and stderr
    {home}/workers/{name}/work/              its packages and venvs
    {home}/caches/{service}/                 every cache of the service on this host:
        workers/{name}/{service}/            a worker's own warm cache (its cache root is
                                             workers/{name}, MEMRUN_CACHE_ROOT)
        handover/{name}/                     a stopped worker's cache, handed over to the
                                             service's next workers (local_handover.py)

One folder per service holds all of them, so a sandboxed worker is given that one folder
read-only (and its own cache read-write over it): it sees workers started after it, and a
handover is a rename inside the folder it already sees (local_supervisor.py).
Before this layout a worker's cache was {home}/workers/{name}/cache/{service}/ and the
handover folder {home}/handover/{service}/: a worker still running there when the
appliance is upgraded has its cache handed over from there once it stops, and the old
handover folder is swept as usual (local_handover.py).

Every file is written to a temporary name and renamed, so a reader never sees half of
one; specs hold the worker's credential and are private (0600).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SPECS_DIR = "local-workers"
WORKERS_DIR = "workers"
CACHES_DIR = "caches"
HANDOVER_DIR = "handover"
SPEC_SUFFIX = ".json"
STATUS_SUFFIX = ".status.json"
LOG_TAIL_BYTES = 8192
LOG_TAIL_LINES = 40
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,99}$")


def check_name(name: str) -> str:
    """A worker name is also a file name: lowercase letters, digits and dashes only."""
    if not _NAME.match(name):
        raise ValueError(f"worker name {name!r} must match {_NAME.pattern}")
    return name


@dataclass(frozen=True)
class LocalLayout:
    home: Path

    @property
    def specs_dir(self) -> Path:
        return self.home / SPECS_DIR

    def spec_path(self, name: str) -> Path:
        return self.specs_dir / f"{check_name(name)}{SPEC_SUFFIX}"

    def status_path(self, name: str) -> Path:
        return self.specs_dir / f"{check_name(name)}{STATUS_SUFFIX}"

    def drain_path(self, name: str) -> Path:
        """Present while the worker should drain: finish its work and exit, not restart."""
        return self.specs_dir / f"{check_name(name)}.drain"

    def worker_dir(self, name: str) -> Path:
        return self.home / WORKERS_DIR / check_name(name)

    def caches_dir(self, service: str) -> Path:
        """Every cache of `service` on this host: its workers' own and the handed over."""
        return self.home / CACHES_DIR / check_name(service)

    def handover_dir(self, service: str) -> Path:
        """Caches of the service's stopped workers, for its next ones (local_handover.py)."""
        return self.caches_dir(service) / HANDOVER_DIR

    def peers_dir(self, service: str) -> Path:
        """The cache roots of the service's workers, one folder per worker."""
        return self.caches_dir(service) / WORKERS_DIR

    def cache_root(self, service: str, name: str) -> Path:
        """Worker `name`'s MEMRUN_CACHE_ROOT: its cache is the `service` folder in it."""
        return self.peers_dir(service) / check_name(name)

    def legacy_cache_dir(self, service: str, name: str) -> Path:
        """Where a worker started before the per-service layout keeps its cache."""
        return self.worker_dir(name) / "cache" / check_name(service)

    @property
    def legacy_handover_root(self) -> Path:
        return self.home / HANDOVER_DIR

    def log_path(self, name: str) -> Path:
        return self.worker_dir(name) / "worker.log"

    def spec_names(self) -> list[str]:
        """Names of the specs present now, sorted."""
        if not self.specs_dir.is_dir():
            return []
        return sorted(
            path.name.removesuffix(SPEC_SUFFIX)
            for path in self.specs_dir.iterdir()
            if path.name.endswith(SPEC_SUFFIX)
            and not path.name.endswith(STATUS_SUFFIX)
            and not path.name.startswith(".")
        )

    def status_names(self) -> list[str]:
        if not self.specs_dir.is_dir():
            return []
        return sorted(
            path.name.removesuffix(STATUS_SUFFIX)
            for path in self.specs_dir.iterdir()
            if path.name.endswith(STATUS_SUFFIX) and not path.name.startswith(".")
        )


@dataclass(frozen=True)
class LocalWorkerSpec:
    """What to run: `argv` with exactly `env` (plus a few harmless basics such as PATH)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    labels: dict[str, str] = field(default_factory=dict)
    # The service's declared memory, which the kernel holds the worker to (0: no limit).
    memory_bytes: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LocalWorkerSpec:
        return cls(
            name=check_name(str(data["name"])),
            argv=[str(arg) for arg in data["argv"]],
            env={str(k): str(v) for k, v in data["env"].items()},
            labels={str(k): str(v) for k, v in data.get("labels", {}).items()},
            memory_bytes=int(data.get("memory_bytes", 0)),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LocalWorkerStatus:
    """What the supervisor knows of one worker process.

    state: "running", "backoff" (exited, restart pending), "exited" (not restarted: it
    stopped cleanly or its credential was refused), "stopping" (spec removed, SIGTERM sent).
    """

    name: str
    state: str
    pid: int | None = None
    # The process's start time in clock ticks since boot (/proc/{pid}/stat): with `pid`
    # it names one process, since a pid alone may be reused after it exits.
    pid_start_ticks: int | None = None
    started_at: float | None = None
    restarts: int = 0
    exit_code: int | None = None
    exited_at: float | None = None
    log_tail: str = ""
    # Why the last exit happened, where the supervisor knows more than the exit code
    # (the kernel killed it for its memory limit).
    reason: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LocalWorkerStatus:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def process_start_ticks(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot); None if there is no such
    process, or it has exited and waits to be reaped (a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat.rpartition(")")[2].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def write_json_atomic(path: Path, data: dict[str, Any], *, mode: int = 0o600) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(data, out)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict[str, Any] | None:
    """The file's JSON object; None when it is missing or not (yet) valid."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_log_tail(
    path: Path, *, max_bytes: int = LOG_TAIL_BYTES, lines: int = LOG_TAIL_LINES
) -> str:
    """The last `lines` lines of the log at `path` (at most `max_bytes`); "" if none."""
    try:
        with path.open("rb") as stream:
            size = stream.seek(0, os.SEEK_END)
            stream.seek(max(size - max_bytes, 0))
            data = stream.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    if len(data) == max_bytes:
        text = text.split("\n", 1)[-1]  # drop the partial first line
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])
