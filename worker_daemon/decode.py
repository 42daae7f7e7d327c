"""Decode step: a Kafka message -> a `Request` (ids, key, deadline, JSON payload).

Messages from foreign producers (kcat, a Java client) may lack every memrun header: they
still run, under a request id derived from topic/partition/offset, which stays the same
on redelivery so the outcome stays idempotent.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from memrun.wire.protocol import (
    HEADER_ATTEMPT,
    HEADER_DEADLINE_MS,
    HEADER_REQUEST_ID,
    decode_headers,
)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


class InvalidPayload(Exception):
    """The message value is not a JSON document."""


@dataclass(slots=True)
class Request:
    """One decoded message. `payload_error` is set (and `payload` None) when the value
    is not JSON: the request then fails without running the handler."""

    request_id: str
    key: str | None
    attempt: int
    deadline_ms: int | None
    payload: Any
    payload_error: InvalidPayload | None
    topic: str
    partition: int
    offset: int
    value: bytes
    headers: dict[str, str]


def derived_request_id(topic: str, partition: int, offset: int) -> str:
    return f"{topic}:{partition}:{offset}"


def decode_request(
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, bytes | None]] | None,
) -> Request:
    fields = decode_headers(headers)
    request_id = fields.get(HEADER_REQUEST_ID, "")
    if not _REQUEST_ID.match(request_id):
        request_id = derived_request_id(topic, partition, offset)
    raw = value or b""
    payload: Any = None
    payload_error: InvalidPayload | None = None
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        payload_error = InvalidPayload(f"the payload is not JSON: {exc}")
    return Request(
        request_id=request_id,
        key=key.decode("utf-8", "replace") if key is not None else None,
        attempt=_int(fields.get(HEADER_ATTEMPT), default=1) or 1,
        deadline_ms=_int(fields.get(HEADER_DEADLINE_MS), default=None),
        payload=payload,
        payload_error=payload_error,
        topic=topic,
        partition=partition,
        offset=offset,
        value=raw,
        headers=fields,
    )


def _int(text: str | None, *, default: int | None) -> int | None:
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        return default
