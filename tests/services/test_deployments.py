"""Deployments: versions count up per service, each taken under the service's row lock."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from apps.services.errors import DomainError
from apps.services.models import Deployment, Service
from apps.services.services import deployment_create

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
