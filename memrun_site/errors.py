"""The one error shape of the API, `{"message": str, "details": {...}}`, mapped here once:
domain errors, ninja's input validation and auth errors, and the 404/405 answers that
Django and ninja's router give without raising."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.db import DataError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

from apps.common.errors import DomainError
from memrun.wire import redact_urls

logger = logging.getLogger(__name__)

API_PREFIX = "/api/"
UNAUTHORIZED = (
    "authentication required: send `Authorization: Bearer mr_...` (create a token with "
    "`memrun token create --name NAME` or POST /api/v1/tokens), or log in at /admin/"
)
# Where ninja reports a value: the request part, then (for bodies) the parameter name.
_SOURCES = ("body", "query", "path", "header", "cookie", "form", "file")


def error_response(
    status: int, message: str, details: dict[str, Any] | None = None
) -> JsonResponse:
    """Every error body passes here, so a URL's user and password (REDIS_URL, a database
    or broker URL quoted in a message or in details) never reach a caller."""
    body = {"message": redact_urls(message), "details": _redacted(details or {})}
    return JsonResponse(body, status=status)


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact_urls(value)
    if isinstance(value, dict):
        return {key: _redacted(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(item) for item in value]
    return value


def install_error_handlers(api: NinjaAPI) -> None:
    handlers: dict[type[Exception], Callable[[HttpRequest, Any], HttpResponse]] = {
        DomainError: _domain_error,
        ValidationError: _validation_error,
        AuthenticationError: _authentication_error,
        HttpError: _http_error,
        Http404: _not_found,
        DataError: _unstorable,
        Exception: _unexpected,
    }
    for exc_class, handler in handlers.items():
        api.add_exception_handler(exc_class, handler)


def _domain_error(request: HttpRequest, exc: DomainError) -> HttpResponse:
    response = error_response(exc.status, exc.message, exc.details)
    for name, value in exc.headers.items():
        response[name] = value
    return response


def _validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    fields: dict[str, list[str]] = {}
    for error in exc.errors:
        fields.setdefault(_field_name(error.get("loc", ())), []).append(str(error.get("msg")))
    summary = "; ".join(f"{name}: {' '.join(messages)}" for name, messages in fields.items())
    return error_response(422, f"invalid input: {summary}", {"fields": fields})


def _field_name(loc: tuple[Any, ...] | list[Any]) -> str:
    """("body", "payload", "memory") -> "memory"; ("query", "wait") -> "wait"."""
    parts = [str(part) for part in loc]
    if parts and parts[0] in _SOURCES:
        source, parts = parts[0], parts[1:]
        if source == "body" and len(parts) > 1:
            parts = parts[1:]
    return ".".join(parts) or "body"


def _authentication_error(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    response = error_response(401, UNAUTHORIZED)
    response["WWW-Authenticate"] = "Bearer"
    return response


def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    return error_response(exc.status_code, str(exc))


def _not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return error_response(404, str(exc) or "not found")


def _unstorable(request: HttpRequest, exc: DataError) -> HttpResponse:
    # The database refused a value the schemas let through (a NUL character in a text
    # or JSON value, a number or date out of its range): the caller's input, so a 422.
    logger.warning("refused input in %s %s: %s", request.method, request.path, exc)
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return error_response(
        422,
        f"a value in the request cannot be stored ({reason}); remove NUL characters and "
        "keep numbers and dates within range",
        {"reason": reason},
    )


def _unexpected(request: HttpRequest, exc: Exception) -> HttpResponse:
    logger.exception("unhandled error in %s %s", request.method, request.path)
    return error_response(
        500,
        "internal error; the server log has the details",
        {"type": type(exc).__name__},
    )


class ApiErrorShapeMiddleware:
    """Give the API's error shape to the /api/ errors that never reach a ninja handler:
    an unknown path (Django's 404) and a known path with a wrong method (ninja's 405).

    Sync and async: under ASGI a sync-only middleware would run every request, async
    invoke included, in a thread held for the whole response."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if iscoroutinefunction(self):
            return self._acall(request)
        return api_error_shape(request, self.get_response(request))

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        return api_error_shape(request, await self.get_response(request))


def api_error_shape(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    if (
        not request.path.startswith(API_PREFIX)
        or response.status_code < 400
        or response.get("Content-Type", "").startswith("application/json")
    ):
        return response
    where = f"{request.method} {request.path}"
    if response.status_code == 405:
        allowed = sorted(method.strip() for method in response["Allow"].split(","))
        shaped = error_response(
            405, f"{where} is not allowed; use {', '.join(allowed)}", {"allowed": allowed}
        )
        shaped["Allow"] = response["Allow"]
        return shaped
    if response.status_code == 404:
        return error_response(404, f"no such endpoint: {where}; see /api/v1/docs")
    return error_response(response.status_code, response.reason_phrase)
