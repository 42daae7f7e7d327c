"""The web pages through Django's test client, against the real database, Kafka and Redis:
login on every page, CSRF on every form, staff-only changes, the deploy form (accepted
and refused), rollback, scale, diff, tokens, logs and request lookup, and the number of
queries each page makes with many services, workers and log lines."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone

from apps.common.credentials import secret_hash
from apps.services.models import ApiToken, Deployment, Service
from apps.workers.models import Worker, WorkerLogLine
from tests.fixtures.services import wait_for_topic_leaders
from tests.worker_daemon.harness import wait_for

pytestmark = pytest.mark.django_db


def handler_source(name: str, *, body: str = "return request") -> str:
    return (
        "from memrun import MemoryService\n\n"
        f'svc = MemoryService("{name}", memory="1Gi", disk="2Gi", max_workers=2)\n\n\n'
        "@svc.handler()\n"
        f"def run(ctx, request):\n    {body}\n"
    )


@pytest.fixture
def home(settings: Any, tmp_path: Path) -> Path:
    settings.MEMRUN_HOME = tmp_path / "home"
    settings.MEMRUN_ARTIFACTS_URL = (tmp_path / "artifacts").as_uri()
    return tmp_path


@pytest.fixture
def staff(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def deploy_form(client: Client, service: str, **fields: Any) -> Any:
    return client.post("/deploy/", {"service": service, **fields})


PAGES = [
    "/dashboard/",
    "/dashboard/live/",
    "/deploy/",
    "/deployments/1/",
    "/deployments/1/live/",
    "/services/x/",
    "/services/x/diff/?a=1&b=2",
    "/services/x/logs/",
    "/workers/w/logs/",
    "/requests/",
    "/tokens/",
    "/secrets/",
    "/services/x/dead-letters/",
    "/services/x/dead-letters/0-1/",
]


@pytest.mark.parametrize("path", PAGES)
def test_logged_out_every_page_redirects_to_login(client: Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=")


def test_root_goes_to_the_dashboard_and_login_comes_back_there(client: Client, user: User) -> None:
    assert client.get("/")["Location"] == "/dashboard/"
    user.set_password("a-long-password-1")
    user.save()
    page = client.get("/login/")
    assert page.status_code == 200 and b'name="csrfmiddlewaretoken"' in page.content
    answer = client.post("/login/", {"username": "alice", "password": "a-long-password-1"})
    assert answer["Location"] == "/dashboard/"
    assert client.get("/dashboard/").status_code == 200
    wrong = Client().post("/login/", {"username": "alice", "password": "wrong"})
    assert wrong.status_code == 200 and b"didn't match" in wrong.content


def test_the_empty_dashboard_shows_the_deploy_line(staff: Client) -> None:
    page = staff.get("/dashboard/").content.decode()
    assert "memrun deploy handler.py --name my-service" in page
    assert 'href="/deploy/"' in page


def test_a_post_without_csrf_is_refused_and_changes_nothing(user: User) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    refused = client.post("/tokens/", {"name": "sneaky"})
    assert refused.status_code == 403
    assert b"CSRF" in refused.content and b"nothing changed" in refused.content
    refused = client.post("/deploy/", {"service": "x", "source": handler_source("x")})
    assert refused.status_code == 403
    assert not ApiToken.objects.filter(name="sneaky").exists()
    assert not Service.objects.exists()


def test_the_deploy_form_checks_csrf_in_a_header_before_reading_the_upload(
    user: User, home: Path, service_name: Callable[[], str]
) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    token = re.search(
        r'name="csrfmiddlewaretoken" value="([^"]+)"', client.get("/deploy/").content.decode()
    )
    assert token is not None
    name = service_name()
    form = {"csrfmiddlewaretoken": token.group(1), "service": name, "source": handler_source(name)}
    # A token in the body alone would need the body read (the upload written) to find it.
    body_only = client.post("/deploy/", form)
    assert body_only.status_code == 403 and b"X-CSRFToken" in body_only.content
    assert not (home / "home" / "uploads").exists() or not any(
        (home / "home" / "uploads").iterdir()
    )
    sent = client.post("/deploy/", form, headers={"X-CSRFToken": token.group(1)})
    assert sent.status_code == 302, sent.content.decode()[-500:]
    assert Service.objects.filter(name=name).exists()


def test_a_user_without_staff_rights_cannot_deploy(
    viewer: User, home: Path, service_name: Callable[[], str]
) -> None:
    client = Client()
    client.force_login(viewer)
    name = service_name()
    form = client.get("/deploy/").content.decode()
    assert "holds the deploy role on no service" in form
    refused = deploy_form(client, name, source=handler_source(name))
    assert refused.status_code == 403
    assert "needs the deploy role" in refused.content.decode()
    assert not Service.objects.filter(name=name).exists()


def test_the_api_refuses_a_deploy_by_a_user_without_staff_rights(
    viewer: User, home: Path, service_name: Callable[[], str]
) -> None:
    from apps.services.tokens import apitoken_create

    _, secret = apitoken_create(user=viewer, name="ci")
    name = service_name()
    response = Client(headers={"Authorization": f"Bearer {secret}"}).post(
        f"/api/v1/services/{name}/deployments",
        handler_source(name),
        content_type="text/x-python",
    )
    assert response.status_code == 403, response.content
    assert "needs the deploy role" in response.json()["message"]


def test_deploy_by_pasting_code_creates_the_service_and_shows_the_rollout(
    staff: Client, home: Path, service_name: Callable[[], str]
) -> None:
    name = service_name()
    answer = deploy_form(
        staff,
        name,
        source=handler_source("whatever-the-code-says"),
        message="first",
        memory="3Gi",
        max_workers="3",
    )
    assert answer.status_code == 302, answer.content.decode()
    deployment = Deployment.objects.get(service__name=name)
    assert answer["Location"] == f"/deployments/{deployment.pk}/"
    assert (deployment.version, deployment.message, deployment.created_by.username) == (
        1,
        "first",
        "alice",
    )
    config = deployment.service.config
    assert config is not None and (config.memory_bytes, config.max_workers) == (3 * 2**30, 3)
    rollout = staff.get(answer["Location"]).content.decode()
    assert (
        f"stored as version 1 ({deployment.size_bytes} B" in rollout
        or "stored as version 1" in rollout
    )
    assert deployment.sha256[:12] in rollout
    assert "validated: handler.py" in rollout
    assert 'hx-trigger="every 1s"' in rollout


def test_the_rollout_shows_its_workers_dependency_installs_in_order(
    staff: Client, django_assert_max_num_queries: Any
) -> None:
    from apps.workers.services import LogLineData, worker_create, worker_log_ingest

    name = "deps"
    service = Service.objects.create(name=name, desired_workers=2, partitions=4)
    deployment = Deployment.objects.create(
        service=service,
        version=1,
        sha256="0" * 64,
        size_bytes=1,
        artifact_url="file:///x",
        status="rolling",
    )
    first, _ = worker_create(service=service, name=f"{name}-a", deployment=deployment)
    second, _ = worker_create(service=service, name=f"{name}-b", deployment=deployment)
    start = timezone.now()

    def line(at_s: float, event: str, **fields: Any) -> LogLineData:
        return LogLineData(
            ts=start + timedelta(seconds=at_s),
            level="info",
            event=event,
            request_id="",
            message="",
            fields=fields,
        )

    deps = ["humanize==4.12.3", "tomli-w>=1.0", "attrs", "idna"]
    worker_log_ingest(
        worker=first,
        lines=[
            line(0, "package.dependencies", dependencies=deps, venv_key="k", reused=False),
            line(1, "worker.consuming"),
            line(3.2, "package.dependencies_installed", venv_key="k", seconds=3.24),
        ],
    )
    worker_log_ingest(
        worker=second,
        lines=[line(4, "package.dependencies", dependencies=deps, venv_key="k", reused=True)],
    )
    with django_assert_max_num_queries(9):
        live = staff.get(f"/deployments/{deployment.pk}/live/")
    page = live.content.decode()
    listed = "4 dependencies (humanize==4.12.3, tomli-w&gt;=1.0, attrs, ...)"
    installing = f"worker {name}-a: installing {listed}</div>"
    installed = f"worker {name}-a: dependencies installed in 3.2 s</div>"
    reused = f"worker {name}-b: {listed} reused from an existing venv</div>"
    assert installing in page and installed in page and reused in page, page
    assert page.index(installing) < page.index(installed) < page.index(reused)
    assert page.index(reused) < page.index("workers starting")
    assert "worker.consuming" not in page

    worker_log_ingest(
        worker=second,
        lines=[
            line(
                5,
                "package.dependencies_failed",
                venv_key="k",
                seconds=0.5,
                error="installing idna failed (exit 1):\nno such version",
            )
        ],
    )
    page = staff.get(f"/deployments/{deployment.pk}/").content.decode()
    assert f"worker {name}-b: installing dependencies failed in 0.5 s: installing idna " in page


def test_deploy_by_file_and_a_refused_package_says_why_and_changes_nothing(
    staff: Client, home: Path, service_name: Callable[[], str]
) -> None:
    name = service_name()
    good = SimpleUploadedFile("handler.py", handler_source(name).encode())
    assert deploy_form(staff, name, package=good).status_code == 302
    broken = SimpleUploadedFile("handler.py", (handler_source(name) + "def (:\n").encode())
    refused = deploy_form(staff, name, package=broken, message="broken")
    assert refused.status_code == 422
    text = refused.content.decode()
    assert "Nothing was deployed." in text and "package refused" in text
    assert 'name="message" value="broken"' in text
    assert list(
        Deployment.objects.filter(service__name=name).values_list("version", flat=True)
    ) == [1]
    nothing = deploy_form(staff, name)
    assert nothing.status_code == 400 and "nothing to deploy" in nothing.content.decode()


def test_overrides_on_a_built_package_are_merged_into_its_settings(
    staff: Client, home: Path, service_name: Callable[[], str], tmp_path: Path
) -> None:
    """The package is stored as built; the deployment keeps its settings with the
    overrides merged (I10), and its workers run those."""
    from memrun.packaging import build_package

    name = service_name()
    handler = tmp_path / "handler.py"
    handler.write_text(handler_source(name))
    info = build_package(handler, out=tmp_path / "p.tar.gz")
    package = SimpleUploadedFile("p.tar.gz", (tmp_path / "p.tar.gz").read_bytes())
    answer = deploy_form(staff, name, package=package, memory="8Gi")
    assert answer.status_code == 302, answer.content.decode()
    deployment = Deployment.objects.get(service__name=name)
    assert deployment.sha256 == info.sha256
    assert deployment.config is not None and deployment.config.memory_bytes == 8 * 2**30
    assert deployment.config.max_workers == 2  # the package's own


def test_history_diff_rollback_and_scale(
    staff: Client, home: Path, service_name: Callable[[], str]
) -> None:
    name = service_name()
    deploy_form(staff, name, source=handler_source(name), message="one")
    deploy_form(staff, name, source=handler_source(name, body="return {'v': 2}"), message="two")
    page = staff.get(f"/services/{name}/").content.decode()
    assert "one" in page and "two" in page and "Roll back to v1" in page
    diff = staff.get(f"/services/{name}/diff/?a=1&b=2").content.decode()
    assert "return request" in diff and "return {&#x27;v&#x27;: 2}" in diff
    assert 'class="code del"' in diff and 'class="code ins"' in diff
    assert staff.get(f"/services/{name}/diff/?a=1&b=9").status_code == 404
    assert staff.get(f"/services/{name}/diff/?a=x").status_code == 422

    back = staff.post(f"/services/{name}/rollback/", {"version": 1})
    assert back.status_code == 302
    latest = Deployment.objects.filter(service__name=name).order_by("-version").first()
    assert latest is not None
    assert (latest.version, latest.message, latest.created_by.username) == (
        3,
        "rollback to v1",
        "alice",
    )

    assert staff.post(f"/services/{name}/scale/", {"workers": 2}).status_code == 302
    assert Service.objects.get(name=name).desired_workers == 2
    page = staff.get(f"/services/{name}/").content.decode()
    assert "alice · scaled from 1 to 2 worker(s)" in page
    too_many = staff.post(f"/services/{name}/scale/", {"workers": 9})
    assert too_many.status_code == 422 and "max_workers (2)" in too_many.content.decode()
    assert staff.get(f"/services/{name}/scale/").status_code == 405


def test_the_autoscaling_form_sets_the_policy_and_the_page_lists_decisions(
    staff: Client, viewer: User, home: Path, service_name: Callable[[], str], settings: Any
) -> None:
    from apps.provisioning.autoscaling import autoscale_service

    name = service_name()
    deploy_form(staff, name, source=handler_source(name))
    page = staff.get(f"/services/{name}/").content.decode()
    assert f'hx-get="/services/{name}/autoscale/"' in page  # loaded apart, with its own reads
    part = staff.get(f"/services/{name}/autoscale/").content.decode()
    assert "Autoscaling" in part and "off: the count above is kept" in part
    policy = {
        "enabled": "on",
        "min_workers": 1,
        "max_workers": 2,
        "lag_per_worker": 40,
        "scale_up_window_s": 15,
        "scale_down_window_s": 120,
        "scale_up_cooldown_s": 30,
        "scale_down_cooldown_s": 60,
    }
    assert staff.post(f"/services/{name}/autoscale/set/", policy).status_code == 302
    part = staff.get(f"/services/{name}/autoscale/").content.decode()
    assert "on: 1..2 worker(s)" in part and "stays above 40 for 15 s" in part
    page = staff.get(f"/services/{name}/").content.decode()
    assert "alice · autoscaling on: 1..2 worker(s), 40 lag per worker" in page

    queued = staff.post(f"/services/{name}/autoscale/set/", {**policy, "max_queue_seconds": 20})
    assert queued.status_code == 302
    part = staff.get(f"/services/{name}/autoscale/").content.decode()
    assert "stays above 40 or a request waits more than 20 s for 15 s" in part
    assert 'name="max_queue_seconds" min="0" value="20"' in part
    zero = staff.post(f"/services/{name}/autoscale/set/", {**policy, "max_queue_seconds": 0})
    assert zero.status_code == 422 and "max_queue_seconds" in zero.content.decode()
    # Left blank, time in queue is no trigger.
    assert staff.post(f"/services/{name}/autoscale/set/", policy).status_code == 302
    part = staff.get(f"/services/{name}/autoscale/").content.decode()
    assert "waits more than" not in part and 'value="" placeholder="off"' in part

    too_many = staff.post(f"/services/{name}/autoscale/set/", {**policy, "max_workers": 9})
    assert too_many.status_code == 422 and "max_workers" in too_many.content.decode()
    bad = staff.post(f"/services/{name}/autoscale/set/", {**policy, "lag_per_worker": "x"})
    assert bad.status_code == 422 and "lag_per_worker" in bad.content.decode()
    client = Client()
    client.force_login(viewer)
    assert client.post(f"/services/{name}/autoscale/set/", policy).status_code == 403

    # A decision, with Kafka out of reach: a hold that says why.
    settings.KAFKA_BOOTSTRAP_SERVERS = "127.0.0.1:1"
    settings.MEMRUN_KAFKA_TIMEOUT_S = 1.0
    service = Service.objects.get(name=name)
    autoscale_service(service_id=service.pk)
    part = staff.get(f"/services/{name}/autoscale/").content.decode()
    assert "hold · lag_unknown" in part and "lag could not be measured; holding" in part

    off = {k: v for k, v in policy.items() if k != "enabled"}
    assert staff.post(f"/services/{name}/autoscale/set/", off).status_code == 302
    part = staff.get(f"/services/{name}/autoscale/").content.decode()
    assert "off: the count above is kept" in part and "lag_unknown" in part


def test_a_user_without_staff_rights_cannot_roll_back_or_scale(
    staff: Client, viewer: User, home: Path, service_name: Callable[[], str]
) -> None:
    name = service_name()
    deploy_form(staff, name, source=handler_source(name))
    client = Client()
    client.force_login(viewer)
    assert client.get(f"/services/{name}/").status_code == 200
    assert client.post(f"/services/{name}/rollback/", {"version": 1}).status_code == 403
    assert client.post(f"/services/{name}/scale/", {"workers": 2}).status_code == 403
    assert Deployment.objects.filter(service__name=name).count() == 1


def test_tokens_are_shown_once_listed_and_revoked(staff: Client, user: User) -> None:
    created = staff.post("/tokens/", {"name": "laptop"})
    secret = re.search(r'id="token-secret">([^<]+)<', created.content.decode())
    assert created.status_code == 200 and secret is not None
    token = ApiToken.objects.get(user=user, name="laptop")
    assert token.token_hash == secret_hash(secret.group(1))
    listing = staff.get("/tokens/").content.decode()
    assert "laptop" in listing and secret.group(1) not in listing
    duplicate = staff.post("/tokens/", {"name": "laptop"})
    assert (
        duplicate.status_code == 409
        and "already have an active token" in duplicate.content.decode()
    )
    assert staff.post(f"/tokens/{token.pk}/revoke/").status_code == 302
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert staff.post(f"/tokens/{token.pk}/revoke/").status_code == 404


def test_missing_things_give_pages_that_say_what_to_do(staff: Client) -> None:
    missing = staff.get("/services/nope/")
    assert missing.status_code == 404 and "no service named" in missing.content.decode()
    unknown = staff.get("/no/such/page/")
    assert unknown.status_code == 404 and b"Start from the" in unknown.content
    lookup = staff.get("/requests/?id=not-a-request")
    assert lookup.status_code == 200 and "no request" in lookup.content.decode()


def make_fleet(*, services: int, workers: int, lines: int) -> tuple[Service, Worker]:
    """Rows made directly with bulk_create (no Kafka topics): only the pages read them."""
    now = timezone.now()
    made = Service.objects.bulk_create(
        Service(name=f"bulk-{i:03d}", desired_workers=10, partitions=64) for i in range(services)
    )
    deployments = Deployment.objects.bulk_create(
        Deployment(
            service=s,
            version=1,
            sha256="0" * 64,
            size_bytes=1,
            artifact_url="file:///x",
            status="active",
        )
        for s in made
    )
    # A heartbeat's stats as apps/workers/stats.py reads them.
    stats = {
        "in_flight": 1,
        "concurrency": 16,
        "lag": 2,
        "partitions": [3, 4, 5, 9],
        "requests": {"total": 11, "errors": 1, "last_minute": {"requests": 4, "errors": 0}},
        "cache": {
            "memory": {"hits": 5, "used_bytes": 100, "capacity_bytes": 1000},
            "disk": {"hits": 2},
            "remote": {"hits": 1},
            "largest": [{"tier": "memory", "name": "model", "size_bytes": 100}],
        },
    }
    fleet = Worker.objects.bulk_create(
        Worker(
            service=made[i % services],
            deployment=deployments[i % services],
            name=f"bulk-w{i:04d}",
            state="ready",
            stats=stats,
            credential_hash=f"{i:064x}",
            last_heartbeat_at=now,
        )
        for i in range(workers)
    )
    first = fleet[0]
    WorkerLogLine.objects.bulk_create(
        (
            WorkerLogLine(
                worker=first,
                service_id=first.service_id,
                ts=now - timedelta(milliseconds=lines - n),
                received_at=now,
                event="request" if n % 10 == 0 else "log",
                request_id=f"r{n}",
                message=f"line {n}",
                fields={"key": "k", "duration_ms": 1.5, "status": "ok"},
            )
            for n in range(lines)
        ),
        batch_size=5000,
    )
    return made[0], first


def test_every_page_reads_in_a_bounded_number_of_queries(
    staff: Client, django_assert_max_num_queries: Any
) -> None:
    service, worker = make_fleet(services=50, workers=500, lines=100_000)
    pages = [
        "/dashboard/",
        "/dashboard/live/",
        f"/services/{service.name}/",
        f"/services/{service.name}/logs/",
        f"/services/{service.name}/logs/?text=line+99&level=info",
        f"/workers/{worker.name}/logs/",
        f"/workers/{worker.name}/logs/?request_id=r500",
        f"/workers/{worker.name}/logs/?download=1",
        "/requests/?id=r500",
        f"/services/{service.name}/autoscale/",
        "/tokens/",
        "/deploy/",
    ]
    for path in pages:
        # Session and user (2), then the page's own reads.
        with django_assert_max_num_queries(9):
            response = staff.get(path)
        assert response.status_code == 200, (path, response.content[:300])
    dashboard = staff.get("/dashboard/").content.decode()
    assert dashboard.count('class="card"') == 50
    # 10 workers per service, each reporting 11 requests, 1 of them failed.
    assert '<dd class="requests">110</dd>' in dashboard
    assert '<dd class="per-minute">40</dd>' in dashboard
    service_page = staff.get(f"/services/{service.name}/").content.decode()
    assert '<td class="partitions">3-5, 9</td>' in service_page
    assert "<code>model</code>" in service_page


def test_logs_filter_page_follow_and_download(staff: Client) -> None:
    service, worker = make_fleet(services=1, workers=1, lines=500)
    page = staff.get(f"/workers/{worker.name}/logs/").content.decode()
    assert page.count('class="logline') == 200 and "line 499" in page and "line 299" not in page
    older = re.search(r'href="\?until=([^"]+)">← older', page)
    assert older is not None
    earlier = staff.get(f"/workers/{worker.name}/logs/?until={older.group(1)}").content.decode()
    assert "line 299" in earlier and "line 300" not in earlier

    found = staff.get(f"/services/{service.name}/logs/?request_id=r120").content.decode()
    assert found.count('class="logline') == 1 and "line 120" in found

    follow = re.search(r'hx-get="\?since=([^"]+)"', page)
    assert follow is not None
    quiet = staff.get(f"/workers/{worker.name}/logs/?since={follow.group(1)}").content.decode()
    assert "logline" not in quiet and 'id="follow"' in quiet

    download = staff.get(f"/workers/{worker.name}/logs/?text=line+4&download=1")
    assert download["Content-Disposition"] == f'attachment; filename="{worker.name}-logs.txt"'
    lines = download.content.decode().strip().splitlines()
    assert lines and [line for line in lines if "line 4" not in line] == []
    assert staff.get(f"/workers/{worker.name}/logs/?level=loud").status_code == 422


def test_dead_letters_page_lists_and_refuses_a_replay_without_staff_rights(
    staff: Client, viewer: User, service_factory: Callable[..., Service], kafka_admin: Any
) -> None:
    service = service_factory()
    # A DLQ topic just made has no partition leaders for a moment: its page says so (503)
    # until the broker answers for every partition.
    wait_for_topic_leaders(kafka_admin, service.dlq_topic, service.partitions)
    url = f"/services/{service.name}/dead-letters/"
    page = wait_for(
        lambda: (answer := staff.get(url)).status_code == 200 and answer,
        timeout_s=30,
        what="the dead letters page to read the new DLQ topic",
    )
    assert "No dead letters" in page.content.decode()
    assert staff.get(f"/services/{service.name}/dead-letters/0-0/").status_code == 404
    empty = staff.post(f"/services/{service.name}/dead-letters/replay/")
    assert empty.status_code == 422 and "tick the dead letters" in empty.content.decode()
    client = Client()
    client.force_login(viewer)
    refused = client.post(f"/services/{service.name}/dead-letters/replay/", {"ids": ["0-0"]})
    assert refused.status_code == 403
    assert "needs the deploy role" in refused.content.decode()
