"""`Client`: deploy and call services over the control plane's REST API (through
`memrun.httpclient`, which owns pooling, timeouts, retries and the error shape)."""

from __future__ import annotations

import json
import os
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from memrun.errors import ApiError, HandlerError, RequestTimeout
from memrun.home import default_token, default_url
from memrun.httpclient import HttpClient

# Garbage collection lists and deletes in the artifact store: far longer than one call.
GC_TIMEOUT_S = 600.0


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


@dataclass(frozen=True)
class Deployment:
    """One version of a service. `status` goes pending -> rolling -> active, or failed
    (with `failure_reason`); an active one becomes superseded by the next."""

    id: int
    service: str
    version: int
    status: str
    sha256: str
    size_bytes: int
    created_at: str
    failure_reason: str = ""
    degraded: bool = False
    degraded_reason: str = ""
    crash_backoff_until: str | None = None
    message: str = ""
    entry: str | None = None
    created_by: str | None = None
    workers_ready: int = 0
    workers_desired: int = 0

    @property
    def finished(self) -> bool:
        """Whether the rollout is over: active, failed, or replaced before it went live."""
        return self.status in ("active", "failed", "superseded")

    @classmethod
    def from_api(cls, body: dict[str, Any]) -> Deployment:
        known = {name: body[name] for name in cls.__dataclass_fields__ if name in body}
        return cls(**known)


ProgressCallback = Callable[[int, int], None]
"""Called as `progress(bytes_sent, total_bytes)` while a package uploads."""


