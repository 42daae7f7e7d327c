"""The web UI in a real browser: Debian's chromium driven by Playwright, against the live
control plane (pytest-django's live server) with real Kafka, Redis, PostgreSQL and S3,
and local worker processes run by the local supervisor, as `memrun up` runs them.
Reconcile runs on worker events (Celery eager) and from a thread standing in for beat.

Every page visited is saved as a screenshot under var/screenshots/ (not committed)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = REPO / "var" / "screenshots"
README_HANDLER = REPO / "examples" / "warm_lookup" / "handler.py"
ROLLOUT_TIMEOUT_MS = 180_000
PASSWORD = "browser-test-pass-1"
GRACE = ("--stop-grace-s", "5")

playwright_sync = pytest.importorskip("playwright.sync_api")


@pytest.fixture
def appliance(live_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The local supervisor as `memrun up` runs it, Celery tasks run where they are
    queued, and a thread that reconciles every service each second (beat's job)."""
    from django.db import connection

    from apps.provisioning.reconcile import reconcile_service
    from apps.services.models import Service
    from memrun_site.celery import app

    # Playwright's sync API keeps an event loop on this thread; the test's own ORM calls
    # are still plain synchronous code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    eager_before = app.conf.task_always_eager
    app.conf.task_always_eager = True
    log = (live_home / "supervisor.log").open("wb")
    supervisor = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "apps.provisioning.local_supervisor",
            "--home",
            str(live_home),
            *GRACE,
        ],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    stop = threading.Event()

    def beat() -> None:
        try:
            while not stop.wait(1.0):
                for service_id in Service.objects.values_list("pk", flat=True):
                    reconcile_service(service_id=service_id)
        finally:
            connection.close()

    beater = threading.Thread(target=beat, name="beat", daemon=True)
    beater.start()
    yield live_home
    stop.set()
    beater.join(30)
    supervisor.send_signal(signal.SIGTERM)
    supervisor.wait(60)
    log.close()
    app.conf.task_always_eager = eager_before


@pytest.fixture
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("chromium is not installed (bash scripts/install installs it)")
    with playwright_sync.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield launched
        launched.close()


