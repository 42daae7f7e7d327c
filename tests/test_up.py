"""`memrun up` end to end: it refuses to start without Redis or Kafka, serves the API and
the admin (with its static files), writes the CLI token, and stops its children cleanly
on SIGTERM or when one of them dies. Each run has its own MEMRUN_HOME and SQLite file."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

CLI = "import sys; from memrun.cli import main; sys.exit(main())"
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 45.0


@dataclass
class Appliance:
    process: subprocess.Popen[str]
    home: Path
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli_env(home: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SECRET_KEY")}
    return env | {"MEMRUN_HOME": str(home)} | overrides


def memrun(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CLI, *args],
        env=cli_env(home, **env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def get(url: str, token: str | None = None) -> tuple[int, bytes, str]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def children_of(pid: int) -> dict[int, str]:
    """pid -> command line of the processes whose parent is `pid`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid:
            found[int(entry.name)] = cmdline
    return found


def wait_until_healthy(appliance: Appliance) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if appliance.process.poll() is not None:
            pytest.fail(f"memrun up exited early:\n{appliance.output()}")
        try:
            if get(f"{appliance.url}/api/v1/health")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"memrun up was not healthy within {START_TIMEOUT_S}s:\n{appliance.output()}")


@pytest.fixture
def appliance(tmp_path: Path, kafka_bootstrap: str, redis_url: str) -> Iterator[Appliance]:
    """A running `memrun up`; whatever is left of it is stopped at teardown."""
    port = free_port()
    log = tmp_path / "up.log"
    home = tmp_path / "home"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", CLI, "up", "--bind", f"127.0.0.1:{port}"],
            env=cli_env(home),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    running = Appliance(process, home, f"http://127.0.0.1:{port}", log)
    try:
        wait_until_healthy(running)
        yield running
    finally:
        leftovers = children_of(process.pid)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_up_serves_the_api_and_the_admin_and_stops_on_sigterm(appliance: Appliance) -> None:
    output = appliance.output()
    assert "created the admin user: username admin, password " in output

    token_file = appliance.home / "cli-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    status, body, _ = get(f"{appliance.url}/api/v1/tokens", token)
    assert status == 200 and b'"cli"' in body
    assert get(f"{appliance.url}/api/v1/services")[0] == 401

    # What a browser gets: the admin's login page, and the stylesheet it links to.
    status, page, _ = get(f"{appliance.url}/admin/login/")
    assert status == 200 and b"/static/admin/css/base.css" in page
    status, css, content_type = get(f"{appliance.url}/static/admin/css/base.css")
    assert status == 200 and content_type.startswith("text/css") and len(css) > 1000

    created = memrun(appliance.home, "token", "create", "--name", "ci")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.split()[-1]
    assert secret.startswith("mr_")
    assert get(f"{appliance.url}/api/v1/services", secret)[0] == 200
    again = memrun(appliance.home, "token", "create", "--name", "ci")
    assert again.returncode == 1 and "already have an active token" in again.stderr

    children = children_of(appliance.process.pid)
    assert len(children) == 4  # web, Celery worker, beat, local supervisor
    appliance.process.send_signal(signal.SIGTERM)
    assert appliance.process.wait(timeout=STOP_TIMEOUT_S) == 0
    assert appliance.output().rstrip().endswith("memrun: stopped")
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists()]


@pytest.mark.slow
def test_up_stops_everything_when_a_child_dies(appliance: Appliance) -> None:
    children = children_of(appliance.process.pid)
    web = next(pid for pid, cmdline in children.items() if "gunicorn" in cmdline)
    os.kill(web, signal.SIGKILL)
    assert appliance.process.wait(timeout=STOP_TIMEOUT_S) == 1
    assert "web (gunicorn) exited unexpectedly" in appliance.output()
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists()]


def test_up_refuses_to_start_without_redis(tmp_path: Path, kafka_bootstrap: str) -> None:
    result = memrun(tmp_path, "up", REDIS_URL="redis://127.0.0.1:1/0")
    assert result.returncode == 1
    assert "redis at redis://127.0.0.1:1/0 is unreachable" in result.stderr
    assert "bash scripts/services up" in result.stderr
    assert "kafka" not in result.stderr


def test_token_create_before_the_first_up_says_what_to_do(tmp_path: Path) -> None:
    result = memrun(tmp_path, "token", "create", "--name", "ci")
    assert result.returncode == 1
    assert "memrun up" in result.stderr
