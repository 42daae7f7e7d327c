"""Garbage collection: what memrun keeps on disk and in the artifact store and no longer
needs. `gc_plan` finds it, `gc_run` frees exactly what a plan lists; `memrun gc` (through
POST /api/v1/gc) and the periodic task (beat) both go through these two.

The kinds:
- `artifacts`: packages that no kept deployment references. A deployment is kept while it
  is pending, rolling or active, while a worker still runs it, and while it is among its
  service's newest MEMRUN_GC_KEEP_VERSIONS versions. A package is stored once per service
  and sha256, so a rollback shares it with the version it repeats: it goes only when no
  kept deployment points at it. Deleted services' packages are referenced by nothing.
- `worker_folders`: `{home}/workers/{name}/` (log file, cache, packages, venvs) of local
  workers the supervisor no longer runs (no spec, no status) and that are not running.
- `venvs`: half-built PEP 723 venvs in running local workers' folders, left by a build
  that was killed (its key's lock is free). A worker's finished venvs live in its own
  folder and go with it.
Anything younger than MEMRUN_GC_MIN_AGE_S is left alone: a deploy stores its package
before its deployment row commits, and a worker's folder exists before its spec.
Worker log lines in the database are pruned by count and age on their own
(apps/workers/services.py, worker_logs_prune).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from apps.provisioning.local_layout import LocalLayout
from apps.services.artifacts import artifact_delete, artifact_list
from apps.services.models import Deployment, DeploymentStatus
from apps.workers.models import Worker

ARTIFACTS, WORKER_FOLDERS, VENVS = "artifacts", "worker_folders", "venvs"
KINDS = (ARTIFACTS, WORKER_FOLDERS, VENVS)
_KEPT_STATUSES = (DeploymentStatus.PENDING, DeploymentStatus.ROLLING, DeploymentStatus.ACTIVE)
# worker_daemon/package/_venv.py builds `{venvs}/{key}` in a temporary `.{key}-XXXX`
# while it holds `.{key}.lock`.
_VENV_STAGING = re.compile(r"^\.(?P<key>[0-9a-f]{32})-")


@dataclass(frozen=True)
class Garbage:
    """One thing to free: a package URL or a folder, and how many bytes it holds."""

    kind: str
    location: str
    size_bytes: int


@dataclass(frozen=True)
class GcPlan:
    items: tuple[Garbage, ...]

    def totals(self) -> dict[str, tuple[int, int]]:
        """kind -> (count, bytes), every kind present."""
        found = {kind: (0, 0) for kind in KINDS}
        for item in self.items:
            count, size = found[item.kind]
            found[item.kind] = (count + 1, size + item.size_bytes)
        return found


def gc_plan(*, now: datetime | None = None) -> GcPlan:
    """What garbage there is now; frees nothing. Only for admins on all services (the
    route checks it): the plan names stored packages and folders."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.MEMRUN_GC_MIN_AGE_S)
    layout = LocalLayout(Path(settings.MEMRUN_HOME))
    items = [*_artifacts(cutoff), *_worker_folders(layout, cutoff), *_venvs(layout, cutoff)]
    return GcPlan(tuple(items))


def gc_run(*, plan: GcPlan) -> GcPlan:
    """Free what `plan` lists; returns what was freed (an item gone meanwhile is skipped:
    it was freed by someone else, so it is not counted)."""
    freed = []
    for item in plan.items:
        if item.kind == ARTIFACTS:
            artifact_delete(url=item.location)
        else:
            folder = Path(item.location)
            if not folder.is_dir():
                continue
            shutil.rmtree(folder, ignore_errors=True)
        freed.append(item)
    return GcPlan(tuple(freed))


def _artifacts(cutoff: datetime) -> Iterator[Garbage]:
    kept = _kept_artifact_urls()
    for stored in artifact_list():
        if stored.url not in kept and stored.modified_at < cutoff:
            yield Garbage(ARTIFACTS, stored.url, stored.size_bytes)


def _kept_artifact_urls() -> set[str]:
    keep_versions = settings.MEMRUN_GC_KEEP_VERSIONS
    running = set(
        Worker.objects.exclude(state__in=Worker.FINISHED_STATES)
        .exclude(deployment_id=None)
        .values_list("deployment_id", flat=True)
    )
    kept: set[str] = set()
    newest: dict[int, int] = {}  # service id -> versions seen, newest first
    rows = Deployment.objects.order_by("service_id", "-version").values_list(
        "id", "service_id", "status", "artifact_url"
    )
    for deployment_id, service_id, status, url in rows:
        newest[service_id] = newest.get(service_id, 0) + 1
        if (
            newest[service_id] <= keep_versions
            or status in _KEPT_STATUSES
            or deployment_id in running
        ):
            kept.add(url)
    return kept


def _worker_folders(layout: LocalLayout, cutoff: datetime) -> Iterator[Garbage]:
    root = layout.home / "workers"
    if not root.is_dir():
        return
    supervised = set(layout.spec_names()) | set(layout.status_names())
    names = {path.name for path in root.iterdir() if path.is_dir()} - supervised
    running = set(
        Worker.objects.filter(name__in=names)
        .exclude(state__in=Worker.FINISHED_STATES)
        .values_list("name", flat=True)
    )
    for name in sorted(names - running):
        folder = root / name
        size, newest = _du(folder)
        if newest < cutoff:
            yield Garbage(WORKER_FOLDERS, str(folder), size)


def _venvs(layout: LocalLayout, cutoff: datetime) -> Iterator[Garbage]:
    for name in layout.spec_names():
        venvs = layout.worker_dir(name) / "work" / "venvs"
        if not venvs.is_dir():
            continue
        for folder in sorted(venvs.iterdir()):
            match = _VENV_STAGING.match(folder.name)
            if match is None or not folder.is_dir():
                continue
            size, newest = _du(folder)
            if newest < cutoff and _lock_free(venvs / f".{match['key']}.lock"):
                yield Garbage(VENVS, str(folder), size)


def _lock_free(path: Path) -> bool:
    """Whether no build holds `path` now (a build in progress holds it exclusively)."""
    if not path.exists():
        return True
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
    return True


def _du(folder: Path) -> tuple[int, datetime]:
    """(bytes of the files under `folder`, newest modification of anything in it)."""
    size, newest = 0, folder.stat().st_mtime
    for parent, dirs, files in os.walk(folder):
        for entry, is_file in [*((d, False) for d in dirs), *((f, True) for f in files)]:
            with contextlib.suppress(FileNotFoundError):
                stat = os.lstat(os.path.join(parent, entry))
                newest = max(newest, stat.st_mtime)
                size += stat.st_size if is_file else 0
    return size, datetime.fromtimestamp(newest, tz=UTC)
