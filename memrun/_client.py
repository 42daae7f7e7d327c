"""`Client`: call deployed services over the control plane's REST API (stdlib HTTP only)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from memrun._home import default_token, default_url
from memrun.errors import ApiError, HandlerError, RequestTimeout


@dataclass(frozen=True)
class RequestResult:
    """A request's state: `status` is "queued" until a worker finished it, then "done"."""

    request_id: str
    status: str
    ok: bool | None = None
    result: Any = None
    error: dict[str, str] | None = None
    worker: str | None = None
    duration_ms: float | None = None
    attempt: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.status == "done"

    @classmethod
    def from_api(cls, body: dict[str, Any]) -> RequestResult:
        known = {name: body[name] for name in cls.__dataclass_fields__ if name in body}
        return cls(**known)


class Client:
    """A memrun control plane at `url` (MEMRUN_URL), authenticated by `token` (MEMRUN_TOKEN
    or the local CLI token)."""

    def __init__(
        self, url: str | None = None, token: str | None = None, *, timeout_s: float = 30.0
    ) -> None:
        self.url = (url or default_url()).rstrip("/")
        self.token = token or default_token()
        self.timeout_s = timeout_s

    def invoke(self, service: str, payload: Any, *, wait: float = 30.0) -> Any:
        """Run `payload` through `service` and return the handler's result.

        Raises HandlerError when the handler failed, RequestTimeout (with the request id
        in `details`) when no answer came within `wait` seconds: the request stays queued.
        """
        outcome = self.invoke_request(service, payload, wait=wait)
        return _result_or_raise(outcome, wait)

    def invoke_request(self, service: str, payload: Any, *, wait: float = 30.0) -> RequestResult:
        """Like `invoke`, but return the whole `RequestResult` (worker, timings, status)."""
        path = f"/api/v1/services/{urllib.parse.quote(service)}/invoke?wait={wait:g}"
        body = self._call("POST", path, payload, timeout_s=wait + self.timeout_s)
        return RequestResult.from_api(body)

    def submit(self, service: str, payload: Any) -> str:
        """Queue `payload` for `service` without waiting; return the request id."""
        return self.invoke_request(service, payload, wait=0).request_id

    def result(self, request_id: str, *, wait: float = 0.0) -> RequestResult:
        """The request's current state; with `wait`, block up to that long for the outcome."""
        path = f"/api/v1/requests/{urllib.parse.quote(request_id)}?wait={wait:g}"
        return RequestResult.from_api(self._call("GET", path, timeout_s=wait + self.timeout_s))

    def _call(
        self, method: str, path: str, payload: Any = None, *, timeout_s: float
    ) -> dict[str, Any]:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                body: dict[str, Any] = json.loads(response.read() or b"{}")
                return body
        except urllib.error.HTTPError as exc:
            raise _api_error(exc) from None
        except urllib.error.URLError as exc:
            raise ApiError(
                f"cannot reach memrun at {self.url}: {exc.reason}; is `memrun up` running?",
                status=0,
            ) from None


def _api_error(exc: urllib.error.HTTPError) -> ApiError:
    try:
        body = json.loads(exc.read() or b"{}")
    except ValueError:
        body = {}
    message = body.get("message") or f"HTTP {exc.code} {exc.reason}"
    return ApiError(message, status=exc.code, details=body.get("details") or {})


def _result_or_raise(outcome: RequestResult, wait: float) -> Any:
    if not outcome.done:
        raise RequestTimeout(
            f"no answer within {wait:g}s; request {outcome.request_id} is still queued",
            details={"request_id": outcome.request_id},
        )
    if not outcome.ok:
        error = outcome.error or {}
        raise HandlerError(
            f"{error.get('type', 'Error')}: {error.get('message', '')}",
            details={"request_id": outcome.request_id, **error},
        )
    return outcome.result
