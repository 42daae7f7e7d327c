"""The one HTTP client to the control plane, on httpx: used by the SDK `Client`, the
worker's control-plane calls (heartbeats, package downloads) and its log shipping.

Connection pooling, timeouts, retries, the bearer token and the error shape live here
and nowhere else. Retries are safe by construction: a request whose connection could
not even be opened is retried whatever its method (nothing was sent), while a gateway
error (502/503/504) or a connection dropped mid-answer is retried only for an idempotent
method. Read timeouts are never retried: a long wait the caller asked for (an invoke's
`wait`) must not silently double. Every failure is a `memrun.errors.ApiError` whose
`status` is the HTTP status, or 0 when no answer came.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from memrun.errors import ApiError

__all__ = ["NO_RETRY", "HttpClient", "Retry"]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_UNSET: Any = object()


@dataclass(frozen=True)
class Retry:
    """How often and how patiently a request is tried again. `attempts` counts the first
    try; the n-th retry waits up to `backoff_min_s * 2**(n-1)`, capped at `backoff_max_s`
    (jittered, so many callers do not retry in step)."""

    attempts: int = 3
    backoff_min_s: float = 0.2
    backoff_max_s: float = 2.0
    statuses: frozenset[int] = field(default_factory=lambda: frozenset({502, 503, 504}))

    def delay_s(self, retry: int) -> float:
        ceiling = min(self.backoff_max_s, self.backoff_min_s * 2 ** (retry - 1))
        return random.uniform(ceiling / 2, ceiling)


NO_RETRY = Retry(attempts=1)
"""For callers that retry whole operations themselves (the log shipper's batch loop)."""


class HttpClient:
    """The control plane at `url`, called with `token` (a bearer token, if any).

    One pool of keep-alive connections per instance; safe to share between threads.
    `timeout_s` bounds each request (connect, each read, each write) unless a call says
    otherwise; `connect_timeout_s` bounds opening a connection. `unreachable_hint` is
    added to the message when the control plane cannot be reached.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        retry: Retry | None = None,
        unreachable_hint: str = "",
        max_connections: int = 10,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.retry = retry or Retry()
        self._connect_timeout_s = connect_timeout_s
        self._hint = unreachable_hint
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )

    def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = _UNSET,
        content: bytes | Iterable[bytes] | None = None,
        params: Mapping[str, str | int | float] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        retry: Retry | None = None,
    ) -> Any:
        """Send a request and return its decoded JSON answer ({} for an empty one).
        `json` is encoded as the body; `content` is sent as it is (an iterable is
        streamed: give a Content-Length header to avoid chunked encoding)."""
        request = self._build(method, path, json, content, params, headers, timeout_s)
        response = self._send(request, stream=False, retry=retry)
        if not response.content:
            return {}
        try:
            return response.json()
        except ValueError:
            raise ApiError(
                f"memrun at {self.url} answered {method} {path} with a body that is not JSON",
                status=response.status_code,
            ) from None

    @contextmanager
    def stream(
        self, method: str, path: str, *, timeout_s: float | None = None
    ) -> Iterator[httpx.Response]:
        """The answer with its body not yet read (`iter_bytes()`), closed on exit. Only
        the opening of the answer is retried, never a body half read."""
        request = self._build(method, path, _UNSET, None, None, None, timeout_s)
        response = self._send(request, stream=True, retry=None)
        try:
            yield response
        finally:
            response.close()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _build(
        self,
        method: str,
        path: str,
        payload: Any,
        content: bytes | Iterable[bytes] | None,
        params: Mapping[str, str | int | float] | None,
        headers: Mapping[str, str] | None,
        timeout_s: float | None,
    ) -> httpx.Request:
        all_headers = dict(headers or {})
        if payload is not _UNSET:
            content = json.dumps(payload).encode()
            all_headers.setdefault("Content-Type", "application/json")
        timeout = self.timeout_s if timeout_s is None else timeout_s
        return self._http.build_request(
            method,
            path,
            content=content,
            params=params,
            headers=all_headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, self._connect_timeout_s)),
        )

    def _send(self, request: httpx.Request, *, stream: bool, retry: Retry | None) -> httpx.Response:
        retry = retry or self.retry
        # A streamed body can be sent once only.
        replayable = isinstance(request.stream, httpx.ByteStream)
        idempotent = request.method in IDEMPOTENT_METHODS
        attempt = 1
        while True:
            last = attempt >= retry.attempts or not replayable
            try:
                response = self._http.send(request, stream=stream)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                if last:
                    raise self._unreachable(exc) from None
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                if last or not idempotent:
                    raise self._dropped(request, exc) from None
            except httpx.TimeoutException as exc:
                raise ApiError(
                    f"memrun at {self.url} did not answer {request.method} "
                    f"{request.url.path} in time ({_reason(exc)})",
                    status=0,
                ) from None
            else:
                if response.is_success:
                    return response
                if last or not idempotent or response.status_code not in retry.statuses:
                    raise _api_error(response)
                response.close()
            time.sleep(retry.delay_s(attempt))
            attempt += 1

    def _unreachable(self, exc: httpx.HTTPError) -> ApiError:
        hint = f"; {self._hint}" if self._hint else ""
        return ApiError(f"cannot reach memrun at {self.url}: {_reason(exc)}{hint}", status=0)

    def _dropped(self, request: httpx.Request, exc: httpx.HTTPError) -> ApiError:
        if not isinstance(request.stream, httpx.ByteStream):
            # The server answered early and hung up while the body was still going out.
            return ApiError(
                f"memrun at {self.url} closed the connection during the upload "
                f"({_reason(exc)}); the upload may be over its size limit",
                status=0,
            )
        return ApiError(
            f"memrun at {self.url} dropped the connection during {request.method} "
            f"{request.url.path}: {_reason(exc)}",
            status=0,
        )


def _api_error(response: httpx.Response) -> ApiError:
    """The control plane's `{"message", "details"}` error shape, as an ApiError."""
    try:
        body = json.loads(response.read() or b"{}")
    except ValueError:
        body = {}
    finally:
        response.close()
    if not isinstance(body, dict):
        body = {}
    message = body.get("message") or f"HTTP {response.status_code} {response.reason_phrase}"
    details = body.get("details")
    if not isinstance(details, dict):
        details = {}
    return ApiError(str(message), status=response.status_code, details=details)


def _reason(exc: httpx.HTTPError) -> str:
    return str(exc) or type(exc).__name__
