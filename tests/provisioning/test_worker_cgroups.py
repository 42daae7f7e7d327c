"""A local worker's CPU share and its leftovers, with real processes and the kernel's own
cgroups: the supervisor puts each worker in a CPU cgroup with its weight, and when the
worker exits, whatever it left running (a child in a session of its own, which no signal to
the worker's process group reaches) is killed with its cgroups."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from apps.provisioning.local_layout import LocalLayout, LocalWorkerSpec, write_json_atomic
from apps.provisioning.local_sandbox import (
    CpuCgroups,
    MemoryCgroups,
    cgroup_weight,
    cpu_cgroups_detect,
    memory_cgroups_detect,
)
from apps.provisioning.local_supervisor import LocalSupervisor, SupervisorSettings
from tests.worker_daemon.harness import wait_for

FAST = SupervisorSettings(stop_grace_s=10.0, restart_backoff_s=0.05, restart_backoff_max_s=0.2)
# A worker that starts a grandchild in a new session (out of reach of its process group),
# writes the grandchild's pid, and then waits to be stopped.
LEAVES_A_CHILD = """
import os, signal, subprocess, sys
child = subprocess.Popen(
    [sys.executable, "-c", "import signal; signal.pause()"], start_new_session=True
)
with open(sys.argv[1] + ".tmp", "w") as out:
    out.write(str(child.pid))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
signal.pause()
"""


@pytest.fixture
def cgroups() -> tuple[MemoryCgroups, CpuCgroups]:
    memory, why_not = memory_cgroups_detect()
    assert memory is not None, f"the project's machines offer memory cgroups: {why_not}"
    cpu, why_not = cpu_cgroups_detect()
    assert cpu is not None, f"the project's machines offer cpu cgroups: {why_not}"
    return memory, cpu


@pytest.fixture
def supervisor(
    tmp_path: Path, cgroups: tuple[MemoryCgroups, CpuCgroups]
) -> Iterator[LocalSupervisor]:
    running = LocalSupervisor(
        LocalLayout(tmp_path / "home"),
        settings=FAST,
        cgroups=cgroups[0],
        cpu_cgroups=cgroups[1],
        cpu_weight=50,
    )
    yield running
    running.stop_all()


def add_spec(supervisor: LocalSupervisor, name: str, argv: list[str]) -> None:
    spec = LocalWorkerSpec(name=name, argv=argv, env={}, memory_bytes=256 << 20)
    write_json_atomic(supervisor.layout.spec_path(name), spec.to_dict())


def until(supervisor: LocalSupervisor, condition: Callable[[], Any], what: str) -> Any:
    def ticked() -> Any:
        supervisor.tick()
        return condition()

    return wait_for(ticked, timeout_s=60, what=what)


def cgroup_of(pid: int, controller: str) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _id, controllers, path = line.split(":", 2)
        if controller in controllers.split(",") or (controller == "" and controllers == ""):
            return path
    raise AssertionError(f"pid {pid} has no {controller} cgroup")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_worker_runs_in_a_cpu_cgroup_with_its_weight(
    supervisor: LocalSupervisor, cgroups: tuple[MemoryCgroups, CpuCgroups], unique_name: str
) -> None:
    name = f"w-cpu-{unique_name}"
    add_spec(supervisor, name, [sys.executable, "-c", "import signal; signal.pause()"])
    pid = until(supervisor, lambda: supervisor.pid_of(name), "the worker to start")
    cpu = cgroups[1]
    path = cpu.path(name)
    if cpu.version == 1:
        assert (path / "cpu.shares").read_text().strip() == str(50 * 1024 // 100)
        assert cgroup_of(pid, "cpu") == "/" + str(path.relative_to(Path("/sys/fs/cgroup/cpu")))
    else:
        assert (path / "cpu.weight").read_text().strip() == "50"
        assert str(pid) in (path / "cgroup.procs").read_text().split()
    assert str(pid) in (path / "cgroup.procs").read_text().split()

    supervisor.layout.spec_path(name).unlink()
    until(supervisor, lambda: supervisor.pid_of(name) is None, "the worker to stop")
    assert not path.exists()


def test_what_a_worker_leaves_running_is_killed_when_it_stops(
    supervisor: LocalSupervisor, tmp_path: Path, unique_name: str
) -> None:
    name = f"w-left-{unique_name}"
    pid_file = tmp_path / "grandchild.pid"
    add_spec(supervisor, name, [sys.executable, "-c", LEAVES_A_CHILD, str(pid_file)])
    until(supervisor, pid_file.exists, "the worker to start its grandchild")
    grandchild = int(pid_file.read_text())
    worker = supervisor.pid_of(name)
    assert worker is not None and alive(grandchild)
    assert os.getpgid(grandchild) != os.getpgid(worker)  # out of reach of the group's signals

    supervisor.layout.spec_path(name).unlink()
    until(supervisor, lambda: supervisor.pid_of(name) is None, "the worker to stop")
    wait_for(lambda: not alive(grandchild), what="the grandchild to be gone")


def test_the_cpu_weight_setting_is_checked() -> None:
    assert cgroup_weight({}) == 100
    assert cgroup_weight({"MEMRUN_WORKER_CPU_WEIGHT": "250"}) == 250
    for bad in ("0", "10001", "lots", "-5"):
        with pytest.raises(ValueError, match="MEMRUN_WORKER_CPU_WEIGHT must be a whole number"):
            cgroup_weight({"MEMRUN_WORKER_CPU_WEIGHT": bad})
