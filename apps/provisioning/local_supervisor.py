"""The local supervisor: runs the local provisioner's workers as child processes.

`memrun up` runs it as one more child (`python -m apps.provisioning.local_supervisor`),
because Celery task processes come and go and cannot own long-lived workers. It is
Django-free and knows nothing of services: it watches `{home}/local-workers/` and

- starts `argv` for each new spec, with the spec's env over a few harmless basics (PATH,
  HOME, locale: never the appliance's own secrets, I8), output to the worker's log;
- restarts a worker that exits with an error or is killed, with a growing backoff; a
  clean exit (0) or a refused credential (77) is final;
- on a drain marker (`{name}.drain`) sends SIGTERM once and does not restart it;
- on a spec's removal sends SIGTERM, then SIGKILL after `stop_grace_s`, and then hands
  the worker's cache over to its service's next workers (local_handover.py) and removes
  its packages (its log stays);
- writes each worker's status (pid and process start time, state, restarts, last exit
  code, log tail) next to its spec, for the provisioner's `list` and for its successor.
On SIGTERM it stops every worker the same way and exits 0.

Each worker runs confined (apps/provisioning/local_sandbox.py): in a bubblewrap sandbox as
an unprivileged user that sees none of MEMRUN_HOME but its own folders, and in a memory
cgroup at its service's declared memory. A worker the kernel kills for that limit is
restarted like any crash, with the reason in its status and its log. Signals go to the
worker's process group, which holds the sandbox and everything in it. A CPU cgroup gives it
one ordinary process's weight (MEMRUN_WORKER_CPU_WEIGHT). When a worker exits, whatever it
left in its cgroups (children in a session of their own) is killed with them.

Workers outlive a supervisor that dies without stopping them (SIGKILL, a crash): they keep
serving, warm. A new supervisor ADOPTS each worker whose recorded pid still runs with the
recorded start time (a pid alone may have been reused), rather than starting a duplicate
that would join the same consumer group; an adopted worker whose spec went is stopped.
An adopted process is not this supervisor's child, so its exit code is unknown: its death
counts as a crash (restarted), except while it drains or after its spec went. Started and
adopted processes alike are in apps/provisioning/local_process.py.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import IO

from apps.provisioning.local_handover import HANDOVER_KEEP_S, cache_hand_over, handover_sweep
from apps.provisioning.local_layout import (
    LocalLayout,
    LocalWorkerSpec,
    LocalWorkerStatus,
    process_start_ticks,
    read_json,
    read_log_tail,
    write_json_atomic,
)
from apps.provisioning.local_process import (
    AdoptedProcess,
    Process,
    Spawn,
    process_exit,
    process_signal_group,
    spawn_process,
)
from apps.provisioning.local_sandbox import (
    DEFAULT_CPU_WEIGHT,
    SANDBOX_MODE_ENV,
    CpuCgroups,
    MemoryCgroups,
    Sandbox,
    SandboxUnavailable,
    cgroup_weight,
    confine_before_exec,
    cpu_cgroups_detect,
    memory_cgroups_detect,
    sandbox_detect,
)
from memrun.home import memrun_home

# Exit codes after which a worker is not restarted: it stopped as asked (0), or the
# control plane no longer knows its credential (77, EX_NOPERM).
FINAL_EXIT_CODES = frozenset({0, 77})
BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "VIRTUAL_ENV")


@dataclass(frozen=True)
class SupervisorSettings:
    stop_grace_s: float = 20.0
    restart_backoff_s: float = 1.0
    restart_backoff_max_s: float = 30.0
    poll_interval_s: float = 0.2
    # How long a stopped worker's handed-over cache waits for the service's next workers.
    handover_keep_s: float = HANDOVER_KEEP_S
    handover_sweep_interval_s: float = 30.0


class _Child:
    """One supervised worker: its spec, its current process, and what is known of it."""

    def __init__(self, spec: LocalWorkerSpec) -> None:
        self.spec = spec
        self.proc: Process | None = None
        self.log: IO[bytes] | None = None
        self.status = LocalWorkerStatus(name=spec.name, state="starting")
        self.restart_at: float | None = None
        self.kill_at: float | None = None
        self.draining = False
        self.cgroup: Path | None = None
        self.cpu_cgroup: Path | None = None


class LocalSupervisor:
    """Call `tick()` repeatedly (or `run(stopping)`); `stop_all()` at the end."""

    def __init__(
        self,
        layout: LocalLayout,
        *,
        settings: SupervisorSettings = SupervisorSettings(),
        spawn: Spawn = spawn_process,
        base_env: Mapping[str, str] = os.environ,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        say: Callable[[str], None] = lambda message: print(message, flush=True),
        sandbox: Sandbox | None = None,
        cgroups: MemoryCgroups | None = None,
        cpu_cgroups: CpuCgroups | None = None,
        cpu_weight: int = DEFAULT_CPU_WEIGHT,
    ) -> None:
        self.layout = layout
        self.settings = settings
        self._spawn = spawn
        self._base_env = {key: base_env[key] for key in BASE_ENV if key in base_env}
        self._clock = clock
        self._wall_clock = wall_clock
        self._say = say
        self._children: dict[str, _Child] = {}
        self._sandbox = sandbox
        self._cgroups = cgroups
        self._sweep_at = 0.0
        self._cpu_cgroups = cpu_cgroups
        self._cpu_weight = cpu_weight

    def tick(self) -> None:
        wanted = set(self.layout.spec_names())
        for name in sorted(wanted - set(self._children)):
            spec = self._read_spec(name)
            if spec is not None:
                self._children[name] = child = _Child(spec)
                if not self._adopt(child):
                    self._start(child)
        for name in sorted(set(self.layout.status_names()) - set(self._children) - wanted):
            # A predecessor's worker whose spec went while no supervisor ran: stop it.
            orphan = _Child(LocalWorkerSpec(name=name, argv=[], env={}))
            if self._adopt(orphan):
                self._children[name] = orphan
        for name, child in list(self._children.items()):
            if name in wanted and not child.draining and self.layout.drain_path(name).exists():
                self._drain(child)
            self._reap(child, wanted=name in wanted and not child.draining)
            if name in wanted:
                if child.restart_at is not None and self._clock() >= child.restart_at:
                    self._start(child)
            elif self._stop(child):
                self._forget(child)
                del self._children[name]
        for name in set(self.layout.status_names()) - set(self._children) - wanted:
            self.layout.status_path(name).unlink(missing_ok=True)
        if self._clock() >= self._sweep_at:
            self._sweep_at = self._clock() + self.settings.handover_sweep_interval_s
            handover_sweep(self.layout, keep_s=self.settings.handover_keep_s)

    def run(self, stopping: threading.Event) -> int:
        self._say(f"memrun-supervisor: watching {self.layout.specs_dir}")
        while not stopping.is_set():
            self.tick()
            stopping.wait(self.settings.poll_interval_s)
        self.stop_all()
        self._say("memrun-supervisor: stopped")
        return 0

    def stop_all(self) -> None:
        """SIGTERM to every worker, then SIGKILL to those still running after the grace."""
        for child in self._children.values():
            self._terminate(child)
        deadline = self._clock() + self.settings.stop_grace_s
        for child in self._children.values():
            if child.proc is None:
                continue
            try:
                child.proc.wait(timeout=max(deadline - self._clock(), 0.1))
            except subprocess.TimeoutExpired:
                process_signal_group(child.proc, signal.SIGKILL)
                child.proc.wait()
            self._reap(child, wanted=False)
        for name in self._children:
            self.layout.status_path(name).unlink(missing_ok=True)
        self._children.clear()

    def _adopt(self, child: _Child) -> bool:
        """Take over the worker a predecessor left running, or its final exit; True if
        there is nothing to start."""
        data = read_json(self.layout.status_path(child.spec.name))
        if data is None:
            return False
        previous = LocalWorkerStatus.from_dict(data)
        if previous.state == "exited":
            child.status = previous  # a final exit stays final across supervisors
            return True
        if previous.pid is None or previous.pid_start_ticks is None:
            return False
        proc = AdoptedProcess(previous.pid, previous.pid_start_ticks)
        if not proc.alive():
            return False
        child.proc = proc
        child.status = previous
        if self._cgroups is not None and self._cgroups.path(child.spec.name).is_dir():
            child.cgroup = self._cgroups.path(child.spec.name)
        if self._cpu_cgroups is not None and self._cpu_cgroups.path(child.spec.name).is_dir():
            child.cpu_cgroup = self._cpu_cgroups.path(child.spec.name)
        child.draining = previous.state == "draining"
        self._say(f"memrun-supervisor: adopted {child.spec.name} (pid {proc.pid})")
        return True

    def pid_of(self, name: str) -> int | None:
        child = self._children.get(name)
        return child.proc.pid if child is not None and child.proc is not None else None

    def _read_spec(self, name: str) -> LocalWorkerSpec | None:
        data = read_json(self.layout.spec_path(name))
        if data is None:
            return None  # written atomically, so only a bad file stays unreadable
        try:
            return LocalWorkerSpec.from_dict(data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            self._say(f"memrun-supervisor: ignoring the spec of {name}: {exc!r}")
            return None

    def _start(self, child: _Child) -> None:
        name = child.spec.name
        folder = self.layout.worker_dir(name)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        child.log = self.layout.log_path(name).open("ab")
        restarts = child.status.restarts + (1 if child.proc is not None else 0)
        try:
            argv, env = self._confined(child, folder)
            before_exec = confine_before_exec(
                cgroup=child.cgroup,
                memory_bytes=child.spec.memory_bytes,
                ignore_stop_signals=self._sandbox is not None,
                cpu_cgroup=child.cpu_cgroup,
            )
            child.proc = self._spawn(argv, env, child.log, folder, before_exec)
        except OSError as exc:
            child.log.close()
            child.log = None
            child.proc = None
            self._say(f"memrun-supervisor: cannot start {name}: {exc}")
            child.restart_at = self._clock() + self.settings.restart_backoff_max_s
            self._write(child, replace(child.status, state="backoff", log_tail=str(exc)))
            return
        child.restart_at = None
        self._say(f"memrun-supervisor: started {name} (pid {child.proc.pid})")
        self._write(
            child,
            replace(
                child.status,
                state="running",
                pid=child.proc.pid,
                pid_start_ticks=process_start_ticks(child.proc.pid),
                started_at=self._wall_clock(),
                restarts=restarts,
            ),
        )

    def _confined(self, child: _Child, folder: Path) -> tuple[list[str], dict[str, str]]:
        """The argv and env that start `child` in its sandbox and cgroup (where there are)."""
        env = self._base_env | child.spec.env
        if self._cgroups is not None and child.spec.memory_bytes > 0:
            child.cgroup = self._cgroups.create(child.spec.name, child.spec.memory_bytes)
        if self._cpu_cgroups is not None:
            child.cpu_cgroup = self._cpu_cgroups.create(child.spec.name, self._cpu_weight)
        service = child.spec.labels.get("service")
        caches = self.layout.caches_dir(service) if service else None
        cache_root = folder / "cache"
        if service:
            cache_root = self.layout.cache_root(service, child.spec.name)
            for path in (self.layout.handover_dir(service), self.layout.peers_dir(service)):
                path.mkdir(mode=0o755, parents=True, exist_ok=True)
            # Its cache lives in the service's caches folder, where the service's other
            # workers find it (worker_daemon/cache/handover.py), and the folders to look in.
            env |= {
                "MEMRUN_CACHE_ROOT": str(cache_root),
                "MEMRUN_CACHE_HANDOVER_DIR": str(self.layout.handover_dir(service)),
                "MEMRUN_CACHE_PEERS_DIR": str(self.layout.peers_dir(service)),
            }
        if self._sandbox is None:
            return child.spec.argv, env
        writable = [cache_root, folder / "work"]
        for path in writable:
            path.mkdir(mode=0o700, exist_ok=True)
            self._sandbox.give(path)
        # The only folders it can write: its cache, and its work folder, which is also its
        # home (uv's cache lives there); /tmp is its own tmpfs. It reads, never writes, its
        # service's other caches: the whole caches folder is bound read-only under its own
        # cache, so caches of workers started later and caches handed over (renamed inside
        # that folder) are there too. Other services' caches are not.
        env |= {
            "MEMRUN_CACHE_ROOT": str(writable[0]),
            "MEMRUN_WORK_ROOT": str(writable[1]),
            "HOME": str(writable[1]),
            "TMPDIR": "/tmp",
        }
        return (
            self._sandbox.wrap(
                child.spec.argv,
                writable=writable,
                cwd=writable[1],
                readable=[caches] if caches is not None else [],
            ),
            env,
        )

    def _exit_reason(self, child: _Child) -> str:
        """Why the worker died, where its exit code alone does not say. Its cgroups go, and
        with them whatever it left running."""
        if child.cpu_cgroup is not None and self._cpu_cgroups is not None:
            self._cpu_cgroups.remove(child.cpu_cgroup)
            child.cpu_cgroup = None
        if child.cgroup is None or self._cgroups is None:
            return ""
        killed = self._cgroups.oom_kills(child.cgroup)
        self._cgroups.remove(child.cgroup)
        child.cgroup = None
        if not killed:
            return ""
        return (
            f"killed by the kernel: over its memory limit of {child.spec.memory_bytes} bytes "
            "(the service's declared memory)"
        )

    def _reap(self, child: _Child, *, wanted: bool) -> None:
        """Record an exit; schedule a restart when `wanted` and the exit was not final."""
        if child.proc is None or child.status.state in ("exited", "backoff"):
            return
        exited, code = process_exit(child.proc)
        if not exited:
            return
        reason = self._exit_reason(child)
        if child.log is not None:
            if reason:
                child.log.write(f"memrun-supervisor: {child.spec.name} {reason}\n".encode())
            child.log.close()
            child.log = None
        final = code in FINAL_EXIT_CODES or not wanted
        if not final:
            backoff = min(
                self.settings.restart_backoff_s * 2 ** min(child.status.restarts, 16),
                self.settings.restart_backoff_max_s,
            )
            child.restart_at = self._clock() + backoff
        how = "with an unknown code (adopted)" if code is None else f"with code {code}"
        self._say(
            f"memrun-supervisor: {child.spec.name} exited {how}{': ' if reason else ''}{reason}"
        )
        self._write(
            child,
            replace(
                child.status,
                state="exited" if final else "backoff",
                exit_code=code,
                exited_at=self._wall_clock(),
                log_tail=read_log_tail(self.layout.log_path(child.spec.name)),
                reason=reason,
            ),
        )

    def _stop(self, child: _Child) -> bool:
        """Move an unwanted worker towards stopped; True once its process is gone."""
        child.restart_at = None
        if child.proc is None or process_exit(child.proc)[0]:
            self._reap(child, wanted=False)
            return True
        if child.kill_at is None:
            self._terminate(child)
        elif self._clock() >= child.kill_at:
            self._say(f"memrun-supervisor: {child.spec.name} ignored SIGTERM; killing it")
            process_signal_group(child.proc, signal.SIGKILL)
        return False

    def _drain(self, child: _Child) -> None:
        """SIGTERM without a kill deadline: the worker finishes its in-flight work within
        its own grace period, commits and exits; whatever its exit, it is not restarted."""
        child.draining = True
        child.restart_at = None
        if child.proc is not None and not process_exit(child.proc)[0]:
            process_signal_group(child.proc, signal.SIGTERM)
            self._say(f"memrun-supervisor: draining {child.spec.name}")
            self._write(child, replace(child.status, state="draining"))

    def _forget(self, child: _Child) -> None:
        """A stopped worker's cache is handed over to its service's next workers (warm
        deploys); the rest of it and its packages go (they can be large); its log stays."""
        name = child.spec.name
        self.layout.status_path(name).unlink(missing_ok=True)
        service = child.spec.labels.get("service")
        if service:
            try:
                cache_hand_over(self.layout, worker=name, service=service)
            except (OSError, ValueError) as exc:
                self._say(f"memrun-supervisor: could not hand over {name}'s cache: {exc}")
            shutil.rmtree(self.layout.cache_root(service, name), ignore_errors=True)
        for folder in ("cache", "work"):
            shutil.rmtree(self.layout.worker_dir(name) / folder, ignore_errors=True)

    def _terminate(self, child: _Child) -> None:
        if child.proc is None or process_exit(child.proc)[0] or child.kill_at is not None:
            return
        process_signal_group(child.proc, signal.SIGTERM)
        child.kill_at = self._clock() + self.settings.stop_grace_s
        self._write(child, replace(child.status, state="stopping"))

    def _write(self, child: _Child, status: LocalWorkerStatus) -> None:
        child.status = status
        if self.layout.spec_path(child.spec.name).exists() or status.state == "stopping":
            write_json_atomic(self.layout.status_path(child.spec.name), status.to_dict())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m apps.provisioning.local_supervisor", description=__doc__
    )
    parser.add_argument("--home", type=Path, help="MEMRUN_HOME (default: the usual lookup)")
    parser.add_argument("--stop-grace-s", type=float, default=SupervisorSettings.stop_grace_s)
    args = parser.parse_args(argv)
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    layout = LocalLayout(args.home.resolve() if args.home else memrun_home())
    try:
        sandbox, why_not = sandbox_detect(
            layout.home, mode=os.environ.get(SANDBOX_MODE_ENV, "auto").strip().lower() or "auto"
        )
    except (SandboxUnavailable, ValueError) as exc:
        print(f"memrun-supervisor: {exc}", file=sys.stderr, flush=True)
        return 1
    if sandbox is None:
        _warn_loudly(
            f"local workers run UNSANDBOXED ({why_not}): a handler can read "
            f"everything this user can, MEMRUN_HOME's secrets included"
        )
    cgroups, why_not = memory_cgroups_detect()
    if cgroups is None:
        _warn_loudly(
            f"no memory cgroup for local workers ({why_not}): their memory is "
            "capped by RLIMIT_AS only"
        )
    cpu_cgroups, why_not = cpu_cgroups_detect()
    if cpu_cgroups is None:
        _warn_loudly(f"no cpu cgroup for local workers ({why_not}): they get no CPU share")
    try:
        cpu_weight = cgroup_weight()
    except ValueError as exc:
        print(f"memrun-supervisor: {exc}", file=sys.stderr, flush=True)
        return 1
    supervisor = LocalSupervisor(
        layout,
        settings=SupervisorSettings(stop_grace_s=args.stop_grace_s),
        sandbox=sandbox,
        cgroups=cgroups,
        cpu_cgroups=cpu_cgroups,
        cpu_weight=cpu_weight,
    )
    return supervisor.run(stopping)


def _warn_loudly(message: str) -> None:
    print(f"memrun-supervisor: WARNING: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
