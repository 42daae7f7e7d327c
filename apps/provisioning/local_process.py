"""A local worker's process as the supervisor (local_supervisor.py) sees it: one it
started (a child, with an exit code) or one it adopted from a predecessor (named by pid
and start time, watched through /proc), and how either is started and signalled."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from apps.provisioning.local_layout import process_start_ticks

Spawn = Callable[
    [Sequence[str], Mapping[str, str], IO[bytes], Path, Callable[[], None]],
    "subprocess.Popen[bytes]",
]


def spawn_process(
    argv: Sequence[str],
    env: Mapping[str, str],
    log: IO[bytes],
    cwd: Path,
    before_exec: Callable[[], None],
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        list(argv),
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=before_exec,  # the supervisor runs no threads: fork is safe
    )


class AdoptedProcess:
    """A worker process started by an earlier supervisor, named by pid and start time.
    Not our child: it can be signalled and watched through /proc, not waited for."""

    def __init__(self, pid: int, start_ticks: int) -> None:
        self.pid = pid
        self.start_ticks = start_ticks

    def alive(self) -> bool:
        return process_start_ticks(self.pid) == self.start_ticks

    def wait(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
            time.sleep(0.05)


Process = subprocess.Popen[bytes] | AdoptedProcess


def process_exit(proc: Process) -> tuple[bool, int | None]:
    """(exited, exit code); an adopted process's exit code is not known to us."""
    if isinstance(proc, AdoptedProcess):
        return not proc.alive(), None
    code = proc.poll()
    return code is not None, code


def process_signal_group(proc: Process, signum: int) -> None:
    """`signum` to the worker's process group (it leads its own session): a sandboxed
    worker is a child of bwrap, which forwards nothing."""
    if not process_exit(proc)[0]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            # A process that does not lead its own group (not started by a supervisor)
            # gets the signal alone.
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, signum)
            else:
                os.kill(proc.pid, signum)
