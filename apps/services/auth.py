"""Who is calling the API: a bearer token (`Authorization: Bearer mr_...`, for the CLI,
scripts and SDK) or the browser's Django session (with CSRF on unsafe methods)."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, QueryDict
from django.utils.datastructures import MultiValueDict
from ninja.errors import HttpError
from ninja.security import APIKeyCookie, HttpBearer
from ninja.utils import check_csrf

from apps.common.credentials import secret_hash
from apps.services.services import apitoken_authenticate, apitoken_cached_user


class ApiTokenAuth(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> Any:
        user = apitoken_authenticate(secret=token)
        if user is not None:
            request.user = user
            request.memrun_caller = token_caller(token)  # type: ignore[attr-defined]
        return user


def token_caller(token: str) -> str:
    """The caller a token is, for per-caller bounds (not the secret itself)."""
    return f"token:{secret_hash(token)[:16]}"


class AsyncApiTokenAuth(ApiTokenAuth):
    """The bearer token, for async operations: a token this process knows costs neither
    a query nor a thread; only a cache miss goes to the database (in a thread)."""

    async def __call__(self, request: HttpRequest) -> Any:  # type: ignore[override]
        scheme, _, token = request.headers.get(self.header, "").partition(" ")
        if scheme.lower() != self.openapi_scheme or not token:
            return None
        user = apitoken_cached_user(secret=token)
        if user is None:
            return await sync_to_async(self.authenticate)(request, token)
        request.user = user
        request.memrun_caller = token_caller(token)  # type: ignore[attr-defined]
        return user


def caller_of(request: HttpRequest) -> str:
    """Who is calling, for per-caller bounds: the token, else the session's user."""
    return str(getattr(request, "memrun_caller", "anonymous"))


class SessionCsrfAuth(APIKeyCookie):
    """The logged-in browser user. Unlike ninja's SessionAuth, CSRF is checked only once
    a session user is found, so a request without any credentials gets 401, not 403."""

    param_name = settings.SESSION_COOKIE_NAME

    def _get_key(self, request: HttpRequest) -> str | None:
        return request.COOKIES.get(self.param_name)

    def authenticate(self, request: HttpRequest, key: str | None) -> Any:
        if not request.user.is_authenticated:
            return None
        if not getattr(request, "_ninja_csrf_exempt", False) and check_csrf(request):
            raise HttpError(
                403,
                "CSRF check failed: send the csrftoken cookie's value in the X-CSRFToken "
                "header, or authenticate with a bearer token instead",
            )
        request.memrun_caller = f"user:{request.user.pk}"  # type: ignore[attr-defined]
        return request.user


class SessionCsrfHeaderAuth(SessionCsrfAuth):
    """A session user sending a body that must not be read before the CSRF check (an
    upload: reading the form to find the token would stream the file to disk first). The
    token comes from the X-CSRFToken header only; the body is left unread."""

    def authenticate(self, request: HttpRequest, key: str | None) -> Any:
        if not request.user.is_authenticated:
            return None
        if not getattr(request, "_ninja_csrf_exempt", False) and not csrf_header_ok(request):
            raise HttpError(
                403,
                "CSRF check failed: send the csrftoken cookie's value in the X-CSRFToken "
                "header, or authenticate with a bearer token instead",
            )
        return request.user


def csrf_header_ok(request: HttpRequest) -> bool:
    """Whether the request passes Django's CSRF check with the token from the
    X-CSRFToken header alone, the body unread (the API's and the deploy page's uploads)."""
    # Django's own check (Origin, Referer, the cookie) sees an empty form for the length
    # of the check, so it falls back to the header without parsing the body; the body is
    # parsed as usual afterwards.
    request._post, request._files = QueryDict(), MultiValueDict()  # type: ignore[attr-defined]
    try:
        return check_csrf(request) is None
    finally:
        del request._post, request._files  # type: ignore[attr-defined]


api_auth = [ApiTokenAuth(), SessionCsrfAuth()]
# The same, for async operations (invoke and request polling).
api_auth_async = [AsyncApiTokenAuth(), SessionCsrfAuth()]
