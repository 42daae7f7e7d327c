"""The one exception family of the memrun SDK."""

from __future__ import annotations

from typing import Any


class MemrunError(Exception):
    """Base of every error memrun raises on purpose; `details` is JSON-able context."""

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}


class ConfigError(MemrunError, ValueError):
    """A service definition or decorator is used wrongly; the message says the fix."""


class StickyKeyError(MemrunError, ValueError):
    """A payload lacks a field the sticky key template needs."""


class HandlerError(MemrunError):
    """A handler raised or timed out; `details` carries the remote error type and message."""


class RequestTimeout(MemrunError):
    """The wait for a reply expired; the request is still queued and keeps its id."""


class ApiError(MemrunError):
    """The control plane answered with an error; `status` is the HTTP status."""

    def __init__(self, message: str, *, status: int, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, details=details)
        self.status = status


class PackageRejected(MemrunError, ValueError):
    """A handler package is unsafe or malformed; `reason` is a short code, the message says why."""

    def __init__(self, reason: str, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, details={"reason": reason, **(details or {})})
        self.reason = reason
