"""Deployments: versions count up per service, each taken under the service's row lock;
uploads are stored by content hash in a folder or on S3, and start their rollout on
commit; rollbacks reuse the stored package."""

from __future__ import annotations

import contextlib
import hashlib
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from apps.common.errors import DomainError
from apps.provisioning import tasks
from apps.services.artifacts import artifact_open, artifact_presigned_url, artifact_put
from apps.services.deployments import deployment_rollback, deployment_upload
from apps.services.models import Deployment, Service
from apps.services.selectors import deployment_previous_active
from apps.services.services import deployment_create
from apps.services.uploads import Upload
from tests.api.test_deployments_api import build

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from tests.fixtures.services import S3Settings

pytestmark = pytest.mark.django_db

SHA = "0123456789abcdef" * 4


def deploy(service: Service, **fields: object) -> Deployment:
    values: dict = {"sha256": SHA, "size_bytes": 1234, "artifact_url": "file:///tmp/p.tar.gz"}
    values.update(fields)
    return deployment_create(service=service, **values)


def test_versions_count_up_per_service(service_factory: Callable[..., Service], user) -> None:
    first, second = service_factory(), service_factory()
    assert [deploy(first).version for _ in range(3)] == [1, 2, 3]
    assert deploy(second, created_by=user, message="hi").version == 1
    latest = Deployment.objects.get(service=second)
    assert (latest.status, latest.created_by, latest.message) == ("pending", user, "hi")


def test_a_bad_sha256_is_refused(service_factory: Callable[..., Service]) -> None:
    with pytest.raises(DomainError) as exc:
        deploy(service_factory(), sha256="XYZ")
    assert list(exc.value.details["fields"]) == ["sha256"]


@pytest.fixture(params=["folder", "s3"])
def store(
    request: pytest.FixtureRequest, settings: Any, tmp_path: Path, unique_name: str
) -> Iterator[str]:
    """MEMRUN_ARTIFACTS_URL as a folder in tmp_path, or a fresh prefix on the real S3."""
    settings.MEMRUN_HOME = tmp_path / "home"
    if request.param == "folder":
        settings.MEMRUN_ARTIFACTS_URL = (tmp_path / "artifacts").as_uri()
        yield settings.MEMRUN_ARTIFACTS_URL
        return
    s3_settings: S3Settings = request.getfixturevalue("s3_settings")
    s3: S3Client = request.getfixturevalue("s3_client")
    prefix = f"test-artifacts/{unique_name}"
    settings.MEMRUN_ARTIFACTS_URL = f"s3://{s3_settings.bucket}/{prefix}"
    yield settings.MEMRUN_ARTIFACTS_URL
    listed = s3.list_objects_v2(Bucket=s3_settings.bucket, Prefix=prefix + "/")
    for item in listed.get("Contents", []):
        s3.delete_object(Bucket=s3_settings.bucket, Key=item["Key"])


def test_the_artifact_store_keeps_a_key_once_and_streams_it_back(
    store: str, tmp_path: Path
) -> None:
    first, second = tmp_path / "first.bin", tmp_path / "second.bin"
    first.write_bytes(b"package bytes" * 1000)
    second.write_bytes(b"something else")
    url = artifact_put(path=first, key="deployments/svc/abc.tar.gz")
    assert url == f"{store}/deployments/svc/abc.tar.gz"
    assert artifact_put(path=second, key="deployments/svc/abc.tar.gz") == url
    with contextlib.closing(artifact_open(url=url)) as stream:
        assert stream.read() == first.read_bytes()

    presigned = artifact_presigned_url(url=url, expires_s=60)
    if store.startswith("s3://"):
        assert presigned is not None
        with urllib.request.urlopen(presigned, timeout=10) as response:
            assert response.read() == first.read_bytes()
    else:
        assert presigned is None
        assert not list((tmp_path / "artifacts" / "deployments" / "svc").glob(".*"))


def test_a_missing_artifact_is_404(store: str) -> None:
    with pytest.raises(DomainError) as exc:
        artifact_open(url=f"{store}/deployments/svc/gone.tar.gz")
    assert exc.value.status == 404
    assert "no package at" in exc.value.message


