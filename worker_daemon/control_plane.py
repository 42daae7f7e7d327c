"""The worker's side of the control plane: heartbeats and package downloads over HTTP.

A provisioned worker is configured by its environment (set by the provisioner, see
apps/provisioning/specs.py): MEMRUN_URL, MEMRUN_WORKER_ID, MEMRUN_WORKER_TOKEN (its own
`mrw_` credential, I8), MEMRUN_SERVICE, MEMRUN_DEPLOYMENT_ID, MEMRUN_PACKAGE_SHA256,
besides what WorkerSettings reads (MEMRUN_SERVICE_CONFIG, MEMRUN_WORK_ROOT,
MEMRUN_CACHE_ROOT, brokers, S3). HTTP goes through `memrun.httpclient` (pooling,
timeouts, retries); the worker never imports Django.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from memrun.errors import ApiError, ConfigError
from memrun.httpclient import HttpClient
from memrun.wire.hotsets import HotEntry, hot_entries_from_wire

# The control plane no longer accepts this worker's credential (it was stopped, declared
# dead, or never existed): the worker exits with this code and is not restarted.
EXIT_CREDENTIAL_REFUSED = 77
ACTION_RUN = "run"
ACTION_DRAIN = "drain"
_CHUNK = 1024 * 1024


class ControlPlaneError(Exception):
    """A call to the control plane failed; `status` is the HTTP status (0: unreachable)."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class CredentialRefused(ControlPlaneError):
    """401: the control plane does not (or no longer) accept this worker's credential."""


@dataclass(frozen=True)
class ProvisionedSettings:
    """How a provisioned worker finds the control plane and what it runs."""

    url: str
    worker_id: str
    token: str
    service: str
    deployment_id: int
    package_sha256: str | None
    heartbeat_interval_s: float = 10.0
    heartbeat_jitter: float = 0.1
    request_timeout_s: float = 10.0

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, **overrides: Any
    ) -> ProvisionedSettings:
        """From the MEMRUN_* variables a provisioner sets; `overrides` (CLI flags, None =
        not given) win."""
        env = os.environ if env is None else env
        given = {k: v for k, v in overrides.items() if v is not None}

        def need(field: str, variable: str) -> str:
            value = given.get(field) or env.get(variable, "").strip()
            if not value:
                raise ConfigError(
                    f"{variable} is not set: a worker started with --deployment needs the "
                    "environment its provisioner gives it"
                )
            return str(value)

        try:
            deployment_id = int(need("deployment_id", "MEMRUN_DEPLOYMENT_ID"))
            interval = float(env.get("MEMRUN_HEARTBEAT_INTERVAL_S") or cls.heartbeat_interval_s)
        except ValueError as exc:
            raise ConfigError(f"a worker setting is not a number: {exc}") from None
        return cls(
            url=need("url", "MEMRUN_URL").rstrip("/"),
            worker_id=need("worker_id", "MEMRUN_WORKER_ID"),
            token=need("token", "MEMRUN_WORKER_TOKEN"),
            service=need("service", "MEMRUN_SERVICE"),
            deployment_id=deployment_id,
            package_sha256=env.get("MEMRUN_PACKAGE_SHA256") or None,
            heartbeat_interval_s=interval,
        )


class ControlPlane:
    """HTTP calls of one worker to the control plane at `url`, with its `token`; `http`
    is made from them unless a test hands in its own."""

    def __init__(
        self, *, url: str, token: str, timeout_s: float = 10.0, http: HttpClient | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self._http = http or HttpClient(self.url, token=token, timeout_s=timeout_s)

    def heartbeat(self, worker_id: str, report: Mapping[str, Any]) -> str:
        """Send a heartbeat; returns the action the control plane asks for ("run" or
        "drain"). Raises CredentialRefused on 401, ControlPlaneError otherwise."""
        path = f"/api/v1/workers/{urllib.parse.quote(worker_id)}/heartbeat"
        body = json.dumps(report, default=str).encode()
        headers = {"Content-Type": "application/json"}
        with _refusals("POST", path):
            answer = self._http.call("POST", path, content=body, headers=headers)
        action = answer.get("action") if isinstance(answer, dict) else None
        return action if action in (ACTION_RUN, ACTION_DRAIN) else ACTION_RUN

    def hot_sets(self, worker_id: str, partitions: Sequence[int]) -> list[HotEntry]:
        """What the service's other workers last reported reading on `partitions` (the
        warm handoff's hint). Raises ControlPlaneError."""
        query = urllib.parse.urlencode({"partitions": ",".join(str(p) for p in partitions)})
        path = f"/api/v1/workers/{urllib.parse.quote(worker_id)}/handoff?{query}"
        with _refusals("GET", path):
            answer = self._http.call("GET", path)
        hot_sets = answer.get("hot_sets") if isinstance(answer, dict) else None
        return hot_entries_from_wire(hot_sets) if isinstance(hot_sets, dict) else []

    def fetch_package(self, deployment_id: int, dest: Path, *, expected_sha256: str | None) -> str:
        """Stream the deployment's package to `dest` (via a temporary file in its folder);
        returns its sha256, verified against the X-Memrun-Sha256 header and
        `expected_sha256`. A mismatch leaves nothing at `dest`."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        path = f"/api/v1/deployments/{deployment_id}/package"
        fd, temporary = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        try:
            with (
                os.fdopen(fd, "wb") as out,
                _refusals("GET", path),
                self._http.stream("GET", path) as response,
            ):
                announced = response.headers.get("X-Memrun-Sha256")
                try:
                    for chunk in response.iter_bytes(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                except httpx.HTTPError as exc:
                    raise ControlPlaneError(f"GET {path}: the download broke off: {exc}") from None
            sha256 = digest.hexdigest()
            for source, expected in (("X-Memrun-Sha256", announced), ("expected", expected_sha256)):
                if expected and expected.lower() != sha256:
                    raise ControlPlaneError(
                        f"the package of deployment {deployment_id} has sha256 {sha256}, but "
                        f"{source} says {expected}: refusing it"
                    )
            os.replace(temporary, dest)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return sha256

    def close(self) -> None:
        self._http.close()


@contextmanager
def _refusals(method: str, path: str) -> Iterator[None]:
    """The client's ApiError as this module's errors: 401 is CredentialRefused."""
    try:
        yield
    except ApiError as exc:
        if exc.status == 0:
            raise ControlPlaneError(exc.message) from None
        error = CredentialRefused if exc.status == 401 else ControlPlaneError
        raise error(f"{method} {path}: {exc.status} {exc.message}", status=exc.status) from None
