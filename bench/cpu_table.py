"""Where the CPU goes during a benchmark phase: CPU seconds per process group, from
/proc/PID/stat before and after, so a rate on a shared 2-core machine can be read as
"what each request costs each process" (that does not depend on how busy the rest of
the machine is; the rate does).

Groups: the web server (gunicorn and its workers), the worker daemon(s), the rest of
`memrun up` (Celery, beat, the supervisor), the Kafka JVM, Redis, PostgreSQL, the load
generator (wrk: this process's waited children; or this process itself), and the rest
of the machine (other users: the machine's busy time minus all of the above).
Kafka, Redis and PostgreSQL are whole servers: when others use them during a phase (other
engineers' tests on a shared machine), their share of it is counted here too.
Used by bench/bench_invoke_http.py; never run as a test.
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

TICK_S = 1 / os.sysconf("SC_CLK_TCK")


@dataclass
class _Proc:
    ppid: int
    cmdline: bytes
    own_ticks: int  # utime + stime
    reaped_ticks: int  # cutime + cstime: the children it has waited for


def _processes() -> dict[int, _Proc]:
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        found[int(entry.name)] = _Proc(
            ppid=int(stat[1]),
            cmdline=cmdline,
            own_ticks=int(stat[11]) + int(stat[12]),
            reaped_ticks=int(stat[13]) + int(stat[14]),
        )
    return found


def _tree(procs: dict[int, _Proc], root: int) -> set[int]:
    members = {root}
    grew = True
    while grew:
        grew = False
        for pid, proc in procs.items():
            if proc.ppid in members and pid not in members:
                members.add(pid)
                grew = True
    return members


def _listening_pid(port: int, procs: dict[int, _Proc], program: bytes) -> int | None:
    """The process (running `program`) that listens on TCP `port`: by the socket's inode,
    so a second Kafka or Redis on this machine (another checkout's) is not taken for it."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    for pid, proc in procs.items():
        if not proc.cmdline.startswith(program):
            continue
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return pid
    return None


def _machine_busy_s() -> float:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) * TICK_S


@dataclass
class Snapshot:
    by_group: dict[str, float] = field(default_factory=dict)
    machine_s: float = 0.0


def snapshot(*, up_pid: int, redis_port: int, kafka_port: int) -> Snapshot:
    """CPU seconds used so far by each group (see the module docstring)."""
    procs = _processes()
    up_tree = _tree(procs, up_pid) if up_pid in procs else set()
    groups: dict[str, set[int]] = {"web server (gunicorn)": set(), "worker daemon(s)": set()}
    for pid in up_tree:
        if procs[pid].ppid == up_pid and b"gunicorn" in procs[pid].cmdline:
            groups["web server (gunicorn)"] |= _tree(procs, pid)
        if b"worker_daemon" in procs[pid].cmdline:
            groups["worker daemon(s)"] |= _tree(procs, pid)
    claimed = groups["web server (gunicorn)"] | groups["worker daemon(s)"]
    groups["rest of memrun up (Celery, supervisor)"] = up_tree - claimed
    servers = (("Kafka (JVM)", kafka_port, b"java"), ("Redis", redis_port, b"redis"))
    for name, port, program in servers:
        server = _listening_pid(port, procs, program)
        groups[name] = set() if server is None else {server}
    for pid, proc in procs.items():
        if b"postgres" in proc.cmdline and proc.ppid == 1 and b"-D" in proc.cmdline:
            groups["PostgreSQL"] = _tree(procs, pid)
    result = Snapshot(machine_s=_machine_busy_s())
    for name, pids in groups.items():
        result.by_group[name] = TICK_S * sum(
            procs[pid].own_ticks + procs[pid].reaped_ticks for pid in pids
        )
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    this = resource.getrusage(resource.RUSAGE_SELF)
    result.by_group["wrk (this bench's children)"] = children.ru_utime + children.ru_stime
    result.by_group["this bench's process"] = this.ru_utime + this.ru_stime
    return result


@dataclass
class Phase:
    before: Snapshot
    after: Snapshot | None = None

    def table(self, *, what: str, count: int, seconds: float) -> str:
        """One line per group: CPU ms per `what`, and the share of the machine's 2 cores."""
        assert self.after is not None
        cores = os.cpu_count() or 1
        lines = [f"  CPU per {what} ({count} in {seconds:.1f} s; {cores} cores):"]
        total = 0.0
        for name, after in self.after.by_group.items():
            used = after - self.before.by_group.get(name, 0.0)
            total += used
            lines.append(_row(name, used, count, seconds, cores))
        lines.append(_row("all of the above", total, count, seconds, cores))
        machine = self.after.machine_s - self.before.machine_s
        lines.append(_row("rest of the machine (others)", machine - total, count, seconds, cores))
        return "\n".join(lines)


def _row(name: str, used_s: float, count: int, seconds: float, cores: int) -> str:
    share = used_s / (seconds * cores) * 100 if seconds > 0 else 0.0
    per = used_s * 1000 / count if count else 0.0
    return f"    {name:40s} {per:7.3f} ms  ({share:5.1f}% of the machine)"


@contextmanager
def measured(*, up_pid: int, redis_port: int, kafka_port: int) -> Iterator[Phase]:
    """A phase whose `table` can be printed after the with-block."""
    phase = Phase(before=snapshot(up_pid=up_pid, redis_port=redis_port, kafka_port=kafka_port))
    yield phase
    phase.after = snapshot(up_pid=up_pid, redis_port=redis_port, kafka_port=kafka_port)
