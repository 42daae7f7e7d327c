"""Writes for workers."""

from __future__ import annotations

from django.db import transaction

from apps.services.credentials import WORKER_TOKEN_PREFIX, secret_hash, secret_new
from apps.services.errors import full_clean_or_raise
from apps.services.models import Deployment, Provider, Service
from apps.workers.models import Worker


def worker_create(
    *,
    service: Service,
    name: str,
    provider: str = Provider.LOCAL,
    deployment: Deployment | None = None,
    provider_ref: str = "",
    address: str = "",
) -> tuple[Worker, str]:
    """Register a worker about to be provisioned; returns it with its credential, a
    secret scoped to this worker alone, which is not stored (only its sha256 is)."""
    credential = secret_new(prefix=WORKER_TOKEN_PREFIX)
    worker = Worker(
        service=service,
        deployment=deployment,
        name=name,
        provider=provider,
        provider_ref=provider_ref,
        address=address,
        credential_hash=secret_hash(credential),
    )
    with transaction.atomic():
        full_clean_or_raise(worker, what="worker")
        worker.save()
    return worker, credential
