"""Deployments over HTTP: upload a package or a handler .py, history, rollback, download;
the same flows against a folder artifact store and a real S3 one."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from apps.services.models import Deployment, Service
from memrun.packaging import build_package

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from tests.fixtures.services import S3Settings

pytestmark = pytest.mark.django_db

GZIP = "application/gzip"


def handler_source(name: str, *, memory: str = "1Gi", body: str = "return request") -> str:
    return (
        "from memrun import MemoryService\n\n"
        f'svc = MemoryService("{name}", memory="{memory}", disk="2Gi", max_workers=2)\n\n\n'
        "@svc.handler()\n"
        f"def run(ctx, request):\n    {body}\n"
    )


def build(tmp_path: Path, name: str, **source: str) -> bytes:
    """A package for service `name`, built by memrun's own build_package."""
    folder = tmp_path / f"src-{name}-{len(list(tmp_path.glob('src-*')))}"
    folder.mkdir()
    handler = folder / "handler.py"
    handler.write_text(handler_source(name, **source))
    out = folder / "package.tar.gz"
    build_package(handler, out=out)
    return out.read_bytes()


def upload(client: Client, name: str, data: bytes, *, message: str = "") -> Any:
    url = f"/api/v1/services/{name}/deployments"
    return client.post(f"{url}?message={message}" if message else url, data, content_type=GZIP)


def upload_form(client: Client, name: str, filename: str, data: bytes, **fields: str) -> Any:
    return client.post(
        f"/api/v1/services/{name}/deployments",
        {"package": SimpleUploadedFile(filename, data), **fields},
    )


@pytest.fixture(params=["folder", "s3"])
def artifact_store(
    request: pytest.FixtureRequest, settings: Any, tmp_path: Path, unique_name: str
) -> Iterator[Callable[[], set[str]]]:
    """MEMRUN_HOME in tmp_path and the artifacts in a folder or under a fresh S3 prefix;
    yields `stored() -> set of keys`."""
    settings.MEMRUN_HOME = tmp_path / "home"
    if request.param == "folder":
        root = tmp_path / "artifacts"
        settings.MEMRUN_ARTIFACTS_URL = root.as_uri()
        yield lambda: {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
        return
    s3_settings: S3Settings = request.getfixturevalue("s3_settings")
    s3: S3Client = request.getfixturevalue("s3_client")
    prefix = f"test-deployments/{unique_name}"
    settings.MEMRUN_ARTIFACTS_URL = f"s3://{s3_settings.bucket}/{prefix}"

    def stored() -> set[str]:
        listed = s3.list_objects_v2(Bucket=s3_settings.bucket, Prefix=prefix + "/")
        return {item["Key"].removeprefix(prefix + "/") for item in listed.get("Contents", [])}

    yield stored
    for key in stored():
        s3.delete_object(Bucket=s3_settings.bucket, Key=f"{prefix}/{key}")


def test_first_deploy_creates_the_service_and_redeploys_count_up(
    api_client: Client,
    service_name: Callable[[], str],
    artifact_store: Callable[[], set[str]],
    tmp_path: Path,
) -> None:
    name = service_name()
    data = build(tmp_path, name)
    sha = hashlib.sha256(data).hexdigest()

    first = upload(api_client, name, data, message="first")
    assert first.status_code == 201, first.json()
    body = first.json()
    assert (body["service"], body["version"], body["status"]) == (name, 1, "pending")
    assert (body["sha256"], body["size_bytes"], body["message"]) == (sha, len(data), "first")
    assert (body["entry"], body["created_by"], body["workers_ready"]) == ("handler.py", "alice", 0)
    assert body["config"]["memory_bytes"] == 2**30
    config = Service.objects.get(name=name).config
    assert config is not None
    assert (config.memory_bytes, config.disk_bytes, config.max_workers) == (2**30, 2**31, 2)

    again = upload_form(api_client, name, "package.tar.gz", data, message="again")
    assert again.status_code == 201, again.json()
    assert (again.json()["version"], again.json()["sha256"]) == (2, sha)
    assert artifact_store() == {f"deployments/{name}/{sha}.tar.gz"}


def test_a_redeploy_takes_the_new_config_and_keeps_scaling_in_bounds(
    api_client: Client,
    service_name: Callable[[], str],
    artifact_store: Callable[[], set[str]],
    tmp_path: Path,
) -> None:
    name = service_name()
    assert upload(api_client, name, build(tmp_path, name)).status_code == 201
    Service.objects.filter(name=name).update(desired_workers=2)
    response = upload(api_client, name, build(tmp_path, name, memory="3Gi"))
    assert response.status_code == 201, response.json()
    service = Service.objects.get(name=name)
    assert service.config is not None and service.config.memory_bytes == 3 * 2**30
    assert service.desired_workers == 2
    assert len(artifact_store()) == 2


def test_a_single_handler_file_is_packaged_by_the_server(
    api_client: Client,
    service_name: Callable[[], str],
    artifact_store: Callable[[], set[str]],
) -> None:
    name = service_name()
    source = handler_source(name).encode()
    response = upload_form(api_client, name, "lookup.py", source, message="from the form")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["version"], body["entry"], body["message"]) == (1, "lookup.py", "from the form")
    assert artifact_store() == {f"deployments/{name}/{body['sha256']}.tar.gz"}

    raw = api_client.post(
        f"/api/v1/services/{name}/deployments", source, content_type="text/x-python"
    )
    assert raw.status_code == 201, raw.json()
    assert (raw.json()["version"], raw.json()["entry"]) == (2, "handler.py")