class Client:
    """A memrun control plane at `url` (MEMRUN_URL), authenticated by `token` (MEMRUN_TOKEN
    or the local CLI token). Keeps a pool of connections: `close()` it (or use it as a
    context manager) when done."""

    def __init__(
        self, url: str | None = None, token: str | None = None, *, timeout_s: float = 30.0
    ) -> None:
        self.url = (url or default_url()).rstrip("/")
        self.token = token or default_token()
        self.timeout_s = timeout_s
        self._http = HttpClient(
            self.url,
            token=self.token,
            timeout_s=timeout_s,
            unreachable_hint="is `memrun up` running?",
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def invoke(self, service: str, payload: Any, *, wait: float = 30.0, queue: bool = False) -> Any:
        """Run `payload` through `service` and return the handler's result.

        Raises HandlerError when the handler failed, RequestTimeout (with the request id
        in `details`) when no answer came within `wait` seconds: the request stays queued.
        A service that cannot serve now (never deployed, no ready worker) is an ApiError
        (409) unless `queue` asks to queue the request anyway.
        """
        outcome = self.invoke_request(service, payload, wait=wait, queue=queue)
        return _result_or_raise(outcome, wait)

    def invoke_request(
        self, service: str, payload: Any, *, wait: float = 30.0, queue: bool = False
    ) -> RequestResult:
        """Like `invoke`, but return the whole `RequestResult` (worker, timings, status)."""
        path = f"{_service_path(service)}/invoke?wait={wait:g}{_queue_flag(queue)}"
        body = self._call("POST", path, payload, timeout_s=wait + self.timeout_s)
        return RequestResult.from_api(body)

    def submit(self, service: str, payload: Any, *, queue: bool = False) -> str:
        """Queue `payload` for `service` without waiting; return the request id."""
        return self.invoke_request(service, payload, wait=0, queue=queue).request_id

    def map(
        self,
        service: str,
        payloads: Iterable[Any],
        *,
        wait: float = 30.0,
        batch_size: int = 1000,
        queue: bool = False,
    ) -> list[Any]:
        """Run every payload through `service` (each routed by its own sticky key) and
        return the handlers' results in the payloads' order, sent `batch_size` at a time
        through invoke-batch. Raises as `invoke` does for the first failed or unanswered one
        (within `wait` seconds of its batch)."""
        outcomes = self.map_requests(
            service, payloads, wait=wait, batch_size=batch_size, queue=queue
        )
        return [_result_or_raise(outcome, wait) for outcome in outcomes]

    def map_requests(
        self,
        service: str,
        payloads: Iterable[Any],
        *,
        wait: float = 30.0,
        batch_size: int = 1000,
        queue: bool = False,
    ) -> list[RequestResult]:
        """Like `map`, but return each `RequestResult`; those still running after `wait`
        are polled until `wait` has passed for them too."""
        path = f"{_service_path(service)}/invoke-batch?wait={wait:g}{_queue_flag(queue)}"
        outcomes: list[RequestResult] = []
        for batch in _batches(payloads, batch_size):
            body = self._call("POST", path, batch, timeout_s=wait + self.timeout_s)
            outcomes.extend(RequestResult.from_api(item) for item in body["results"])
        deadline = time.monotonic() + wait
        for index, outcome in enumerate(outcomes):
            if not outcome.done and (left := deadline - time.monotonic()) > 0:
                outcomes[index] = self.result(outcome.request_id, wait=left)
        return outcomes

    def result(self, request_id: str, *, wait: float = 0.0) -> RequestResult:
        """The request's current state; with `wait`, block up to that long for the outcome."""
        path = f"/api/v1/requests/{urllib.parse.quote(request_id)}?wait={wait:g}"
        return RequestResult.from_api(self._call("GET", path, timeout_s=wait + self.timeout_s))

    def follow(self, request_id: str, *, wait: float = 300.0) -> RequestResult:
        """Follow the request as server-sent events on one connection (no polling) until
        its outcome, or for up to `wait` seconds (then its state, still "queued")."""
        path = f"/api/v1/requests/{urllib.parse.quote(request_id)}/events?wait={wait:g}"
        last: dict[str, Any] | None = None
        with self._http.stream("GET", path, timeout_s=wait + self.timeout_s) as response:
            for name, data in _server_sent_events(response.iter_lines()):
                last = data
                if name in ("done", "timeout"):
                    break
        if last is None:
            raise ApiError(f"the events of request {request_id} ended before any event", status=0)
        return RequestResult.from_api(last)

    def deploy(
        self,
        service: str,
        package: Path,
        *,
        message: str = "",
        progress: ProgressCallback | None = None,
        provider: str = "",
        server_type: str = "",
        location: str = "",
    ) -> Deployment:
        """Upload the package at `package` (a .tar.gz from `build_package`) as the next
        version of `service`, which is created on its first deploy. The file is streamed,
        never read into memory; `progress` hears how far it got. `provider`,
        `server_type` and `location` set the service's machines ("": unchanged)."""
        fields = {
            "message": message,
            "provider": provider,
            "server_type": server_type,
            "location": location,
        }
        query = urllib.parse.urlencode({k: v for k, v in fields.items() if v})
        path = f"{_service_path(service)}/deployments" + (f"?{query}" if query else "")
        with package.open("rb") as stream:
            total = os.fstat(stream.fileno()).st_size
            headers = {"Content-Type": "application/gzip", "Content-Length": str(total)}
            body = self._http.call(
                "POST", path, content=_chunks(stream, total, progress), headers=headers
            )
            return Deployment.from_api(dict(body))

    def deployments(self, service: str, *, limit: int = 20) -> list[Deployment]:
        """The service's deployments, newest first."""
        path = f"{_service_path(service)}/deployments?limit={limit}"
        return [Deployment.from_api(item) for item in self._call_list("GET", path)]

    def deployment(self, service: str, version: int) -> Deployment:
        path = f"{_service_path(service)}/deployments/{version}"
        return Deployment.from_api(self._call("GET", path, timeout_s=self.timeout_s))

    def rollback(
        self, service: str, *, version: int | None = None, message: str = ""
    ) -> Deployment:
        """Deploy `version`'s package again as a new version; by default the one that was
        active before the current active one."""
        payload = {"version": version, "message": message}
        path = f"{_service_path(service)}/rollback"
        return Deployment.from_api(self._call("POST", path, payload, timeout_s=self.timeout_s))

    def rotate_credentials(self, service: str) -> dict[str, Any]:
        """Give `service`'s Kafka principal a new password; `version` is the deployment
        that rolls its workers onto it (None before the first deploy)."""
        path = f"{_service_path(service)}/rotate-credentials"
        return self._call("POST", path, {}, timeout_s=self.timeout_s)

    def services(self) -> list[dict[str, Any]]:
        """Every service with its settings, by name."""
        return self._call_list("GET", "/api/v1/services")

    def service(self, service: str) -> dict[str, Any]:
        return self._call("GET", _service_path(service), timeout_s=self.timeout_s)

    def workers(self, service: str | None = None) -> list[dict[str, Any]]:
        """All workers, or those of `service`, each with its `state`."""
        query = f"?{urllib.parse.urlencode({'service': service})}" if service else ""
        return self._call_list("GET", f"/api/v1/workers{query}")

    def service_url(self, service: str) -> str:
        """Where `service` is invoked over HTTP."""
        return f"{self.url}{_service_path(service)}/invoke"

    def _call_list(self, method: str, path: str) -> list[dict[str, Any]]:
        return list(self._http.call(method, path))

    def _call(
        self, method: str, path: str, payload: Any = None, *, timeout_s: float
    ) -> dict[str, Any]:
        """The JSON answer; ApiError with the control plane's message for any error."""
        if payload is None:
            return dict(self._http.call(method, path, timeout_s=timeout_s))
        return dict(self._http.call(method, path, json=payload, timeout_s=timeout_s))

    # -- secrets ------------------------------------------------------------------------

    def secrets(self) -> list[dict[str, Any]]:
        """Every secret: name, keys, fingerprint, the services using it (never values)."""
        return self._call_list("GET", "/api/v1/secrets")

    def secret_set(self, name: str, values: Mapping[str, str]) -> dict[str, Any]:
        """Create secret `name` or replace all of its pairs; `rolled` in the answer lists
        the services redeployed because the values changed."""
        path = f"/api/v1/secrets/{urllib.parse.quote(name, safe='')}"
        return self._call("PUT", path, {"values": dict(values)}, timeout_s=self.timeout_s)

    def secret_delete(self, name: str) -> None:
        """ApiError 409 names the services still using it."""
        path = f"/api/v1/secrets/{urllib.parse.quote(name, safe='')}"
        self._http.call("DELETE", path, timeout_s=self.timeout_s)

    # -- API tokens ----------------------------------------------------------------------

    def tokens(self, *, all_users: bool = False) -> list[dict[str, Any]]:
        """The caller's user's active tokens (every user's with `all_users`, for admins),
        each with its `grants` ({service, role}; service None: all services)."""
        return self._call_list("GET", "/api/v1/tokens" + ("?all=true" if all_users else ""))

    def token_create(
        self,
        name: str,
        *,
        service: str | None = None,
        role: str | None = None,
        user: str | None = None,
    ) -> dict[str, Any]:
        """A new token named `name` holding `role` on `service` (on all services when
        None); without either, a copy of its user's grants; `role` defaults to invoke
        when only `service` is given. Its `secret` is in this answer only."""
        payload: dict[str, Any] = {"name": name}
        if service is not None or role is not None:
            payload["grants"] = [{"service": service, "role": role or "invoke"}]
        if user is not None:
            payload["user"] = user
        return self._call("POST", "/api/v1/tokens", payload, timeout_s=self.timeout_s)

    def token_revoke(self, token_id: int, *, any_user: bool = False) -> None:
        """Revoke the token `token_id` (another user's too with `any_user`, for admins)."""
        query = "?all=true" if any_user else ""
        self._http.call("DELETE", f"/api/v1/tokens/{token_id}{query}", timeout_s=self.timeout_s)

    # -- running workers: scaling and the workers of a service --------------------------

    def scale(self, service: str, workers: int) -> dict[str, Any]:
        """Set how many workers `service` runs, within its min and max; returns the
        service. ApiError (422) names the bound a count outside them crosses."""
        path = f"{_service_path(service)}/scale"
        return self._call("POST", path, {"workers": workers}, timeout_s=self.timeout_s)

    def autoscale(self, service: str, **changes: Any) -> dict[str, Any]:
        """The autoscaling policy of `service` and its recent decisions; with `changes`
        (enabled, min_workers, max_workers, lag_per_worker, max_queue_seconds (None:
        off), scale_up_window_s, scale_down_window_s, scale_up_cooldown_s,
        scale_down_cooldown_s) set those first."""
        path = f"{_service_path(service)}/autoscale"
        if changes:
            return self._call("PUT", path, changes, timeout_s=self.timeout_s)
        return self._call("GET", path, timeout_s=self.timeout_s)

    def gc(self, *, dry_run: bool = False) -> dict[str, Any]:
        """Free what the control plane stores and no longer needs (with `dry_run`, only
        list it): `kinds` (kind, count, size_bytes), `items` and the total `size_bytes`."""
        return self._call("POST", "/api/v1/gc", {"dry_run": dry_run}, timeout_s=GC_TIMEOUT_S)

    def service_warmth(self, service: str) -> dict[str, Any]:
        """What is warm where: each running worker's partitions and the largest and most
        requested objects in its cache, as its last heartbeat reported them."""
        return self._call("GET", f"{_service_path(service)}/warmth", timeout_s=self.timeout_s)

    def service_workers(
        self, service: str, *, include_finished: bool = False
    ) -> list[dict[str, Any]]:
        """The running workers of `service` (with `include_finished`, the stopped and
        dead ones too): state, liveness, version, heartbeat age, in-flight, partitions, lag."""
        query = "?all=true" if include_finished else ""
        return self._call_list("GET", f"{_service_path(service)}/workers{query}")

    # -- dead letters: a service's failed requests, and replaying them -------------------

    def dead_letters(
        self, service: str, *, limit: int = 50, before: str | None = None
    ) -> dict[str, Any]:
        """A page of `service`'s failed and timed-out requests, newest first:
        `{"items": [...], "next_cursor": str | None}`; pass `next_cursor` as `before`
        for the older ones."""
        query = urllib.parse.urlencode({"limit": limit, **({"before": before} if before else {})})
        path = f"{_service_path(service)}/dead-letters?{query}"
        return self._call("GET", path, timeout_s=self.timeout_s)

    def dead_letter(self, service: str, dead_letter_id: str) -> dict[str, Any]:
        """One dead letter with its payload, traceback and replays."""
        path = f"{_service_path(service)}/dead-letters/{urllib.parse.quote(dead_letter_id)}"
        return self._call("GET", path, timeout_s=self.timeout_s)

    def replay(self, service: str, dead_letter_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Run dead letters again (same key and payload, attempt + 1); one record per id
        with the new `request_id` to poll with `result`. ApiError 404 for an unknown id,
        and then nothing is replayed."""
        path = f"{_service_path(service)}/dead-letters/replay"
        payload = {"ids": list(dead_letter_ids)}
        return list(self._http.call("POST", path, json=payload))

    # -- worker logs: a service's lines, merged across its workers, page by page ---------

    def logs(
        self,
        service: str,
        *,
        worker: str | None = None,
        since: str | None = None,
        request_id: str | None = None,
        level: str | None = None,
        limit: int = 100,
    ) -> dict[str, Any]:
        """A page of `service`'s log lines (only `worker`'s, if given), oldest first:
        `{"lines": [...], "next_since": str, "more": bool}`. Without `since`, the newest
        `limit`; with it (ISO 8601, epoch seconds, or a page's `next_since`), those after
        it. Pass `next_since` back to follow; `more` says the next page is there already."""
        filters = {"worker": worker, "since": since, "request_id": request_id, "level": level}
        query = urllib.parse.urlencode(
            {"limit": limit, **{name: value for name, value in filters.items() if value}}
        )
        return self._call("GET", f"{_service_path(service)}/logs?{query}", timeout_s=self.timeout_s)


_CHUNK = 64 * 1024


def _server_sent_events(lines: Iterable[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event name, JSON data) for each event of a text/event-stream; comments skipped."""
    name, data = "message", ""
    for line in lines:
        if not line:
            if data:
                yield name, json.loads(data)
            name, data = "message", ""
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()


def _chunks(stream: BinaryIO, total: int, progress: ProgressCallback | None) -> Iterator[bytes]:
    """The file in chunks, as the upload takes them, each reported to `progress`."""
    sent = 0
    while data := stream.read(_CHUNK):
        sent += len(data)
        if progress is not None:
            progress(sent, total)
        yield data


def _queue_flag(queue: bool) -> str:
    return "&queue=true" if queue else ""


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _service_path(service: str) -> str:
    return f"/api/v1/services/{urllib.parse.quote(service, safe='')}"


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
