"""`memrun up`: run the control plane on this machine.

Checks that the database, Redis and Kafka answer, migrates, creates the admin user and the
CLI token on first start, then runs the web server (gunicorn running uvicorn workers, ASGI),
a Celery worker, Celery beat and the local workers' supervisor as child processes until
Ctrl-C or SIGTERM, which it forwards. Django runs only in the children: this module starts
`python -m django ...` and never imports it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from memrun.errors import MemrunError
from memrun.home import memrun_home
from memrun.wire.kafka import kafka_connection_from_env

SETTINGS_MODULE = "memrun_site.settings"
DEFAULT_BIND = "127.0.0.1:8000"
STOP_GRACE_S = 30.0
POLL_INTERVAL_S = 0.2


@dataclass(frozen=True)
class Child:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "up",
        help="run the control plane here (web, Celery worker and beat, local workers)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--bind", default=DEFAULT_BIND, help=f"address for the web server (default {DEFAULT_BIND})"
    )
    parser.add_argument(
        "--web-workers", type=int, default=2, help="web server processes (default 2)"
    )
    parser.set_defaults(handler=run)


def django_env() -> dict[str, str]:
    """The environment of every Django child: one settings module and one MEMRUN_HOME."""
    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", SETTINGS_MODULE)
    env["MEMRUN_HOME"] = str(memrun_home())
    return env


def manage(*args: str, capture: bool = False) -> subprocess.CompletedProcess[str]:
    """Run a Django management command in a child Python."""
    return subprocess.run(
        [sys.executable, "-m", "django", *args],
        env=django_env(),
        text=True,
        capture_output=capture,
        check=False,
    )


def children(*, bind: str, web_workers: int) -> list[Child]:
    module = [sys.executable, "-m"]
    celery = [*module, "celery", "-A", "memrun_site"]
    host, _, port = bind.rpartition(":")
    # gunicorn supervises uvicorn (ASGI) processes: see memrun_site/gunicorn_conf.py for
    # why. Sync views run in per-request threads under ASGI, where a persistent database
    # connection would be left behind by each: the pool replaces them.
    address = f"{host or '0.0.0.0'}:{port}"
    web = [
        *module,
        "gunicorn",
        "--config",
        "python:memrun_site.gunicorn_conf",
        "--bind",
        address,
        "--workers",
        str(web_workers),
        "memrun_site.asgi:application",
    ]
    web_env = {"MEMRUN_DB_CONN_MAX_AGE": "0", "MEMRUN_DB_POOL": "1"}
    return [
        Child("web (gunicorn)", web, web_env),
        Child("Celery worker", [*celery, "worker", "--loglevel", "INFO", "--concurrency", "2"]),
        Child("Celery beat", [*celery, "beat", "--loglevel", "INFO"]),
        # Runs the local provisioner's workers: Celery's task processes come and go.
        Child("local supervisor", [*module, "apps.provisioning.local_supervisor"]),
    ]


def run(args: argparse.Namespace) -> int:
    _say(f"home {memrun_home()}")
    preflight = manage("memrun_preflight", capture=True)
    if preflight.returncode != 0:
        raise MemrunError(command_error(preflight.stderr) or "the preflight check failed")
    if not kafka_connection_from_env().authenticated:
        _say(
            "WARNING: Kafka has no authentication (KAFKA_SECURITY_PROTOCOL is not set): "
            "every worker can read and write every service's topics and groups. Run Kafka "
            "with SASL (bash scripts/services up does) and export what `scripts/services "
            "env` prints"
        )
    _say("migrating the database")
    _check(manage("migrate", "--noinput", "-v", "0"), "migrate")
    _check(manage("collectstatic", "--noinput", "-v", "0"), "collectstatic")
    _check(manage("memrun_init"), "memrun_init")
    # Local workers reach the control plane here unless told otherwise.
    os.environ.setdefault("MEMRUN_CONTROL_PLANE_URL", control_plane_url(args.bind))
    return supervise(children(bind=args.bind, web_workers=args.web_workers), bind=args.bind)


def control_plane_url(bind: str) -> str:
    """The URL of the web server bound at `bind` (host:port), as seen from this machine."""
    host, _, port = bind.rpartition(":")
    if host in ("", "0.0.0.0", "[::]", "::"):
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def supervise(plan: Sequence[Child], *, bind: str) -> int:
    """Run `plan` until a signal (exit 0) or until one child exits on its own (exit 1)."""
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    running: list[tuple[Child, subprocess.Popen[bytes]]] = []
    died: tuple[Child, int] | None = None
    try:
        for child in plan:
            # Own session: Ctrl-C reaches only us, and each child gets exactly one SIGTERM.
            running.append(
                (
                    child,
                    subprocess.Popen(
                        child.argv, env={**django_env(), **child.env}, start_new_session=True
                    ),
                )
            )
        _say(
            f"running at http://{bind}/  (web UI: /, admin: /admin/, API docs: /api/v1/docs); "
            "Ctrl-C stops"
        )
        while not received and died is None:
            time.sleep(POLL_INTERVAL_S)
            died = next(
                ((child, code) for child, proc in running if (code := proc.poll()) is not None),
                None,
            )
    finally:
        _stop(running)
    if died is not None:
        child, code = died
        _say(f"{child.name} exited unexpectedly with code {code}; stopped the others")
        return 1
    _say("stopped")
    return 0


def _stop(running: Sequence[tuple[Child, subprocess.Popen[bytes]]]) -> None:
    """SIGTERM to each, then wait up to STOP_GRACE_S before SIGKILL."""
    for _child, proc in running:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for child, proc in running:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            _say(f"{child.name} did not stop within {STOP_GRACE_S:g}s; killing it")
            proc.kill()
            proc.wait()
    for _child, proc in running:
        _reap_group(proc.pid)


def _reap_group(pgid: int) -> None:
    """Kill what is left of a child's process group (its own session): a child that was
    killed, or died, leaves its processes behind (gunicorn's workers, Celery's pool)."""
    # ProcessLookupError: the group is gone, everything in it exited.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _check(result: subprocess.CompletedProcess[str], what: str) -> None:
    if result.returncode != 0:
        raise MemrunError(f"`manage.py {what}` failed with code {result.returncode}; see above")


def command_error(stderr: str) -> str:
    """A management command's CommandError text, without Django's prefix."""
    return stderr.strip().removeprefix("CommandError: ")


def _say(message: str) -> None:
    print(f"memrun: {message}", flush=True)