def test_download_streams_the_exact_bytes_with_their_sha256(
    api_client: Client,
    service_name: Callable[[], str],
    artifact_store: Callable[[], set[str]],
    tmp_path: Path,
) -> None:
    name = service_name()
    data = build(tmp_path, name)
    created = upload(api_client, name, data).json()
    response = api_client.get(created["package_url"])
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == data
    assert response["X-Memrun-Sha256"] == hashlib.sha256(data).hexdigest()
    assert response["Content-Length"] == str(len(data))
    assert response["Content-Type"] == GZIP
    assert f"{name}-v1.tar.gz" in response["Content-Disposition"]


def test_rollback_is_a_new_version_with_the_old_package(
    api_client: Client,
    service_name: Callable[[], str],
    artifact_store: Callable[[], set[str]],
    tmp_path: Path,
) -> None:
    name = service_name()
    v1 = upload(api_client, name, build(tmp_path, name, memory="1Gi")).json()
    v2 = upload(api_client, name, build(tmp_path, name, memory="3Gi")).json()
    assert v1["sha256"] != v2["sha256"]

    response = api_client.post(
        f"/api/v1/services/{name}/rollback", {"version": 1}, content_type="application/json"
    )
    assert response.status_code == 201, response.json()
    v3 = response.json()
    assert (v3["version"], v3["sha256"], v3["message"]) == (3, v1["sha256"], "rollback to v1")
    assert Service.objects.get(name=name).config.memory_bytes == 2**30
    assert (
        api_client.get(v3["package_url"]).getvalue() == api_client.get(v1["package_url"]).getvalue()
    )
    assert len(artifact_store()) == 2


def test_rollback_defaults_to_the_previously_active_version(
    api_client: Client, service_name: Callable[[], str], artifact_store: Any, tmp_path: Path
) -> None:
    name = service_name()
    url = f"/api/v1/services/{name}/rollback"
    shas = [
        upload(api_client, name, build(tmp_path, name, body=f"return {n}")).json()["sha256"]
        for n in range(3)
    ]
    nothing = api_client.post(url, {}, content_type="application/json")
    assert nothing.status_code == 409
    assert "no earlier active deployment" in nothing.json()["message"]

    # What provisioning records as rollouts finish: v1 then v2 went live, v3 failed.
    deployments = Deployment.objects.filter(service__name=name)
    deployments.filter(version=1).update(status="superseded")
    deployments.filter(version=2).update(status="active")
    deployments.filter(version=3).update(status="failed", failure_reason="import error")
    response = api_client.post(url, {"message": "back"}, content_type="application/json")
    assert response.status_code == 201, response.json()
    assert (response.json()["version"], response.json()["sha256"]) == (4, shas[0])
    assert response.json()["message"] == "back"


def test_rollback_to_an_unknown_version_is_404(
    api_client: Client, service_name: Callable[[], str], artifact_store: Any, tmp_path: Path
) -> None:
    name = service_name()
    upload(api_client, name, build(tmp_path, name))
    response = api_client.post(
        f"/api/v1/services/{name}/rollback", {"version": 7}, content_type="application/json"
    )
    assert response.status_code == 404
    assert "has no version 7" in response.json()["message"]


