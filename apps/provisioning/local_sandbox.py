"""What confines a local worker: a bubblewrap sandbox and a memory cgroup. Django-free:
the local supervisor uses it.

The sandbox (`bwrap`, Debian package `bubblewrap`) gives the worker its own mount and pid
namespaces. It sees the system's programs and libraries (/usr, /etc) and the Python code it
runs (the interpreter, the venv, memrun and worker_daemon) read-only, its own cache and
work folders read-write, its own service's other caches on this host read-only, a private
/tmp, and a fresh /proc that shows only its own processes; MEMRUN_HOME is an empty tmpfs
otherwise, so the secret key, the CLI token, the database, other workers' specs and logs
and other services' caches are not there to open, nor is
/proc/PID/environ of the appliance's processes. Inside, `setpriv` drops it to an
unprivileged uid (nobody) with no capabilities, so it cannot ptrace or read root's files
either. It keeps the network: it talks to Kafka, Redis and the control plane on loopback.

No `--die-with-parent`: workers outlive a killed supervisor, whose successor adopts them.
bwrap does not forward signals, so the supervisor signals the worker's process group
(bwrap and everything in the sandbox) and bwrap itself ignores SIGTERM and SIGINT: it
exits with the worker's exit status once the worker has drained.

The memory cgroup (v1 or v2, a child of the supervisor's own) holds the worker at its
service's declared memory: a leak ends in the kernel killing that worker, counted in the
cgroup's oom_kill, never the OOM killer choosing the appliance, Kafka or another service.
Where no cgroup can be made, RLIMIT_AS at the same size is the fallback. Whatever the
worker leaves running in its cgroup when it exits (a child that made its own session, so
that no signal to the worker's group reached it) is killed before the cgroup goes.

The CPU cgroup gives the worker a weight (v2 `cpu.weight`, v1 `cpu.shares` scaled from it)
of one ordinary process by default (MEMRUN_WORKER_CPU_WEIGHT, 1-10000, v2's default 100):
under contention all of a worker's threads together get what one busy process of the
appliance gets, so a runaway loop in a service slows that service, not the appliance,
Kafka or the other services.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

# Set to "off" to run workers unsandboxed, "on" to refuse to start without a sandbox;
# "auto" (the default) sandboxes where it can and says so loudly once where it cannot.
SANDBOX_MODE_ENV = "MEMRUN_SANDBOX"
SANDBOX_MODES = ("auto", "on", "off")
# The unprivileged user a sandboxed worker runs as: nobody, owning nothing of ours.
SANDBOX_UID = 65534
SANDBOX_GID = 65534
_CGROUP_ROOT = Path("/sys/fs/cgroup")
CPU_WEIGHT_ENV = "MEMRUN_WORKER_CPU_WEIGHT"
DEFAULT_CPU_WEIGHT = 100
_KILL_ROUNDS = 50
_PROBE_TIMEOUT_S = 20.0


class SandboxUnavailable(RuntimeError):
    """MEMRUN_SANDBOX=on, and no sandbox can be made on this machine."""


@dataclass(frozen=True)
class Sandbox:
    """How to run one command in a bubblewrap sandbox (see the module's docstring)."""

    bwrap: str
    setpriv: str
    code_paths: tuple[Path, ...]
    hidden: tuple[Path, ...]
    uid: int = SANDBOX_UID
    gid: int = SANDBOX_GID

    def wrap(
        self,
        argv: Sequence[str],
        *,
        writable: Sequence[Path],
        cwd: Path,
        readable: Sequence[Path] = (),
    ) -> list[str]:
        """`argv` inside the sandbox, with `writable` folders bound read-write, `readable`
        ones read-only (all must exist), and `cwd` as its working directory. A writable
        folder inside a readable one is writable."""
        args = [self.bwrap, "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
        args += ["--unshare-cgroup-try", "--hostname", "memrun-worker"]
        args += ["--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
        # First, so that the folders bound below may lie under /tmp (a test's home).
        args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            path = Path("/") / top
            if path.is_symlink():
                args += ["--symlink", os.readlink(path), str(path)]
            elif path.is_dir():
                args += ["--ro-bind", str(path), str(path)]
        for path in self.code_paths:
            args += [*_parents(path), "--ro-bind", str(path), str(path)]
        # Later mounts cover earlier ones: the home is emptied even where it lies inside
        # a code path (a checkout's ./var), then the worker's own folders come back.
        for path in self.hidden:
            args += [*_parents(path), "--tmpfs", str(path)]
        for path in readable:
            args += [*_parents(path), "--ro-bind", str(path), str(path)]
        # After the read-only ones: a writable folder may lie inside a readable one (a
        # worker's own cache inside its service's caches folder) and is bound over it.
        for path in writable:
            args += [*_parents(path), "--bind", str(path), str(path)]
        args += ["--chdir", str(cwd)]
        drop = [self.setpriv, f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups"]
        drop += ["--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
        return [*args, "--", *drop, "--", *argv]

    def give(self, folder: Path) -> None:
        """Make `folder` (and what it holds) the sandboxed user's, so the worker can write it."""
        for root, dirs, files in os.walk(folder):
            for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                os.lchown(name, self.uid, self.gid)


def _parents(path: Path) -> list[str]:
    # bwrap makes missing mount points 0700, which the unprivileged user cannot cross.
    args = []
    for parent in reversed(path.parents[:-1]):
        args += ["--perms", "0755", "--dir", str(parent)]
    return args


def code_paths() -> tuple[Path, ...]:
    """What a worker must read to run: the Python installation, the venv, and the folders
    that hold the memrun and worker_daemon packages (a checkout, or site-packages)."""
    found = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()}
    found.add(Path(sys.executable).resolve().parent)
    for module in ("memrun", "worker_daemon"):
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.origin is not None:
            found.add(Path(spec.origin).resolve().parent.parent)
    system = (Path("/usr"), Path("/etc"))
    return tuple(
        sorted(p for p in found if p.is_dir() and not any(p.is_relative_to(s) for s in system))
    )


def sandbox_detect(
    home: Path, *, mode: str = "auto", probe_dir: Path | None = None
) -> tuple[Sandbox | None, str]:
    """The sandbox to use, or None and why not. Tries one sandboxed command first, so a
    machine where bwrap cannot make namespaces (a container without them) is found out
    here and not by every worker. `mode` "on" raises SandboxUnavailable instead of None."""
    if mode not in SANDBOX_MODES:
        raise ValueError(f"{SANDBOX_MODE_ENV} must be one of {', '.join(SANDBOX_MODES)}")
    if mode == "off":
        return None, f"{SANDBOX_MODE_ENV}=off"
    reason = ""
    bwrap, setpriv = shutil.which("bwrap"), shutil.which("setpriv")
    if bwrap is None or setpriv is None:
        missing = " and ".join(n for n, p in (("bwrap", bwrap), ("setpriv", setpriv)) if not p)
        reason = f"{missing} not found (install the Debian packages bubblewrap and util-linux)"
    else:
        sandbox = Sandbox(bwrap, setpriv, code_paths(), (home,))
        cwd = probe_dir or Path("/")
        try:
            probe = subprocess.run(
                sandbox.wrap([sys.executable, "-c", "import worker_daemon"], writable=[], cwd=cwd),
                capture_output=True,
                timeout=_PROBE_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            reason = f"bwrap could not run: {exc}"
        else:
            if probe.returncode == 0:
                return sandbox, ""
            output = (probe.stderr or probe.stdout).decode(errors="replace").strip()
            reason = f"bwrap failed ({output.splitlines()[-1] if output else probe.returncode})"
    if mode == "on":
        raise SandboxUnavailable(f"{SANDBOX_MODE_ENV}=on but {reason}")
    return None, reason


@dataclass(frozen=True)
class MemoryCgroups:
    """Per-worker memory cgroups under `parent` (the supervisor's own memory cgroup);
    `version` 1 or 2 decides the file names."""

    parent: Path
    version: int

    @property
    def _limit_files(self) -> tuple[str, ...]:
        if self.version == 1:
            return ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes")
        return ("memory.max", "memory.swap.max")

    def path(self, name: str) -> Path:
        return self.parent / f"memrun-{name}"

    def create(self, name: str, memory_bytes: int) -> Path:
        """The worker's cgroup, made (or reused) with its limit; OSError if refused."""
        path = self.path(name)
        path.mkdir(exist_ok=True)
        limit, swap = self._limit_files
        (path / limit).write_text(str(memory_bytes))
        # No swap on top: the limit is the memory the service declared, all of it.
        if (path / swap).exists():
            (path / swap).write_text(str(memory_bytes if self.version == 1 else 0))
        return path

    def oom_kills(self, path: Path) -> int:
        """How many of the cgroup's processes the kernel killed for its limit."""
        events = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            lines = (path / events).read_text().splitlines()
        except OSError:
            return 0
        for line in lines:
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def remove(self, path: Path) -> None:
        """Kill what is left in the cgroup, then remove it; one whose processes would not
        die stays."""
        cgroup_kill_all(path)
        with contextlib.suppress(OSError):
            path.rmdir()


@dataclass(frozen=True)
class CpuCgroups:
    """Per-worker CPU cgroups under `parent` (the supervisor's own CPU cgroup); `version`
    1 (`cpu.shares`, 1024 per ordinary process) or 2 (`cpu.weight`, 100 per process)."""

    parent: Path
    version: int

    def path(self, name: str) -> Path:
        return self.parent / f"memrun-{name}"

    def create(self, name: str, weight: int) -> Path:
        """The worker's cgroup, made (or reused) with `weight` (v2 units); OSError if refused."""
        path = self.path(name)
        path.mkdir(exist_ok=True)
        if self.version == 1:
            (path / "cpu.shares").write_text(str(max(2, weight * 1024 // 100)))
        else:
            (path / "cpu.weight").write_text(str(weight))
        return path

    def remove(self, path: Path) -> None:
        cgroup_kill_all(path)
        with contextlib.suppress(OSError):
            path.rmdir()


def cgroup_kill_all(path: Path) -> None:
    """SIGKILL every process in the cgroup at `path`, until none is left (or give up
    after a few rounds: a process may be forking as we read)."""
    for _ in range(_KILL_ROUNDS):
        try:
            pids = [int(pid) for pid in (path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        _wait_gone(pids)


def _wait_gone(pids: list[int]) -> None:
    # A killed process leaves cgroup.procs once its parent reaps it (the supervisor for
    # the worker, init for an orphan): wait briefly for that before reading again.
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        time.sleep(0.01)


def cgroup_weight(environ: dict[str, str] | None = None) -> int:
    """The CPU weight of each worker: MEMRUN_WORKER_CPU_WEIGHT, 1 to 10000 (v2 units)."""
    raw = (environ if environ is not None else os.environ).get(CPU_WEIGHT_ENV, "").strip()
    if not raw:
        return DEFAULT_CPU_WEIGHT
    if not raw.isdigit() or not 1 <= int(raw) <= 10000:
        raise ValueError(f"{CPU_WEIGHT_ENV} must be a whole number from 1 to 10000, got {raw!r}")
    return int(raw)


def _own_cgroups(cgroup_root: Path, controller: str) -> tuple[Path | None, Path | None]:
    """(v1 folder of `controller`, v2 folder) of this process's cgroups, where mounted."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None, None
    v1 = v2 = None
    for line in lines:
        _id, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            v1 = cgroup_root / controller / path.lstrip("/")
        elif controllers == "":
            v2 = cgroup_root / path.lstrip("/")
    if v2 is not None and controller not in _read(cgroup_root / "cgroup.controllers").split():
        v2 = None
    return v1, v2


def memory_cgroups_detect(cgroup_root: Path = _CGROUP_ROOT) -> tuple[MemoryCgroups | None, str]:
    """Where this process may make memory cgroups for its workers, or None and why not."""
    if not Path("/proc/self/cgroup").is_file():
        return None, "cannot read /proc/self/cgroup"
    v1, v2 = _own_cgroups(cgroup_root, "memory")
    candidates = [MemoryCgroups(p, v) for p, v in ((v1, 1), (v2, 2)) if p is not None]
    reason = "no memory cgroup controller is mounted"
    for cgroups in candidates:
        try:
            probe = cgroups.create("probe", 1 << 30)
        except OSError as exc:
            reason = f"cannot make a memory cgroup under {cgroups.parent}: {exc}"
            continue
        cgroups.remove(probe)
        return cgroups, ""
    return None, reason


def cpu_cgroups_detect(cgroup_root: Path = _CGROUP_ROOT) -> tuple[CpuCgroups | None, str]:
    """Where this process may make CPU cgroups for its workers, or None and why not."""
    v1, v2 = _own_cgroups(cgroup_root, "cpu")
    candidates = [CpuCgroups(p, v) for p, v in ((v1, 1), (v2, 2)) if p is not None]
    reason = "no cpu cgroup controller is mounted"
    for cgroups in candidates:
        try:
            probe = cgroups.create("probe", DEFAULT_CPU_WEIGHT)
        except OSError as exc:
            reason = f"cannot make a cpu cgroup under {cgroups.parent}: {exc}"
            continue
        cgroups.remove(probe)
        return cgroups, ""
    return None, reason


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def confine_before_exec(
    *,
    cgroup: Path | None,
    memory_bytes: int,
    ignore_stop_signals: bool,
    cpu_cgroup: Path | None = None,
) -> Callable[[], None]:
    """What the child runs between fork and exec: join `cgroup` and `cpu_cgroup` (so the
    sandbox and all it starts are inside), else cap its address space at `memory_bytes`;
    with `ignore_stop_signals`, ignore SIGTERM and SIGINT (bwrap; the worker sets its own)."""

    def confine() -> None:
        if cpu_cgroup is not None:
            (cpu_cgroup / "cgroup.procs").write_text(str(os.getpid()))
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))
        elif memory_bytes > 0:
            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        if ignore_stop_signals:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    return confine
