"""The database itself refuses what the services refuse, for writes that skip them."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.db import IntegrityError, transaction

from apps.services.models import Deployment, Service
from apps.services.services import deployment_create

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "change",
    [{"partitions": 0}, {"desired_workers": -1}, {"provider": "aws"}],
)
def test_service_check_constraints(service_factory: Callable[..., Service], change: dict) -> None:
    service = service_factory(partitions=4)
    with pytest.raises(IntegrityError), transaction.atomic():
        Service.objects.filter(pk=service.pk).update(**change)


def test_deployment_versions_are_unique_per_service(
    service_factory: Callable[..., Service],
) -> None:
    service = service_factory()
    deployment = deployment_create(
        service=service, sha256="a" * 64, size_bytes=10, artifact_url="file:///tmp/x"
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        Deployment.objects.create(
            service=service,
            version=deployment.version,
            sha256="b" * 64,
            size_bytes=10,
            artifact_url="file:///tmp/y",
        )