@pytest.mark.parametrize("artifact_store", ["folder"], indirect=True)
def test_history_is_newest_first_in_a_fixed_number_of_queries(
    api_client: Client,
    service_name: Callable[[], str],
    artifact_store: Any,
    tmp_path: Path,
    django_assert_max_num_queries: Any,
) -> None:
    name = service_name()
    data = build(tmp_path, name)
    for n in range(4):
        upload(api_client, name, data, message=f"m{n}")
    Deployment.objects.filter(service__name=name, version=1).update(
        status="failed", failure_reason="worker did not start"
    )
    # token lookup, service, deployments with their users and ready workers
    with django_assert_max_num_queries(3):
        response = api_client.get(f"/api/v1/services/{name}/deployments")
    history = response.json()
    assert [d["version"] for d in history] == [4, 3, 2, 1]
    assert [d["message"] for d in history] == ["m3", "m2", "m1", "m0"]
    assert history[-1]["failure_reason"] == "worker did not start"
    assert {d["created_by"] for d in history} == {"alice"}

    limited = api_client.get(f"/api/v1/services/{name}/deployments?limit=2").json()
    assert [d["version"] for d in limited] == [4, 3]
    one = api_client.get(f"/api/v1/services/{name}/deployments/2").json()
    assert one == history[2]
    missing = api_client.get(f"/api/v1/services/{name}/deployments/9")
    assert missing.status_code == 404


@pytest.mark.parametrize("artifact_store", ["folder"], indirect=True)
def test_an_unknown_deployment_or_service_is_404(
    api_client: Client, service_name: Callable[[], str], artifact_store: Any
) -> None:
    assert api_client.get("/api/v1/deployments/999999/package").status_code == 404
    response = api_client.get(f"/api/v1/services/{service_name()}/deployments")
    assert response.status_code == 404
    assert "no service named" in response.json()["message"]


@pytest.mark.parametrize("artifact_store", ["folder"], indirect=True)
def test_a_browser_session_uploads_with_its_csrf_token(
    user: Any, service_name: Callable[[], str], artifact_store: Any
) -> None:
    name = service_name()
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    form = {"package": SimpleUploadedFile("handler.py", handler_source(name).encode())}
    url = f"/api/v1/services/{name}/deployments"
    refused = client.post(url, form)
    assert refused.status_code == 403
    client.get("/admin/login/")
    form["package"].seek(0)
    accepted = client.post(url, form, headers={"X-CSRFToken": client.cookies["csrftoken"].value})
    assert accepted.status_code == 201, accepted.json()
    assert accepted.json()["created_by"] == "alice"


@pytest.mark.parametrize("artifact_store", ["folder"], indirect=True)
def test_a_forged_browser_upload_is_refused_before_its_body_is_read(
    user: Any, service_name: Callable[[], str], artifact_store: Any, settings: Any
) -> None:
    # A file past the cap answers 413 the moment it is streamed to disk: a forged
    # request (no CSRF token) must get 403 instead, proving nothing was written.
    settings.MEMRUN_PACKAGE_MAX_BYTES = 1024
    name = service_name()
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    client.get("/admin/login/")
    url = f"/api/v1/services/{name}/deployments"
    oversize = {"package": SimpleUploadedFile("handler.py", b"#" * 2048)}
    forged = client.post(url, oversize)
    assert forged.status_code == 403, forged.content
    assert "X-CSRFToken" in forged.json()["message"]
    # The token as a form field sits in the body, so it cannot pass the check either.
    oversize["package"].seek(0)
    in_form = client.post(
        url, {**oversize, "csrfmiddlewaretoken": client.cookies["csrftoken"].value}
    )
    assert in_form.status_code == 403
    uploads_dir = Path(settings.MEMRUN_HOME) / "uploads"
    assert not uploads_dir.exists() or not any(uploads_dir.iterdir())
    oversize["package"].seek(0)
    genuine = client.post(url, oversize, headers={"X-CSRFToken": client.cookies["csrftoken"].value})
    assert genuine.status_code == 413


@pytest.mark.parametrize("artifact_store", ["folder"], indirect=True)
def test_a_worker_fetches_only_its_own_services_packages(
    api_client: Client,
    service_name: Callable[[], str],
    artifact_store: Any,
    tmp_path: Path,
) -> None:
    from apps.workers.services import worker_create, worker_mark_stopped

    ours, theirs = service_name(), service_name()
    data = build(tmp_path, ours)
    own = upload(api_client, ours, data).json()
    other = upload(api_client, theirs, build(tmp_path, theirs)).json()
    worker, credential = worker_create(service=Service.objects.get(name=ours), name=f"{ours}-w1")
    as_worker = Client(headers={"Authorization": f"Bearer {credential}"})

    fetched = as_worker.get(own["package_url"])
    assert fetched.status_code == 200
    assert b"".join(fetched.streaming_content) == data
    refused = as_worker.get(other["package_url"])
    assert refused.status_code == 403
    assert theirs in refused.json()["message"]
    assert as_worker.get(f"/api/v1/services/{ours}/deployments").status_code == 401

    worker_mark_stopped(worker=worker, reason="scaled down")
    assert as_worker.get(own["package_url"]).status_code == 401