def test_an_unreachable_s3_is_503(settings: Any, tmp_path: Path) -> None:
    settings.MEMRUN_ARTIFACTS_URL = "s3://memrun/unreachable"
    settings.MEMRUN_S3_ENDPOINT_URL = "http://127.0.0.1:1"
    package = tmp_path / "p.tar.gz"
    package.write_bytes(b"x")
    with pytest.raises(DomainError) as exc:
        artifact_put(path=package, key="deployments/svc/x.tar.gz")
    assert exc.value.status == 503
    assert "artifact store is unavailable" in exc.value.message


def received(tmp_path: Path, data: bytes, **fields: Any) -> Upload:
    path = tmp_path / f"upload-{len(list(tmp_path.glob('upload-*')))}"
    path.write_bytes(data)
    values: dict[str, Any] = {"filename": "", "is_source": False, "message": ""}
    values.update(fields)
    return Upload(path=path, size_bytes=len(data), **values)


def test_an_upload_creates_the_service_and_starts_its_rollout(
    store: str,
    service_name: Callable[[], str],
    tmp_path: Path,
    user: Any,
    django_capture_on_commit_callbacks: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = service_name()
    started: list[int] = []

    class ReconcileService:
        @staticmethod
        def delay(service_id: int) -> None:
            started.append(service_id)

    monkeypatch.setattr(tasks, "reconcile_service", ReconcileService)
    data = build(tmp_path, name)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        deployment = deployment_upload(
            service_name=name, upload=received(tmp_path, data, message=" hi "), created_by=user
        )
    assert len(callbacks) == 1
    assert started == [deployment.service_id]
    assert (deployment.version, deployment.message, deployment.created_by) == (1, "hi", user)
    assert deployment.sha256 == hashlib.sha256(data).hexdigest()
    assert deployment.manifest["service"] == name
    with contextlib.closing(artifact_open(url=deployment.artifact_url)) as stream:
        assert stream.read() == data


def test_a_broker_that_is_down_leaves_the_deployment_pending(
    store: str,
    service_name: Callable[[], str],
    tmp_path: Path,
    django_capture_on_commit_callbacks: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rollout then waits for beat's periodic reconcile: never an upload error."""

    class BrokerDown:
        @staticmethod
        def delay(service_id: int) -> None:
            raise ConnectionError("redis is down")

    monkeypatch.setattr(tasks, "reconcile_service", BrokerDown)
    name = service_name()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        deployment = deployment_upload(
            service_name=name, upload=received(tmp_path, build(tmp_path, name))
        )
    assert len(callbacks) == 1
    deployment.refresh_from_db()
    assert deployment.status == Deployment.Status.PENDING


def test_a_rollback_reuses_the_artifact_and_restores_the_config(
    store: str, service_name: Callable[[], str], tmp_path: Path
) -> None:
    name = service_name()
    first = deployment_upload(service_name=name, upload=received(tmp_path, build(tmp_path, name)))
    deployment_upload(
        service_name=name, upload=received(tmp_path, build(tmp_path, name, memory="3Gi"))
    )
    assert Service.objects.get(name=name).config.memory_bytes == 3 * 2**30
    again = deployment_rollback(service=first.service, version=1)
    assert (again.version, again.artifact_url, again.sha256) == (
        3,
        first.artifact_url,
        first.sha256,
    )
    assert again.message == "rollback to v1"
    assert Service.objects.get(name=name).config.memory_bytes == 2**30


def test_the_previous_active_deployment(service_factory: Callable[..., Service]) -> None:
    service = service_factory()
    assert deployment_previous_active(service=service) is None
    versions = [deploy(service) for _ in range(4)]
    for deployment, status in zip(
        versions, ["superseded", "superseded", "active", "failed"], strict=True
    ):
        Deployment.objects.filter(pk=deployment.pk).update(status=status)
    assert deployment_previous_active(service=service).version == 2


def test_a_deployment_without_a_manifest_cannot_be_rolled_back_to(
    service_factory: Callable[..., Service],
) -> None:
    service = service_factory()
    deploy(service)
    with pytest.raises(DomainError) as exc:
        deployment_rollback(service=service, version=1)
    assert exc.value.status == 409
    assert "v1 of" in exc.value.message
