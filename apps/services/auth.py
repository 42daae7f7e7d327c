"""Who is calling the API: a bearer token (`Authorization: Bearer mr_...`, for the CLI,
scripts and SDK) or the browser's Django session (with CSRF on unsafe methods); and what
each route needs of them, declared in one way for every route and page (`Need`; the roles
are apps/common/permissions.py's).

An API route declares its need with its auth, `auth=needs(Role.READ)`: the role is then
checked as part of authentication, before ninja reads the body, so a caller without it
gets 403 whatever it sends, and nothing else runs. A page declares it with `@requires`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, QueryDict
from django.utils.datastructures import MultiValueDict
from ninja.errors import HttpError
from ninja.security import APIKeyCookie, HttpBearer
from ninja.utils import check_csrf

from apps.common.credentials import secret_hash
from apps.common.permissions import Access, Role
from apps.services.selectors import user_access
from apps.services.tokens import TokenHolder, apitoken_cached_holder, apitoken_holder

# What a Need checks the role on, besides the name of a path parameter.
ALL = "<all>"  # every service: the role held on all of them
ANY = "<any>"  # at least one service (the view narrows what it shows to the allowed ones)
OBJECT = "<object>"  # the view finds the object first, then checks its service itself
SELF = "<self>"  # the caller's own (its tokens): a session always; a token with `role` on ANY


@dataclass(frozen=True)
class Need:
    """`role` on the service named by the path parameter `on` (checked before the service
    is looked up, so a caller without the role learns nothing of whether it exists), on
    ALL services, on ANY, or on an OBJECT's service (the view checks it with
    `access_of(request).require`). A refusal is a 403 DomainError naming the role."""

    role: Role
    on: str = "name"

    def check(self, request: HttpRequest, params: dict[str, Any]) -> None:
        access = access_of(request)
        if self.on == ANY or (self.on == SELF and caller_of(request).startswith("token:")):
            access.require_any(self.role)
        elif self.on not in (OBJECT, SELF):
            access.require(self.role, None if self.on == ALL else str(params[self.on]))

    def check_route(self, request: HttpRequest) -> None:
        match = request.resolver_match
        self.check(request, {} if match is None else match.kwargs)


class ApiTokenAuth(HttpBearer):
    def __init__(self, need: Need | None = None) -> None:
        super().__init__()
        self.need = need

    def authenticate(self, request: HttpRequest, token: str) -> Any:
        holder = apitoken_holder(secret=token)
        if holder is None:
            return None
        return self.hold(request, holder, token)

    def hold(self, request: HttpRequest, holder: TokenHolder, token: str) -> Any:
        request.user = holder.user
        request.memrun_caller = token_caller(token)  # type: ignore[attr-defined]
        request.memrun_access = holder.access  # type: ignore[attr-defined]
        if self.need is not None:
            self.need.check_route(request)
        return holder.user


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
        holder = apitoken_cached_holder(secret=token)
        if holder is None:
            return await sync_to_async(self.authenticate)(request, token)
        return self.hold(request, holder, token)


def caller_of(request: HttpRequest) -> str:
    """Who is calling, for per-caller bounds and a request's submitter: the token, else
    the session's user."""
    caller = getattr(request, "memrun_caller", None)
    if caller is None:
        caller = f"user:{request.user.pk}" if request.user.is_authenticated else "anonymous"
    return str(caller)


class SessionCsrfAuth(APIKeyCookie):
    """The logged-in browser user. Unlike ninja's SessionAuth, CSRF is checked only once
    a session user is found, so a request without any credentials gets 401, not 403."""

    param_name = settings.SESSION_COOKIE_NAME

    def __init__(self, need: Need | None = None) -> None:
        super().__init__()
        self.need = need

    def _get_key(self, request: HttpRequest) -> str | None:
        return request.COOKIES.get(self.param_name)

    def csrf_ok(self, request: HttpRequest) -> bool:
        return check_csrf(request) is None

    def authenticate(self, request: HttpRequest, key: str | None) -> Any:
        if not request.user.is_authenticated:
            return None
        if not getattr(request, "_ninja_csrf_exempt", False) and not self.csrf_ok(request):
            raise HttpError(
                403,
                "CSRF check failed: send the csrftoken cookie's value in the X-CSRFToken "
                "header, or authenticate with a bearer token instead",
            )
        request.memrun_caller = f"user:{request.user.pk}"  # type: ignore[attr-defined]
        access_of(request)  # here, in a thread: an async view cannot query
        if self.need is not None:
            self.need.check_route(request)
        return request.user


class SessionCsrfHeaderAuth(SessionCsrfAuth):
    """A session user sending a body that must not be read before the CSRF check (an
    upload: reading the form to find the token would stream the file to disk first). The
    token comes from the X-CSRFToken header only; the body is left unread."""

    def csrf_ok(self, request: HttpRequest) -> bool:
        return csrf_header_ok(request)


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


def needs(role: Role, on: str = "name") -> list[Any]:
    """The auth of an API route that needs `role` on `on` (see Need)."""
    need = Need(role, on)
    return [ApiTokenAuth(need), SessionCsrfAuth(need)]


def needs_async(role: Role, on: str = "name") -> list[Any]:
    """The same, for async operations (invoke and request polling)."""
    need = Need(role, on)
    return [AsyncApiTokenAuth(need), SessionCsrfAuth(need)]


# Any signed-in caller, nothing more: what a route without its own `needs` falls back to.
api_auth = [ApiTokenAuth(), SessionCsrfAuth()]


def access_of(request: HttpRequest) -> Access:
    """What the caller may do: its token's access, else its session user's (looked up
    once per request)."""
    access = getattr(request, "memrun_access", None)
    if access is None:
        user = request.user
        if user.is_authenticated:
            access = user_access(user=user)  # type: ignore[arg-type]
        else:
            access = Access(who="an anonymous caller", grants=frozenset())
        request.memrun_access = access  # type: ignore[attr-defined]
    return access  # type: ignore[no-any-return]


V = TypeVar("V", bound=Callable[..., Any])


def requires(role: Role, on: str = "name") -> Callable[[V], V]:
    """Declare what a page needs (a Need on the view's argument `on`), checked before
    the view runs."""
    need = Need(role, on)

    def decorate(view: V) -> V:
        @functools.wraps(view)
        def checked(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            need.check(request, kwargs)
            return view(request, *args, **kwargs)

        checked.memrun_need = need  # type: ignore[attr-defined]
        return checked  # type: ignore[return-value]

    return decorate
