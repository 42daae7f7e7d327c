"""A service's caches on one host, as sandboxed workers see them (real bubblewrap, real
processes, the supervisor ticked by the test): a worker reads the cache of a worker of its
service started AFTER it, and that cache again once it is handed over (a rename the older
worker sees without a restart); it writes its own cache only, never a peer's, the handover
folder or the service's caches folder, and sees no other service's caches at all."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apps.provisioning.local_handover import cache_hand_over
from apps.provisioning.local_layout import LocalLayout, LocalWorkerSpec, write_json_atomic
from apps.provisioning.local_sandbox import SANDBOX_UID, sandbox_detect
from apps.provisioning.local_supervisor import LocalSupervisor
from tests.provisioning.test_local_supervisor import FAST, until

# Service svc's first worker: says it runs, waits for a peer's cached file to appear, tries
# to read and write around it, then waits for that cache to be handed over and reads it there.
OLDER = """
import json, os, pathlib, signal, sys, time

own = pathlib.Path(os.environ["MEMRUN_CACHE_ROOT"])
peers = pathlib.Path(os.environ["MEMRUN_CACHE_PEERS_DIR"])
handover = pathlib.Path(os.environ["MEMRUN_CACHE_HANDOVER_DIR"])


def attempt_read(path):
    try:
        return pathlib.Path(path).read_text()
    except OSError as exc:
        return type(exc).__name__


def attempt_write(path):
    try:
        pathlib.Path(path).write_text("written by the older worker")
    except OSError as exc:
        return type(exc).__name__
    return "written"


def wait_for(path):
    deadline = time.monotonic() + 60
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def report(name, data):
    (own / (name + ".tmp")).write_text(json.dumps(data))
    os.rename(own / (name + ".tmp"), own / name)


report("started", {"uid": os.getuid()})
peer = peers / "w-later" / "svc"
wait_for(peer / "files" / "x")
report("peer.json", {
    "read_peer": attempt_read(peer / "files" / "x"),
    "write_peer_file": attempt_write(peer / "files" / "x"),
    "new_peer_file": attempt_write(peer / "evil"),
    "new_handover": attempt_write(handover / "evil"),
    "new_in_caches": attempt_write(peers.parent / "evil"),
    "write_own": attempt_write(own / "mine"),
    "read_other_service": attempt_read(sys.argv[1]),
    "services_seen": sorted(os.listdir(peers.parent.parent)),
})
wait_for(handover / "w-later" / "files" / "x")
report("handover.json", {"read_handed_over": attempt_read(handover / "w-later" / "files" / "x")})
signal.pause()
"""
# Its second worker: caches one file (and the lock file every cache has) and waits.
LATER = """
import os, pathlib, signal

cache = pathlib.Path(os.environ["MEMRUN_CACHE_ROOT"]) / "svc"
(cache / "files").mkdir(parents=True, exist_ok=True)
(cache / "lock").touch()
(cache / "files" / ".x.tmp").write_text("cached by the later worker")
os.rename(cache / "files" / ".x.tmp", cache / "files" / "x")
signal.pause()
"""


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[LocalSupervisor]:
    home = tmp_path / "home"
    sandbox, why_not = sandbox_detect(home, mode="on")
    assert sandbox is not None, why_not
    running = LocalSupervisor(LocalLayout(home), settings=FAST, sandbox=sandbox)
    yield running
    running.stop_all()


def add_worker(supervisor: LocalSupervisor, name: str, code: str, *args: str) -> None:
    spec = LocalWorkerSpec(
        name=name, argv=[sys.executable, "-c", code, *args], env={}, labels={"service": "svc"}
    )
    write_json_atomic(supervisor.layout.spec_path(name), spec.to_dict())


def reported(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def test_a_worker_reads_its_services_later_and_handed_over_caches_and_writes_only_its_own(
    supervisor: LocalSupervisor,
) -> None:
    layout = supervisor.layout
    theirs = layout.cache_root("other", "w-other") / "other" / "files" / "secret"
    theirs.parent.mkdir(parents=True)
    theirs.write_text("another service's data")
    own = layout.cache_root("svc", "w-older")

    add_worker(supervisor, "w-older", OLDER, str(theirs))
    started = until(supervisor, lambda: reported(own / "started"), "the older worker")
    assert started == {"uid": SANDBOX_UID}
    add_worker(supervisor, "w-later", LATER)
    seen = until(supervisor, lambda: reported(own / "peer.json"), "the older worker's look")

    assert seen == {
        "read_peer": "cached by the later worker",
        "write_peer_file": "OSError",  # EROFS: the service's caches are bound read-only
        "new_peer_file": "OSError",
        "new_handover": "OSError",
        "new_in_caches": "OSError",
        "write_own": "written",
        "read_other_service": "FileNotFoundError",
        "services_seen": ["svc"],
    }
    later = layout.cache_root("svc", "w-later") / "svc"
    assert (later / "files" / "x").read_text() == "cached by the later worker"
    assert sorted(p.name for p in later.iterdir()) == ["files", "lock"]
    assert not (layout.handover_dir("svc") / "evil").exists()

    layout.spec_path("w-later").unlink()
    handed = until(
        supervisor,
        lambda: reported(own / "handover.json"),
        "the older worker to read the handed-over cache",
    )
    assert handed == {"read_handed_over": "cached by the later worker"}
    assert not layout.cache_root("svc", "w-later").exists()
    assert theirs.read_text() == "another service's data"


def test_a_worker_of_the_layout_before_has_its_cache_handed_over_from_its_old_place(
    tmp_path: Path,
) -> None:
    layout = LocalLayout(tmp_path)
    old = layout.legacy_cache_dir("svc", "w-old")
    (old / "files").mkdir(parents=True)
    (old / "lock").touch()
    (old / "files" / "x").write_bytes(b"x")

    moved = cache_hand_over(layout, worker="w-old", service="svc")

    assert moved == layout.handover_dir("svc") / "w-old"
    assert (moved / "files" / "x").read_bytes() == b"x"
    assert not old.exists()
