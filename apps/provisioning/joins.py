"""Join tokens: how a remote worker, booted from cloud-init user-data that anyone on its
server can read, gets its own credentials without any long-lived secret in that
user-data (I8).

`join_token_issue` (apps/provisioning/jointokens.py) makes a single-use token bound to
one worker, expiring after MEMRUN_JOIN_TOKEN_TTL_S; `worker_join` exchanges it, with the
server id the worker read from its metadata service, for the worker's environment:
exactly what `worker_spec_build` puts in a spec's env, with a freshly issued worker
credential. The server id is confirmed by the worker's provisioner (`server_verify`), so
a token copied off one server is no use elsewhere. Refused joins are counted per caller;
past MEMRUN_JOIN_MAX_FAILURES within MEMRUN_JOIN_FAILURE_WINDOW_S every join from it is
a 429.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.common.credentials import secret_hash
from apps.common.errors import DomainError
from apps.provisioning.models import JoinFailure, JoinToken
from apps.provisioning.provisioners import provisioner_for
from apps.provisioning.specs import worker_spec_build
from apps.workers.models import Worker
from apps.workers.services import worker_credential_renew


@dataclass(frozen=True)
class Joined:
    worker: str
    env: dict[str, str]


def worker_join(*, token: str, server_id: int, client: str, now: datetime | None = None) -> Joined:
    """Exchange `token` for its worker's environment. DomainError 403 for an unknown,
    used or expired token, a finished or deleted worker, or a server id its provisioner
    does not confirm (the token then stays usable: a wrong claim must not let a reader of
    the user-data lock the real server out); 503 when the provisioner cannot answer now;
    429 once `client` was refused too often. A refusal issues nothing."""
    now = now or timezone.now()
    _failures_check(client=client, now=now)
    try:
        return _exchange(token=token, server_id=server_id, now=now)
    except DomainError as refusal:
        if refusal.status != 403:
            raise
        # Refusals are few (each one costs the caller a slot): forgetting the ones past
        # the window here keeps the table small without a beat task.
        window = timedelta(seconds=settings.MEMRUN_JOIN_FAILURE_WINDOW_S)
        JoinFailure.objects.filter(at__lt=now - window).delete()
        JoinFailure.objects.create(client=client, at=now)
        raise


def _failures_check(*, client: str, now: datetime) -> None:
    window = timedelta(seconds=settings.MEMRUN_JOIN_FAILURE_WINDOW_S)
    failures = JoinFailure.objects.filter(client=client, at__gt=now - window).count()
    if failures >= settings.MEMRUN_JOIN_MAX_FAILURES:
        raise DomainError(
            f"too many refused joins from {client}: {failures} within "
            f"{window.total_seconds():.0f} s; try again later",
            status=429,
            details={"retry_after_s": int(window.total_seconds())},
        )


def _exchange(*, token: str, server_id: int, now: datetime) -> Joined:
    with transaction.atomic():
        row = JoinToken.objects.select_for_update().filter(token_hash=secret_hash(token)).first()
        if row is None:
            raise DomainError("unknown join token", status=403)
        worker = (
            Worker.objects.select_related("service", "deployment")
            .filter(name=row.worker_name)
            .first()
        )
        if worker is None:
            raise DomainError(
                f"worker {row.worker_name} no longer exists: it can no longer join",
                status=403,
                details={"worker": row.worker_name},
            )
        if row.used_at is not None:
            raise DomainError(
                f"the join token of worker {worker.name} was already used (at "
                f"{row.used_at:%Y-%m-%d %H:%M:%S} UTC, by server {row.server_id}); a join "
                "token is single-use: reconcile replaces a worker that never joined",
                status=403,
                details={"worker": worker.name},
            )
        if row.expires_at <= now:
            raise DomainError(
                f"the join token of worker {worker.name} expired at "
                f"{row.expires_at:%Y-%m-%d %H:%M:%S} UTC (MEMRUN_JOIN_TOKEN_TTL_S="
                f"{settings.MEMRUN_JOIN_TOKEN_TTL_S:.0f}); reconcile replaces a worker "
                "that never joined",
                status=403,
                details={"worker": worker.name},
            )
        if worker.state in Worker.FINISHED_STATES or worker.deployment is None:
            raise DomainError(
                f"worker {worker.name} is {worker.state}: it can no longer join",
                status=403,
                details={"worker": worker.name},
            )
        backend = provisioner_for(worker.provider)
        try:
            verified = backend.server_verify(server_id=server_id, worker_name=worker.name)
        except Exception as exc:
            # Whatever the cloud answered (a 5xx, a rate limit, a budget spent): the claim
            # is unconfirmed, not refused; the token stays usable and the worker retries.
            raise DomainError(
                f"cannot confirm server {server_id} with {worker.provider} now: {exc}; "
                "try again shortly",
                status=503,
                details={"worker": worker.name, "server_id": server_id},
            ) from exc
        if not verified:
            raise DomainError(
                f"server {server_id} is not the {worker.provider} server of worker {worker.name}",
                status=403,
                details={"worker": worker.name, "server_id": server_id},
            )
        row.used_at = now
        row.server_id = str(server_id)
        row.save(update_fields=["used_at", "server_id"])
        credential = worker_credential_renew(worker=worker)
        spec = worker_spec_build(
            worker=worker,
            credential=credential,
            service=worker.service,
            deployment=worker.deployment,
        )
    return Joined(worker=worker.name, env=dict(spec.env))
