"""A service's settings are its live deployment's (I10): a change of setting is a new
deployment of the same package, recorded and rollable like a deploy, or a refusal that
says how; the fleet (desired workers, where) stays on the service."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from apps.common.errors import DomainError
from apps.services.deployments import (
    deployment_configure,
    deployment_rollback,
    deployment_upload,
    service_patch,
)
from apps.services.models import Deployment, Service
from apps.services.selectors import service_live_config_get
from apps.services.uploads import Upload
from memrun.wire.config import service_config_from_dict
from tests.api.test_deployments_api import build

pytestmark = pytest.mark.django_db
GiB = 2**30


@pytest.fixture
def deployed(
    settings: Any, tmp_path: Path, service_name: Callable[[], str], user: Any
) -> Iterator[Deployment]:
    """v1 of a new service, uploaded for real (memory 1Gi, disk 2Gi, max_workers 2)."""
    settings.MEMRUN_HOME = tmp_path / "home"
    settings.MEMRUN_ARTIFACTS_URL = (tmp_path / "artifacts").as_uri()
    name = service_name()
    path = tmp_path / "upload"
    path.write_bytes(build(tmp_path, name))
    upload = Upload(
        path=path, size_bytes=path.stat().st_size, filename="", is_source=False, message=""
    )
    yield deployment_upload(service_name=name, upload=upload, created_by=user)


def test_a_setting_change_is_a_new_deployment_of_the_same_package(
    deployed: Deployment, user: Any, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks() as callbacks:
        service = service_patch(
            service=deployed.service,
            data={"concurrency": 4, "memory": "3Gi"},
            created_by=user,
        )
    # Its rollout starts once committed, like a deploy's.
    assert any("ServiceFleetChanged" in repr(callback) for callback in callbacks)
    v2 = service.live_deployment
    assert v2 is not None and v2.version == 2
    assert (v2.sha256, v2.artifact_url) == (deployed.sha256, deployed.artifact_url)
    assert v2.message == "settings of v1 changed: memory 1Gi -> 3Gi; concurrency 16 -> 4"
    assert v2.created_by == user
    assert v2.config is not None
    assert (v2.config.concurrency, v2.config.memory_bytes) == (4, 3 * GiB)
    assert v2.config.disk_bytes == 2 * GiB  # the rest is v1's
    assert service_config_from_dict(v2.manifest["config"]) == v2.config
    assert {k: v for k, v in v2.manifest.items() if k != "config"} == {
        k: v for k, v in deployed.manifest.items() if k != "config"
    }
    assert service_live_config_get(name=service.name) == v2.config
    assert deployed.config is not None and deployed.config.concurrency == 16


def test_an_unchanged_setting_makes_no_deployment(deployed: Deployment) -> None:
    assert deployment_configure(service=deployed.service, changes={"memory": "1Gi"}) is None
    assert deployed.service.deployments.count() == 1


def test_a_settings_deployment_rolls_back_like_any(deployed: Deployment) -> None:
    service = service_patch(service=deployed.service, data={"timeout_seconds": 5})
    Deployment.objects.filter(pk=deployed.pk).update(status="superseded")
    Deployment.objects.filter(service=service, version=2).update(status="active")
    again = deployment_rollback(service=service)
    assert (again.version, again.message) == (3, "rollback to v1")
    assert service.config is not None and service.config.timeout_seconds == 300


def test_the_sticky_key_can_be_set_and_cleared(deployed: Deployment) -> None:
    service = service_patch(service=deployed.service, data={"sticky_key": "user_id : ds"})
    assert service.config is not None and service.config.sticky_key == "user_id:ds"
    service = service_patch(service=service, data={"sticky_key": None})
    assert service.config is not None and service.config.sticky_key is None
    assert service.deployments.count() == 3


def test_lowering_max_workers_brings_the_desired_count_within(deployed: Deployment) -> None:
    service = service_patch(service=deployed.service, data={"desired_workers": 2})
    assert service.desired_workers == 2
    service = service_patch(service=service, data={"max_workers": 1})
    service.refresh_from_db()
    assert service.desired_workers == 1


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"max_workers": 65}, "max_workers"),  # past the 64 partitions
        ({"min_workers": 3}, "min_workers"),  # past max_workers 2
        ({"memory": "lots"}, "memory"),
        ({"sticky_key": "a::b"}, "sticky_key"),
        ({"concurrency": 0}, "concurrency"),
        ({"desired_workers": 3}, "desired_workers"),
        ({"concurrency": 2, "desired_workers": 3}, "desired_workers"),
    ],
)
def test_a_bad_change_is_422_and_changes_nothing(
    deployed: Deployment, data: dict[str, Any], field: str
) -> None:
    with pytest.raises(DomainError) as exc:
        service_patch(service=deployed.service, data=data)
    assert exc.value.status == 422
    assert field in exc.value.details["fields"]
    assert deployed.service.deployments.count() == 1
    deployed.service.refresh_from_db()
    assert deployed.service.desired_workers == 1


def test_settings_before_the_first_deploy_are_refused_with_how(
    service_factory: Callable[..., Service],
) -> None:
    service = service_factory()
    with pytest.raises(DomainError) as exc:
        service_patch(service=service, data={"concurrency": 4})
    assert exc.value.status == 409
    assert "Deploy first" in exc.value.message and "memrun deploy" in exc.value.message
    assert service_patch(service=service, data={"desired_workers": 3}).desired_workers == 3


def test_a_deploy_merges_its_overrides_into_the_stored_manifest(
    deployed: Deployment, tmp_path: Path
) -> None:
    name = deployed.service.name
    path = tmp_path / "upload-2"
    path.write_bytes(build(tmp_path, name))
    upload = Upload(
        path=path, size_bytes=path.stat().st_size, filename="", is_source=False, message=""
    )
    v2 = deployment_upload(service_name=name, upload=upload, overrides={"concurrency": 3})
    assert v2.config is not None and v2.config.concurrency == 3
    assert v2.manifest["config"]["concurrency"] == 3
    with pytest.raises(DomainError) as exc:
        deployment_upload(service_name=name, upload=upload, overrides={"concurrency": "x"})
    assert list(exc.value.details["fields"]) == ["concurrency"]
