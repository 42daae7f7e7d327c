"""Who is calling as a worker: `Authorization: Bearer mrw_...`, the credential minted by
`worker_create` for that one worker (I8). `request.auth` is then the `Worker`.

A worker may act only on itself and its own service: routes taking a worker name or a
service check it with `worker_require_self` / `worker_require_service`. A stopped or dead
worker's credential is refused, so destroying a worker also retires its secret.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from ninja.security import HttpBearer

from apps.common.credentials import WORKER_TOKEN_PREFIX
from apps.common.errors import DomainError
from apps.services.models import Service
from apps.workers.models import Worker
from apps.workers.selectors import worker_get_by_credential


class WorkerAuth(HttpBearer):
    """Bearer auth for the worker-facing routes; `request.auth` is the calling Worker."""

    def authenticate(self, request: HttpRequest, token: str) -> Any:
        if not token.startswith(WORKER_TOKEN_PREFIX):
            return None
        worker = worker_get_by_credential(credential=token)
        if worker is None or worker.state in Worker.FINISHED_STATES:
            return None
        return worker


worker_auth = WorkerAuth()


def worker_require_self(*, request: HttpRequest, name: str) -> Worker:
    """The calling worker, if it is the worker `name`; else a 403."""
    worker = request.auth
    if not isinstance(worker, Worker) or worker.name != name:
        raise DomainError(
            f"this credential belongs to another worker; a worker may act only on itself "
            f"(asked for {name!r})",
            status=403,
        )
    return worker


def worker_require_service(*, request: HttpRequest, service: Service) -> Worker:
    """The calling worker, if it belongs to `service`; else a 403."""
    worker = request.auth
    if not isinstance(worker, Worker) or worker.service_id != service.pk:
        raise DomainError(
            f"this worker credential is not one of service {service.name!r}'s workers",
            status=403,
        )
    return worker
