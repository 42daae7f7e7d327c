"""`memrun up` end to end: it refuses to start without Redis or Kafka, serves the API and
the admin (with its static files), writes the CLI token, and stops its children cleanly
on SIGTERM or when one of them dies. Each run has its own MEMRUN_HOME and SQLite file."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest

from memrun.wire.kafka import kafka_connection_from_env
from tests.fixtures.appliance import STOP_TIMEOUT_S, Appliance, children_of, get, memrun


@pytest.mark.slow
def test_up_serves_the_api_and_the_admin_and_stops_on_sigterm(appliance: Appliance) -> None:
    output = appliance.output()
    assert "created the admin user: username admin, password " in output
    # Said once, loudly, when Kafka has no authentication; never when it has.
    unauthenticated = not kafka_connection_from_env().authenticated
    assert output.count("WARNING: Kafka has no authentication") == int(unauthenticated)

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
    # The web UI: / leads to its login page; its stylesheet and htmx come from the appliance.
    status, page, _ = get(f"{appliance.url}/")
    assert status == 200 and b'name="username"' in page and b"/static/web/memrun.css" in page
    status, css, content_type = get(f"{appliance.url}/static/web/memrun.css")
    assert status == 200 and content_type.startswith("text/css")
    status, script, _ = get(f"{appliance.url}/static/vendor/htmx/htmx.min.js")
    assert status == 200 and b"htmx" in script

    created = memrun(appliance.home, "token", "create", "--name", "ci", MEMRUN_URL=appliance.url)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.split()[-1]
    assert secret.startswith("mr_")
    assert get(f"{appliance.url}/api/v1/services", secret)[0] == 200
    again = memrun(appliance.home, "token", "create", "--name", "ci", MEMRUN_URL=appliance.url)
    assert again.returncode == 1 and "already have an active token" in again.stderr
    # A scoped token: it reads, and may do nothing else; listed with its role; revoked.
    scoped = memrun(
        appliance.home,
        "token",
        "create",
        "--name",
        "dash",
        "--role",
        "read",
        MEMRUN_URL=appliance.url,
    )
    assert scoped.returncode == 0, scoped.stderr
    assert "read on all services" in scoped.stdout
    reader = scoped.stdout.split()[-1]
    assert get(f"{appliance.url}/api/v1/services", reader)[0] == 200
    assert get(f"{appliance.url}/api/v1/tokens", reader)[0] == 403
    listed = memrun(appliance.home, "token", "list", MEMRUN_URL=appliance.url)
    assert listed.returncode == 0, listed.stderr
    assert any(
        "dash" in line and "read on all services" in line for line in listed.stdout.splitlines()
    )
    revoked = memrun(appliance.home, "token", "revoke", "dash", MEMRUN_URL=appliance.url)
    assert revoked.returncode == 0, revoked.stderr
    assert get(f"{appliance.url}/api/v1/services", reader)[0] == 401

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
    web_processes = children_of(web)
    assert web_processes  # gunicorn's own workers, which a SIGKILL to it leaves behind
    os.kill(web, signal.SIGKILL)
    assert appliance.process.wait(timeout=STOP_TIMEOUT_S) == 1
    assert "web (gunicorn) exited unexpectedly" in appliance.output()
    left = [pid for pid in [*children, *web_processes] if Path(f"/proc/{pid}").exists()]
    assert not [pid for pid in left if not _is_zombie(pid)]


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True  # gone meanwhile


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
