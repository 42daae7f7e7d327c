"""Writes and lookups for who may call the API: API tokens (made, revoked, and resolved
from a secret through a per-process cache that every web process drops on a change), the
grants of users without staff status, and the admin user and CLI token `memrun init`
makes."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from apps.common.credentials import (
    API_TOKEN_PREFIX,
    secret_hash,
    secret_new,
    secret_shown_part,
)
from apps.common.errors import DomainError, full_clean_or_raise
from apps.common.permissions import Access, Grant
from apps.common.ttlcache import TtlCache
from apps.services import selectors
from apps.services.broker import listener, publish_invalidate
from apps.services.models import ApiToken, ApiTokenGrant, Service, UserGrant

# A token's last use is recorded at most this often, so that authenticating stays a
# single indexed read on almost every request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def apitoken_create(
    *,
    user: AbstractBaseUser,
    name: str,
    grants: list[Grant] | None = None,
    by: Access | None = None,
) -> tuple[ApiToken, str]:
    """A new token for `user` holding `grants` (by default a copy of the user's own);
    returns it with its secret, which is not stored anywhere. 403 when a grant is beyond
    what `user` holds, or beyond what the caller `by` holds (a narrower token cannot mint
    a wider one); 404 for a grant on a service that does not exist."""
    owner = selectors.user_access(user=user)
    wanted = sorted(set(owner.grants if grants is None else grants))
    if not wanted:
        raise DomainError(
            "a token needs at least one grant (a role, on a service or on all)",
            status=422,
            details={"fields": {"grants": ["at least one"]}},
        )
    for holder in (owner, by):
        for grant in wanted:
            if holder is not None and not holder.allows(grant.role, grant.service):
                raise DomainError(
                    f"a token cannot hold more than {holder.who}: {grant} is beyond it",
                    status=403,
                    details={"role": str(grant.role), "service": grant.service},
                )
    services = {
        service.name: service
        for service in Service.objects.filter(name__in={g.service for g in wanted if g.service})
    }
    for grant in wanted:
        if grant.service is not None and grant.service not in services:
            raise DomainError(
                f"no service named {grant.service!r} to grant {grant.role} on",
                status=404,
                details={"name": grant.service},
            )
    secret = secret_new(prefix=API_TOKEN_PREFIX)
    token = ApiToken(
        user=user,
        name=name.strip(),
        prefix=secret_shown_part(secret),
        token_hash=secret_hash(secret),
    )
    with transaction.atomic():
        if ApiToken.objects.filter(user=user, name=token.name, revoked_at__isnull=True).exists():
            raise DomainError(
                f"you already have an active token named {token.name!r}; revoke it first "
                "or pick another name",
                status=409,
                details={"fields": {"name": ["an active token has this name"]}},
            )
        full_clean_or_raise(token, what="token")
        token.save()
        ApiTokenGrant.objects.bulk_create(
            ApiTokenGrant(token=token, service=services.get(g.service or ""), role=g.role)
            for g in wanted
        )
    return token, secret


def apitoken_revoke(*, token: ApiToken) -> ApiToken:
    """Revoke `token` from now on; revoking twice keeps the first time. Every web
    process forgets it at once (a message), or at worst within MEMRUN_LOOKUP_CACHE_TTL_S."""
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        _tokens.discard(token.token_hash)
        _invalidate_on_commit(f"token:{token.token_hash}")
    return token


def usergrant_add(*, user: AbstractBaseUser, role: str, service: Service | None) -> UserGrant:
    """Give a user without staff status `role` on `service` (None: all services)."""
    grant = UserGrant(user=user, role=role, service=service)
    with transaction.atomic():
        full_clean_or_raise(grant, what="grant")
        grant.save()
        _invalidate_on_commit("user:*")
    return grant


def usergrant_delete(*, grant: UserGrant) -> None:
    """Take a grant back: the user's tokens lose it too, in every web process at once
    (a message), at worst within MEMRUN_LOOKUP_CACHE_TTL_S."""
    with transaction.atomic():
        grant.delete()
        _invalidate_on_commit("user:*")


@dataclass(frozen=True)
class TokenHolder:
    """Who a token is: its user, and what it may do."""

    user: AbstractBaseUser
    access: Access


# token hash -> its holder, as of at most MEMRUN_LOOKUP_CACHE_TTL_S ago.
_tokens: TtlCache[str, TokenHolder] = TtlCache(lambda: settings.MEMRUN_LOOKUP_CACHE_TTL_S)


def _invalidate_on_commit(what: str) -> None:
    transaction.on_commit(lambda: publish_invalidate(what))


def _on_invalidate(message: bytes) -> None:
    kind, _, key = message.decode().partition(":")
    if kind == "token":
        _tokens.discard(key)
    elif kind == "user":
        # A user's grants changed: every token of theirs may hold less now. Rare enough
        # that forgetting all tokens (one query each on next use) is the simple answer.
        _tokens.clear()


listener.on_invalidate.append(_on_invalidate)


def apitoken_authenticate(*, secret: str) -> AbstractBaseUser | None:
    """The active user whose active token `secret` is, else None (`apitoken_holder`)."""
    holder = apitoken_holder(secret=secret)
    return None if holder is None else holder.user


def apitoken_holder(*, secret: str) -> TokenHolder | None:
    """The holder of the active token `secret` (of an active user), else None. Records
    the use (to the minute). Cached per process: a known token costs no query."""
    if not secret.startswith(API_TOKEN_PREFIX):
        return None
    key = secret_hash(secret)
    holder = _tokens.get(key)
    if holder is None:
        holder = _apitoken_lookup(token_hash=key)
        if holder is not None:
            _tokens.put(key, holder)
    return holder


def apitoken_cached_holder(*, secret: str) -> TokenHolder | None:
    """The holder of `secret` if this process knows it as active; None means "ask
    apitoken_holder", not "refused". Never touches the database."""
    if not secret.startswith(API_TOKEN_PREFIX):
        return None
    return _tokens.get(secret_hash(secret))


def _apitoken_lookup(*, token_hash: str) -> TokenHolder | None:
    found = selectors.apitoken_active_get(token_hash=token_hash)
    if found is None:
        return None
    token, grants = found
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return TokenHolder(
        user=token.user, access=selectors.apitoken_access(token=token, grants=grants)
    )


def admin_user_ensure(*, username: str = "admin") -> tuple[AbstractBaseUser, str | None]:
    """The superuser `username`, created on first use with a random password, which is
    returned that one time (None when the user already existed)."""
    user_model = get_user_model()
    with transaction.atomic():
        user = user_model.objects.filter(username=username).first()
        if user is not None:
            return user, None
        password = secrets.token_urlsafe(12)
        user = user_model.objects.create_superuser(username=username, email="", password=password)
    return user, password


def cli_token_ensure(*, user: AbstractBaseUser, path: Path, name: str = "cli") -> bool:
    """Make `path` (mode 0600) hold a working API token of `user` for the CLI. A missing,
    unreadable or revoked one is replaced, revoking the user's old token called `name`.
    Returns whether a new token was written."""
    try:
        current = path.read_text().strip()
    except OSError:
        current = ""
    if current and apitoken_authenticate(secret=current) is not None:
        return False
    for old in ApiToken.objects.filter(user=user, name=name, revoked_at__isnull=True):
        apitoken_revoke(token=old)
    _token, secret = apitoken_create(user=user, name=name)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    temporary.replace(path)
    return True
