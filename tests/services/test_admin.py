"""The admin lists every model with its columns and filters, and edits services through
`service_update` (sizes written as "32Gi", partitions read-only)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from apps.services.models import DeadLetterReplay, Service
from apps.services.services import apitoken_create, deployment_create
from apps.workers.services import worker_create
from tests.fixtures.services import wait_for_topic_leaders

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client_(db: None) -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", "", "x"))
    return client


@pytest.mark.parametrize(
    "url",
    [
        "/admin/services/service/",
        "/admin/services/deployment/",
        "/admin/services/apitoken/?revoked_at__isnull=True",
        "/admin/workers/worker/?state__exact=provisioning",
        "/admin/services/deadletterreplay/?q=replayed",
    ],
)
def test_changelists_render(
    admin_client_: Client, service_factory: Callable[..., Service], user: User, url: str
) -> None:
    service = service_factory(memory="32Gi")
    deployment = deployment_create(
        service=service, sha256="c" * 64, size_bytes=2**20, artifact_url="file:///tmp/c"
    )
    worker_create(service=service, deployment=deployment, name=f"{service.name}-0")
    apitoken_create(user=user, name="laptop")
    DeadLetterReplay.objects.create(
        service=service,
        dead_letter_id="0-1",
        original_request_id="failed",
        request_id="replayed",
        attempt=2,
        actor="laptop",
        at=timezone.now(),
    )
    response = admin_client_.get(url)
    assert response.status_code == 200
    assert service.name.encode() in response.content or b"laptop" in response.content


def test_editing_a_service_goes_through_the_service_layer(
    admin_client_: Client, service_factory: Callable[..., Service]
) -> None:
    service = service_factory(memory="8Gi", partitions=4)
    url = f"/admin/services/service/{service.pk}/change/"
    page = admin_client_.get(url)
    assert b'value="8Gi"' in page.content
    form = {
        "memory": "16Gi",
        "disk": "100Gi",
        "min_workers": 1,
        "desired_workers": 2,
        "max_workers": 2,
        "concurrency": 8,
        "timeout_seconds": 60,
        "sticky_key": "user_id",
        "provider": "local",
        "server_type": "",
        "location": "",
    }
    response = admin_client_.post(url, form)
    assert response.status_code == 302, response.content
    service.refresh_from_db()
    assert (service.memory, service.disk, service.max_workers) == ("16Gi", "100Gi", 2)

    too_many = admin_client_.post(url, form | {"max_workers": 5, "desired_workers": 5})
    assert too_many.status_code == 200
    assert b"cannot exceed partitions" in too_many.content
    bad_size = admin_client_.post(url, form | {"memory": "lots"})
    assert b"is not a size" in bad_size.content


def test_a_service_added_in_the_admin_is_made_by_service_create(
    admin_client_: Client, service_name: Callable[[], str], kafka_admin: Any
) -> None:
    name = service_name()
    form = {
        "name": name,
        "memory": "2Gi",
        "disk": "20Gi",
        "min_workers": 1,
        "max_workers": 2,
        "concurrency": 4,
        "timeout_seconds": 30,
        "sticky_key": "user",
        "partitions": 3,
        "provider": "local",
        "server_type": "",
        "location": "",
    }
    assert admin_client_.get("/admin/services/service/add/").status_code == 200
    added = admin_client_.post("/admin/services/service/add/", form)
    assert added.status_code == 302, added.content.decode()[-2000:]
    service = Service.objects.get(name=name)
    assert (service.memory, service.partitions, service.desired_workers) == ("2Gi", 3, 1)
    # Its topics exist with its partition count (raises after a deadline otherwise).
    wait_for_topic_leaders(kafka_admin, service.request_topic, 3)

    again = admin_client_.post("/admin/services/service/add/", form)
    assert again.status_code == 200 and "already exists" in again.content.decode()
    bad = admin_client_.post(
        "/admin/services/service/add/", form | {"name": service_name(), "max_workers": 9}
    )
    assert bad.status_code == 200 and "cannot exceed partitions" in bad.content.decode()
    assert Service.objects.count() == 1
