"""The admin lists every model with its columns and filters, edits a service's fleet
through `service_update`, and shows its settings (its live deployment's) read-only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from apps.services.models import DeadLetterReplay, Deployment, Service
from apps.services.tokens import apitoken_create
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
    admin_client_: Client,
    service_factory: Callable[..., Service],
    deploy_settings: Callable[..., Deployment],
    user: User,
    url: str,
) -> None:
    service = service_factory()
    deployment = deploy_settings(service, memory="32Gi")
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
    if "service/" in url:
        assert b"32Gi" in response.content


def test_editing_a_service_changes_its_fleet_and_shows_its_settings(
    admin_client_: Client,
    service_factory: Callable[..., Service],
    deploy_settings: Callable[..., Deployment],
) -> None:
    service = service_factory(partitions=4)
    url = f"/admin/services/service/{service.pk}/change/"
    assert b"none yet: deploy the service" in admin_client_.get(url).content
    deploy_settings(service, status="active", memory="8Gi", max_workers=2)
    page = admin_client_.get(url)
    assert b"memory=8Gi" in page.content and b"max_workers=2" in page.content
    form = {"desired_workers": 2, "provider": "local", "server_type": "cx22", "location": ""}
    response = admin_client_.post(url, form)
    assert response.status_code == 302, response.content
    service.refresh_from_db()
    assert (service.desired_workers, service.server_type) == (2, "cx22")

    too_many = admin_client_.post(url, form | {"desired_workers": 5})
    assert too_many.status_code == 200
    assert b"max_workers (2)" in too_many.content
    service.refresh_from_db()
    assert service.desired_workers == 2


def test_a_service_added_in_the_admin_is_made_by_service_create(
    admin_client_: Client, service_name: Callable[[], str], kafka_admin: Any
) -> None:
    name = service_name()
    form = {
        "name": name,
        "partitions": 3,
        "desired_workers": 1,
        "provider": "local",
        "server_type": "",
        "location": "",
    }
    assert admin_client_.get("/admin/services/service/add/").status_code == 200
    added = admin_client_.post("/admin/services/service/add/", form)
    assert added.status_code == 302, added.content.decode()[-2000:]
    service = Service.objects.get(name=name)
    assert (service.partitions, service.desired_workers, service.config) == (3, 1, None)
    # Its topics exist with its partition count (raises after a deadline otherwise).
    wait_for_topic_leaders(kafka_admin, service.request_topic, 3)

    again = admin_client_.post("/admin/services/service/add/", form)
    assert again.status_code == 200 and "already exists" in again.content.decode()
    bad = admin_client_.post(
        "/admin/services/service/add/", form | {"name": service_name(), "provider": "aws"}
    )
    assert bad.status_code == 200 and "not one of the available choices" in bad.content.decode()
    assert Service.objects.count() == 1
