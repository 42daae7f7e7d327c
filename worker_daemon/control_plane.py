"""The worker's side of the control plane: heartbeats and package downloads over HTTP.

A provisioned worker is configured by its environment (set by the provisioner, see
apps/provisioning/specs.py): MEMRUN_URL, MEMRUN_WORKER_ID, MEMRUN_WORKER_TOKEN (its own
`mrw_` credential, I8), MEMRUN_SERVICE, MEMRUN_DEPLOYMENT_ID, MEMRUN_PACKAGE_SHA256,
besides what WorkerSettings reads (MEMRUN_WORK_ROOT, MEMRUN_CACHE_ROOT, brokers, S3).
Stdlib HTTP only: the worker never imports Django.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from memrun.errors import ConfigError

# The control plane no longer accepts this worker's credential (it was stopped, declared
# dead, or never existed): the worker exits with this code and is not restarted.
EXIT_CREDENTIAL_REFUSED = 77
ACTION_RUN = "run"
ACTION_DRAIN = "drain"
_CHUNK = 1024 * 1024

Opener = Callable[..., Any]


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
    """HTTP calls of one worker to the control plane at `url`, with its `token`.
    `opener` is urllib's `urlopen` unless a test hands in another."""

    def __init__(
        self,
        *,
        url: str,
        token: str,
        timeout_s: float = 10.0,
        opener: Opener = urllib.request.urlopen,
    ) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self._timeout_s = timeout_s
        self._open = opener

    def heartbeat(self, worker_id: str, report: Mapping[str, Any]) -> str:
        """Send a heartbeat; returns the action the control plane asks for ("run" or
        "drain"). Raises CredentialRefused on 401, ControlPlaneError otherwise."""
        path = f"/api/v1/workers/{urllib.parse.quote(worker_id)}/heartbeat"
        body = json.dumps(report, default=str).encode()
        with self._request("POST", path, body) as response:
            answer = json.loads(response.read() or b"{}")
        action = answer.get("action") if isinstance(answer, dict) else None
        return action if action in (ACTION_RUN, ACTION_DRAIN) else ACTION_RUN

    def fetch_package(self, deployment_id: int, dest: Path, *, expected_sha256: str | None) -> str:
        """Stream the deployment's package to `dest` (via a temporary file in its folder);
        returns its sha256, verified against the X-Memrun-Sha256 header and
        `expected_sha256`. A mismatch leaves nothing at `dest`."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        fd, temporary = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        try:
            with (
                os.fdopen(fd, "wb") as out,
                self._request("GET", f"/api/v1/deployments/{deployment_id}/package") as response,
            ):
                announced = response.headers.get("X-Memrun-Sha256")
                while chunk := response.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
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

    def _request(
        self, method: str, path: str, body: bytes | None = None
    ) -> http.client.HTTPResponse:
        request = urllib.request.Request(self.url + path, data=body, method=method)
        request.add_header("Authorization", f"Bearer {self._token}")
        request.add_header("Accept", "application/json")
        if body is not None:
            request.add_header("Content-Type", "application/json")
        try:
            response = cast(http.client.HTTPResponse, self._open(request, timeout=self._timeout_s))
        except urllib.error.HTTPError as exc:
            message = _error_message(exc)
            error = CredentialRefused if exc.code == 401 else ControlPlaneError
            raise error(f"{method} {path}: {exc.code} {message}", status=exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ControlPlaneError(
                f"cannot reach the control plane at {self.url}: {reason}"
            ) from None
        return response


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read() or b"{}")
    except ValueError:
        return str(exc.reason)
    return str(body.get("message") or exc.reason) if isinstance(body, dict) else str(exc.reason)
