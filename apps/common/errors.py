"""The one error type of the control plane: what went wrong, for whom, and what to do.

Services raise `DomainError`; memrun_site/api.py turns it (and every framework error)
into one HTTP shape, `{"message": str, "details": {...}}`, in one place.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import models


class DomainError(Exception):
    """A refusal a client can act on: `status` is the HTTP status, `details` JSON-able,
    `headers` extra response headers (`Retry-After` on a 429)."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.details: dict[str, Any] = details or {}
        self.headers: dict[str, str] = headers or {}


def domain_error_from_validation(exc: ValidationError, *, what: str) -> DomainError:
    """`full_clean`'s errors as a DomainError naming each field: 409 for a duplicate
    (a unique rule), 422 otherwise."""
    by_field = exc.error_dict if hasattr(exc, "error_dict") else {NON_FIELD_ERRORS: exc.error_list}
    fields: dict[str, list[str]] = {}
    codes: set[str | None] = set()
    for field, errors in by_field.items():
        name = "__all__" if field == NON_FIELD_ERRORS else field
        for error in errors:
            codes.add(error.code)
            fields.setdefault(name, []).extend(error.messages)
    summary = "; ".join(_field_summary(name, messages) for name, messages in fields.items())
    status = 409 if codes & {"unique", "unique_together"} else 422
    return DomainError(f"invalid {what}: {summary}", status=status, details={"fields": fields})


def _field_summary(name: str, messages: list[str]) -> str:
    text = " ".join(messages)
    # memrun's own parsers already start their messages with the field's name.
    return text if name == "__all__" or text.startswith(name) else f"{name}: {text}"


def full_clean_or_raise(
    instance: models.Model,
    *,
    what: str,
    errors: dict[str, list[ValidationError]] | None = None,
    exclude: list[str] | None = None,
) -> None:
    """`instance.full_clean()`, merged with `errors` found before it (on fields left out
    by `exclude`), raised as one DomainError."""
    found = dict(errors or {})
    try:
        instance.full_clean(exclude=exclude)
    except ValidationError as exc:
        found = {**exc.error_dict, **found}
    if found:
        raise domain_error_from_validation(ValidationError(found), what=what)
