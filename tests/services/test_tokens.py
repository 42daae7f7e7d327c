"""API tokens: the secret is shown once and only its sha256 kept; revocation is final."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from django.contrib.auth.models import User

from apps.common.errors import DomainError
from apps.services.models import ApiToken
from apps.services.tokens import (
    LAST_USED_RESOLUTION,
    apitoken_authenticate,
    apitoken_create,
    apitoken_revoke,
)

pytestmark = pytest.mark.django_db


def test_only_the_hash_is_stored(user: User) -> None:
    token, secret = apitoken_create(user=user, name="laptop")
    assert secret.startswith("mr_") and len(secret) > 40
    stored = ApiToken.objects.get(pk=token.pk)
    assert stored.token_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in {stored.token_hash, stored.prefix, stored.name}
    assert secret.startswith(stored.prefix)


def test_authenticate_finds_the_user_and_records_the_use(user: User) -> None:
    token, secret = apitoken_create(user=user, name="laptop")
    assert apitoken_authenticate(secret=secret) == user
    token.refresh_from_db()
    assert token.last_used_at is not None


def test_a_known_token_costs_no_query(user: User, django_assert_num_queries) -> None:
    _token, secret = apitoken_create(user=user, name="laptop")
    with django_assert_num_queries(2):  # the look-up, and the first use recorded
        apitoken_authenticate(secret=secret)
    with django_assert_num_queries(0):
        assert apitoken_authenticate(secret=secret) == user


def test_last_use_is_written_at_most_once_a_minute(
    user: User, django_assert_num_queries, settings
) -> None:
    settings.MEMRUN_LOOKUP_CACHE_TTL_S = 0  # every call looks the token up
    token, secret = apitoken_create(user=user, name="laptop")
    apitoken_authenticate(secret=secret)
    with django_assert_num_queries(1):
        apitoken_authenticate(secret=secret)
    earlier = token.created_at - LAST_USED_RESOLUTION - timedelta(seconds=1)
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=earlier)
    with django_assert_num_queries(2):
        apitoken_authenticate(secret=secret)


@pytest.mark.parametrize("secret", ["", "mr_nope", "not-a-token", "Bearer mr_x"])
def test_unknown_secrets_are_refused(user: User, secret: str) -> None:
    apitoken_create(user=user, name="laptop")
    assert apitoken_authenticate(secret=secret) is None


def test_revoked_tokens_and_inactive_users_are_refused(user: User) -> None:
    token, secret = apitoken_create(user=user, name="laptop")
    _other, other_secret = apitoken_create(user=user, name="ci")
    apitoken_revoke(token=token)
    assert apitoken_authenticate(secret=secret) is None
    user.is_active = False
    user.save()
    assert apitoken_authenticate(secret=other_secret) is None


def test_names_are_unique_among_active_tokens(user: User) -> None:
    token, _secret = apitoken_create(user=user, name="laptop")
    with pytest.raises(DomainError) as exc:
        apitoken_create(user=user, name="laptop")
    assert exc.value.status == 409
    assert list(exc.value.details["fields"]) == ["name"]
    apitoken_revoke(token=token)
    apitoken_create(user=user, name="laptop")


def test_a_blank_name_is_refused(user: User) -> None:
    with pytest.raises(DomainError) as exc:
        apitoken_create(user=user, name="  ")
    assert list(exc.value.details["fields"]) == ["name"]