class Shots:
    """Screenshots of the pages, named in the order they were taken."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.png"):
            old.unlink()
        self.count = 0

    def __call__(self, page: Any, name: str) -> None:
        self.count += 1
        page.screenshot(path=str(self.folder / f"{self.count:02d}-{name}.png"), full_page=True)


def login(page: Any, base: str, username: str, password: str = PASSWORD) -> None:
    page.goto(f"{base}/dashboard/")
    assert "/login/" in page.url
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


def wait_for_done(page: Any) -> str:
    """Wait until the rollout printed its last line; its text."""
    page.wait_for_selector("#rollout .end", timeout=ROLLOUT_TIMEOUT_MS)
    return str(page.inner_text("#rollout"))


def invoke(base: str, token: str, service: str, payload: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{base}/api/v1/services/{service}/invoke?wait=120",
        data=json.dumps(payload).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=150) as response:
        return dict(json.loads(response.read()))


def reload_until(page: Any, check: Callable[[], bool], *, what: str, tries: int = 90) -> None:
    """Reload until `check()` holds (each reload waits for the page), at most `tries`."""
    for _ in range(tries):
        if check():
            return
        page.wait_for_timeout(1000)
        page.reload()
    raise AssertionError(f"the page never showed {what}")


def test_deploy_invoke_watch_logs_diff_and_roll_back_in_a_browser(
    appliance: Path,
    browser: Any,
    live_server: Any,
    service_name: Callable[[], str],
    s3_client: Any,
    s3_settings: Any,
    unique_name: str,
    s3_secret: str,
) -> None:
    from django.contrib.auth.models import User

    from examples.warm_lookup.make_dataset import make_csv

    base = live_server.url
    shots = Shots(SCREENSHOTS / "staff")
    User.objects.create_user(username="ops", password=PASSWORD, is_staff=True)
    name = service_name()
    key = f"tests/{unique_name}/sales.csv"
    s3_client.put_object(Bucket=s3_settings.bucket, Key=key, Body=make_csv(1000))

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.on("dialog", lambda dialog: dialog.accept())
    page = context.new_page()
    login(page, base, "ops")
    assert page.url == f"{base}/dashboard/"
    assert "memrun deploy handler.py --name my-service" in page.inner_text("main")
    shots(page, "dashboard-empty")

    # A refused package says why, inline, and nothing changes.
    page.goto(f"{base}/deploy/")
    page.fill("input[name=service]", name)
    page.fill("textarea[name=source]", "from memrun import MemoryService\ndef (:\n")
    page.click("#deploy-form button[type=submit]")
    assert "Nothing was deployed." in page.inner_text("#deploy-error")
    assert "package refused" in page.inner_text("#deploy-error")
    shots(page, "deploy-refused")

    # v1: the README example, picked as a file, with a message.
    page.fill("textarea[name=source]", "")
    page.set_input_files("input[name=package]", str(README_HANDLER))
    page.fill("input[name=message]", "the README example")
    shots(page, "deploy-form")
    page.click("#deploy-form button[type=submit]")
    page.wait_for_selector("#rollout")
    assert "stored as version 1" in page.inner_text("#rollout")
    text = wait_for_done(page)
    assert "ready: 1/1 worker(s) on v1" in text and "done" in text, text
    assert "validated: handler.py" in text
    shots(page, "rollout-v1-done")

    # A token from the tokens page, shown once, calls the API.
    page.goto(f"{base}/tokens/")
    page.fill("input[name=name]", "browser")
    page.click("form.row button[type=submit]")
    token = page.inner_text("#token-secret").strip()
    assert token.startswith("mr_")
    shots(page, "tokens")
    payload = {
        "user_id": 7,
        "dataset_id": "sales",
        "dataset_url": f"s3://{s3_settings.bucket}/{key}",
    }
    answer = invoke(base, token, name, payload)
    assert answer["ok"] and answer["result"]["rows"] == 1000, answer
    request_id = answer["request_id"]

    # The dashboard counts it (from the worker's heartbeats).
    page.goto(f"{base}/dashboard/")
    card = f'article[data-service="{name}"]'
    reload_until(
        page,
        lambda: page.inner_text(f"{card} .requests").strip() not in ("", "0"),
        what="the request counted",
    )
    assert page.inner_text(f"{card} .requests").strip() == "1"
    shots(page, "dashboard")

    # The service page lists the worker; its log page finds the request by id.
    page.goto(f"{base}/services/{name}/")
    assert "the README example" in page.inner_text("main")
    reload_until(
        page, lambda: request_id in page.inner_text("main"), what="the request in recent requests"
    )
    shots(page, "service")
    page.click("table >> text=logs")
    assert "/workers/" in page.url
    page.fill("input[name=request_id]", request_id)
    page.click("#log-filter button[type=submit]")
    reload_until(
        page,
        lambda: page.locator(f'.logline[data-request="{request_id}"]').count() > 0,
        what="the request's log line",
    )
    lines = page.locator(".logline")
    assert lines.count() == page.locator(f'.logline[data-request="{request_id}"]').count()
    shots(page, "worker-logs-filtered")
    page.goto(f"{base}/services/{name}/logs/")
    page.wait_for_selector(".logline")
    shots(page, "service-logs")
    # Follow mode: a new request's line appears without a reload.
    followed = invoke(base, token, name, payload)["request_id"]
    page.wait_for_selector(f'.logline[data-request="{followed}"]', timeout=60_000)

    # The request lookup page.
    page.goto(f"{base}/requests/?id={request_id}")
    assert "ok" in page.inner_text("main") and "request" in page.inner_text(".log")
    shots(page, "request")

    # v2 by pasting changed code, then the diff of v1 and v2.
    source = README_HANDLER.read_text().replace(
        '"column": column,', '"column": column,\n        "version": 2,'
    )
    assert '"version": 2' in source
    page.goto(f"{base}/deploy/?service={name}")
    assert page.input_value("input[name=service]") == name
    page.fill("textarea[name=source]", source)
    page.fill("input[name=message]", "report the version")
    page.click("#deploy-form button[type=submit]")
    text = wait_for_done(page)
    assert "ready: 1/1 worker(s) on v2" in text and "done" in text, text
    assert invoke(base, token, name, payload)["result"]["version"] == 2

    page.goto(f"{base}/services/{name}/")
    page.click("text=Diff the handler")
    assert re.search(r"/diff/\?a=1&b=2$", page.url)
    inserted = page.locator("td.ins").all_inner_texts()
    assert any('"version": 2,' in line for line in inserted), inserted
    shots(page, "diff")

    # Roll back to v1 from the history (the confirmation is accepted).
    page.goto(f"{base}/services/{name}/")
    page.click("text=Roll back to v1")
    text = wait_for_done(page)
    assert "on v3" in text and "done" in text, text
    assert "version" not in invoke(base, token, name, payload)["result"]
    page.goto(f"{base}/services/{name}/")
    assert "rollback to v1" in page.inner_text("#v3")
    shots(page, "service-after-rollback")

    # A request that raises lands in dead letters; fixed, its replay succeeds.
    failing = invoke(base, token, name, {**payload, "column": "nope"})
    assert failing["ok"] is False and "KeyError" in str(failing["error"]), failing
    page.goto(f"{base}/services/{name}/dead-letters/")
    row = f'tr[data-request="{failing["request_id"]}"]'
    reload_until(page, lambda: page.locator(row).count() == 1, what="the dead letter")
    assert "KeyError" in page.inner_text(row)
    shots(page, "dead-letters")
    page.click(f"{row} a >> nth=0")
    assert "column 'nope' not in dataset" in page.inner_text("main")
    shots(page, "dead-letter")
    fixed = re.sub(r"raise KeyError\(.*\)", 'column = "amount"', README_HANDLER.read_text())
    assert fixed != README_HANDLER.read_text()
    page.goto(f"{base}/deploy/?service={name}")
    page.fill("textarea[name=source]", fixed)
    page.fill("input[name=message]", "fall back to the amount column")
    page.click("#deploy-form button[type=submit]")
    assert "done" in wait_for_done(page)
    page.goto(f"{base}/services/{name}/dead-letters/")
    page.check(f"{row} input[name=ids]")
    page.click("#replay-form button[type=submit]")
    notice = page.inner_text(".notice")
    replayed = re.search(r"as request\(s\) (\S+)", notice)
    assert replayed is not None, notice
    assert "ops" in page.inner_text("main")  # the replay is recorded with who did it
    page.goto(f"{base}/requests/?id={replayed.group(1)}")
    reload_until(page, lambda: page.locator(".tag.ok").count() > 0, what="the replay's success")
    assert '"rows": 1000' in page.inner_text(".result")
    shots(page, "request-replayed")
    page.goto(f"{base}/dashboard/")
    assert page.inner_text(f"{card} .dead-letters").strip() == "1"

    # A phone's width: the dashboard has no horizontal scroll.
    phone = browser.new_context(viewport={"width": 375, "height": 740})
    phone.add_cookies(context.cookies())
    small = phone.new_page()
    for path, shot in (("/dashboard/", "phone-dashboard"), (f"/services/{name}/", "phone-service")):
        small.goto(f"{base}{path}")
        shots(small, shot)
    small.goto(f"{base}/dashboard/")
    assert small.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    phone.close()

    # Logged out, pages send the browser to the login page; 404 says what to do.
    stranger = browser.new_context().new_page()
    stranger.goto(f"{base}/services/{name}/")
    assert "/login/?next=" in stranger.url
    shots(stranger, "login")
    page.goto(f"{base}/services/no-such-service/")
    assert "no service named" in page.inner_text("main")
    shots(page, "not-found")
    context.close()


def test_a_user_without_staff_rights_is_refused_by_the_deploy_form(
    browser: Any, live_server: Any, settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.contrib.auth.models import User

    from apps.services.models import Service

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    settings.MEMRUN_HOME = tmp_path
    User.objects.create_user(username="viewer", password=PASSWORD)
    page = browser.new_page()
    login(page, live_server.url, "viewer")
    page.goto(f"{live_server.url}/deploy/")
    page.fill("input[name=service]", "not-allowed")
    page.fill("textarea[name=source]", README_HANDLER.read_text())
    page.click("#deploy-form button[type=submit]")
    assert "needs the deploy role" in page.inner_text("#deploy-error")
    Shots(SCREENSHOTS / "viewer")(page, "deploy-refused-non-staff")
    assert not Service.objects.filter(name="not-allowed").exists()
    page.close()


def test_secrets_are_typed_into_password_inputs_and_never_shown_again(
    browser: Any, live_server: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cryptography.fernet import Fernet
    from django.contrib.auth.models import User

    from apps.services.models import Secret
    from apps.services.selectors import secret_env

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    settings.MEMRUN_SECRETS_KEYS = [Fernet.generate_key().decode()]
    value = "typed-in-a-browser-only"
    base = live_server.url
    shots = Shots(SCREENSHOTS / "secrets")
    User.objects.create_user(username="keeper", password=PASSWORD, is_staff=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("dialog", lambda dialog: dialog.accept())
    login(page, base, "keeper")
    page.click("nav >> text=Secrets")
    assert page.url == f"{base}/secrets/"
    assert page.get_attribute("#secret-form input[name=value] >> nth=0", "type") == "password"

    # A reserved key is refused by name; the keys typed stay, the values do not.
    page.fill("#secret-form input[name=name]", "api-key")
    page.fill("#secret-form input[name=key] >> nth=0", "API_KEY")
    page.fill("#secret-form input[name=value] >> nth=0", value)
    page.fill("#secret-form input[name=key] >> nth=1", "REDIS_URL")
    page.fill("#secret-form input[name=value] >> nth=1", value)
    page.click("#secret-form button[type=submit]")
    assert "REDIS_URL is set by memrun" in page.inner_text("#secret-error")
    assert page.input_value("#secret-form input[name=key] >> nth=0") == "API_KEY"
    assert page.input_value("#secret-form input[name=value] >> nth=0") == ""
    assert value not in page.content()
    shots(page, "secret-refused")

    page.fill("#secret-form input[name=key] >> nth=1", "")
    page.fill("#secret-form input[name=value] >> nth=0", value)
    page.click("#secret-form button[type=submit]")
    assert "secret api-key set: API_KEY" in page.inner_text("main")
    row = page.inner_text('#secrets tr[data-secret="api-key"]')
    assert "API_KEY" in row and Secret.objects.get(name="api-key").fingerprint in row
    assert value not in page.content()
    assert secret_env(names=("api-key",)) == {"API_KEY": value}
    shots(page, "secrets")

    with page.expect_navigation():
        page.click('#secrets tr[data-secret="api-key"] button.danger')
    assert "secret api-key deleted" in page.inner_text("main")
    assert not Secret.objects.exists()
