"""`memrun autoscale` against a live control plane: it sets the policy, shows it with the
decisions and their reasons (as `memrun status NAME` does), turns it off, and a bad
range is one line on stderr."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from apps.services.models import Deployment
from tests.memrun.cli import control_plane, memrun, write_handler
from tests.worker_daemon.harness import wait_for

pytestmark = pytest.mark.django_db(transaction=True)
__all__ = ["control_plane"]


def test_autoscale_sets_shows_and_turns_off(
    control_plane: list[int],
    service_name: Callable[[], str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from apps.provisioning.autoscaling import autoscale_service
    from apps.provisioning.lag import service_lag

    name = service_name()
    memrun(capsys, "deploy", str(write_handler(tmp_path, name)), "--no-wait")
    Deployment.objects.filter(service__name=name).update(status="active")

    code, out, err = memrun(capsys, "autoscale", name, "--max", "9")
    assert code == 1 and err.count("\n") == 1 and "max_workers" in err

    code, out, err = memrun(
        capsys,
        "autoscale",
        name,
        "--min",
        "1",
        "--max",
        "2",
        "--lag-per-worker",
        "50",
        "--up-window",
        "0",
    )
    assert code == 0, err
    assert out.startswith(f"{name}: autoscaling 1..2 worker(s) on lag per worker 50")

    deployment = Deployment.objects.get(service__name=name)
    # A new topic answers offset requests once its partitions have settled on the broker.
    wait_for(lambda: service_lag(service=name, partitions=64), timeout_s=120, what="the lag")
    autoscale_service(service_id=deployment.service_id, now=timezone.now())
    autoscale_service(service_id=deployment.service_id, now=timezone.now() + timedelta(hours=1))
    code, out, _ = memrun(capsys, "status", name)
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith(name + " "))
    # The range, and the newest decision with its reason.
    assert row.split()[3:7] == ["1..2:", "hold", "1->1", "0s"], row
    assert "ago (at_min)" in row
    assert "autoscaling 1..2" in out and "idle_window: lag 0 on 1 worker(s)" in out
    assert "at_min: lag 0 on 1 worker(s) (0.0 per worker, threshold 50): idle, and 1" in out

    code, out, err = memrun(capsys, "scale", name, "2")
    assert code == 1 and "--off" in err
    code, out, _ = memrun(capsys, "autoscale", name, "--off")
    assert code == 0 and out.startswith(f"{name}: autoscaling off; 1 worker(s) desired")
    assert "at_min" in out  # the decisions stay listed


def test_autoscale_sets_and_clears_the_time_in_queue_trigger(
    control_plane: list[int],
    service_name: Callable[[], str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = service_name()
    memrun(capsys, "deploy", str(write_handler(tmp_path, name)), "--no-wait")
    Deployment.objects.filter(service__name=name).update(status="active")

    # The control plane owns the range: its 422 is one line that names the field.
    code, out, err = memrun(capsys, "autoscale", name, "--max-queue-seconds", "0")
    assert code == 1 and err.count("\n") == 1 and "max_queue_seconds" in err
    with pytest.raises(SystemExit) as refused:
        memrun(capsys, "autoscale", name, "--max-queue-seconds", "soon")
    assert refused.value.code == 2
    assert "'soon' is not a number of seconds or 'off'" in capsys.readouterr().err

    code, out, err = memrun(
        capsys, "autoscale", name, "--lag-per-worker", "50", "--max-queue-seconds", "2.5"
    )
    assert code == 0, err
    assert out.startswith(f"{name}: autoscaling 1..2 worker(s) on lag per worker 50 or 2.5s in")
    code, out, _ = memrun(capsys, "status", name)
    assert code == 0 and "lag per worker 50 or 2.5s in queue" in out

    code, out, err = memrun(capsys, "autoscale", name, "--max-queue-seconds", "off")
    assert code == 0, err
    assert out.startswith(f"{name}: autoscaling 1..2 worker(s) on lag per worker 50 (up after")
