"""Issuing join tokens: the single-use secret in a remote worker's user-data (exchanged
by apps/provisioning/joins.py). Apart from the exchange, which asks the provisioners,
so that a provisioner can render user-data without importing them back."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from apps.common.credentials import JOIN_TOKEN_PREFIX, secret_hash, secret_new
from apps.provisioning.models import JoinToken


def join_token_issue(*, worker_name: str, now: datetime | None = None) -> str:
    """A new join token for the worker `worker_name` (returned; only its sha256 is kept)."""
    now = now or timezone.now()
    token = secret_new(prefix=JOIN_TOKEN_PREFIX)
    JoinToken.objects.create(
        worker_name=worker_name,
        token_hash=secret_hash(token),
        created_at=now,
        expires_at=now + timedelta(seconds=settings.MEMRUN_JOIN_TOKEN_TTL_S),
    )
    return token
