"""The daemon's command line has two doors with one parser: `python -m worker_daemon`
(what the provisioner runs) and `memrun worker` (found through the memrun.commands entry
point, so memrun/ never imports the daemon). A refusal is one line and exit code 1."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from memrun.cli import build_parser


def test_memrun_worker_comes_from_the_entry_point() -> None:
    args = build_parser().parse_args(["worker", "--service", "s", "--concurrency", "2"])
    assert args.handler.__module__ == "worker_daemon.cli"
    assert (args.service, args.concurrency) == ("s", 2)


@pytest.mark.parametrize(
    "argv",
    [
        [sys.executable, "-m", "worker_daemon", "--service", "s"],
        [sys.executable, "-m", "memrun.cli", "worker", "--service", "s"],
    ],
)
def test_a_worker_without_a_package_is_refused_in_one_line(argv: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMRUN_")}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1
    assert "package_path is required: pass --package or set MEMRUN_PACKAGE_PATH" in done.stderr
