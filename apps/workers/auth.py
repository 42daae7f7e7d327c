"""Who is calling as a worker: `Authorization: Bearer mrw_...`, the credential minted by
`worker_create` for that one worker (I8). `request.auth` is then the `Worker`.

A worker may act only on itself and its own service: routes taking a worker name or a
service check it with `worker_require_self` / `worker_require_service`. A stopped or dead
worker's credential is refused, so destroying a worker also retires its secret, with one
exception: `worker_log_auth` still takes a stopped worker's log lines for
MEMRUN_WORKER_LOG_GRACE_S after it stopped (its last lines leave after its final
heartbeat). A dead worker's credential (declared dead by the control plane: revoked) and
an unknown one are refused at once.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django.utils import timezone
from ninja.security import HttpBearer

from apps.common.credentials import WORKER_TOKEN_PREFIX
from apps.common.errors import DomainError
from apps.common.permissions import Role
from apps.services.auth import access_of
from apps.services.models import Deployment, Service
from apps.workers.models import Worker
from apps.workers.selectors import worker_get_by_credential


class WorkerAuth(HttpBearer):
    """Bearer auth for the worker-facing routes; `request.auth` is the calling Worker."""

    def authenticate(self, request: HttpRequest, token: str) -> Any:
        if not token.startswith(WORKER_TOKEN_PREFIX):
            return None
        worker = worker_get_by_credential(credential=token)
        return worker if worker is not None and self.accepts(worker) else None

    def accepts(self, worker: Worker) -> bool:
        return worker.state not in Worker.FINISHED_STATES


worker_auth = WorkerAuth()


class WorkerLogAuth(WorkerAuth):
    """Bearer auth for a worker's log ingest: a running worker, or one that stopped less
    than MEMRUN_WORKER_LOG_GRACE_S ago. A stopping worker marks itself stopped in its
    final heartbeat and only then sends what its shipper still holds (its summary line,
    the last things its handler printed), within the shipper's close timeout of a few
    seconds. The grace is bounded so that a stopped worker's secret, if it leaked, cannot
    write into the logs for long."""

    def accepts(self, worker: Worker) -> bool:
        if worker.state != Worker.State.STOPPED:
            return super().accepts(worker)
        grace = timedelta(seconds=settings.MEMRUN_WORKER_LOG_GRACE_S)
        stopped_at = worker.state_changed_at
        return stopped_at is not None and timezone.now() - stopped_at <= grace


worker_log_auth = WorkerLogAuth()


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


def package_download_require(*, request: HttpRequest, deployment: Deployment) -> None:
    """403 unless the caller may fetch `deployment`'s package: a user (token or session)
    with the read role on its service, and a worker (its own credential) only the
    packages of its own service."""
    caller = request.auth
    if not isinstance(caller, Worker):
        access_of(request).require(Role.READ, deployment.service.name, what="fetch its packages")
    elif caller.service_id != deployment.service_id:
        raise DomainError(
            f"this credential may not fetch packages of {deployment.service.name}",
            status=403,
            details={"deployment_id": deployment.pk},
        )


def worker_require_service(*, request: HttpRequest, service: Service) -> Worker:
    """The calling worker, if it belongs to `service`; else a 403."""
    worker = request.auth
    if not isinstance(worker, Worker) or worker.service_id != service.pk:
        raise DomainError(
            f"this worker credential is not one of service {service.name!r}'s workers",
            status=403,
        )
    return worker
