"""Fixtures for provisioning: a provisioner that only records (for reconcile's decisions)
and helpers to drive workers through heartbeats with an injected clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import pytest

from apps.provisioning.provisioners import LiveWorker, WorkerSpec


@dataclass
class RecordingProvisioner:
    """A Provisioner whose workers are entries in a dict: what reconcile asked for."""

    specs: dict[str, WorkerSpec] = field(default_factory=dict)
    destroyed: list[str] = field(default_factory=list)
    drained: list[str] = field(default_factory=list)
    exited: dict[str, tuple[int, str]] = field(default_factory=dict)

    def create(self, spec: WorkerSpec) -> str:
        self.specs[spec.name] = spec
        return f"ref-{spec.name}"

    def drain(self, ref: str) -> None:
        self.drained.append(ref)

    def destroy(self, ref: str) -> None:
        self.destroyed.append(ref)
        self.specs.pop(ref.removeprefix("ref-"), None)

    def list(self, labels: dict[str, str]) -> list[LiveWorker]:
        return [
            LiveWorker(
                name=name,
                ref=f"ref-{name}",
                labels=spec.labels,
                running=name not in self.exited,
                exit_code=self.exited.get(name, (None, ""))[0],
                log_tail=self.exited.get(name, (None, ""))[1],
            )
            for name, spec in self.specs.items()
            if all(spec.labels.get(k) == v for k, v in labels.items())
        ]

    def credential(self, name: str) -> str:
        return self.specs[name].env["MEMRUN_WORKER_TOKEN"]


@pytest.fixture
def provisioner() -> RecordingProvisioner:
    return RecordingProvisioner()


@dataclass
class Clock:
    now: datetime

    def advance(self, seconds: float) -> datetime:
        from datetime import timedelta

        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> Clock:
    from django.utils import timezone

    return Clock(timezone.now())
