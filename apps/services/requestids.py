"""Request ids that carry what polling needs: the service, when, and who submitted.

GET /requests/{id} must know a request's service (its outcome is kept under the
service's prefix) and its submitter (who may poll it without the read role). An invoke
used to write both to Redis per request; the id now carries them, signed with the
control plane's SECRET_KEY, so an invoke writes nothing but its Kafka message. A forged,
altered or foreign id fails the signature and reads as never submitted (404), as does
one older than the outcomes are kept (protocol.REPLY_TTL_S).

Form: `{service}.{36 chars of base64url}` over submitted_ms (6 bytes), randomness (7),
the submitter's tag (6: a hash of its caller name) and the MAC (8, HMAC-SHA256 of the
service and the rest). At most 100 characters for a 63-character service name, so it
fits the worker's request id pattern and the log's request id column whole.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
from dataclasses import dataclass

from django.conf import settings

from memrun.wire import protocol

_MAC_BYTES = 8
_BODY_CHARS = 36  # base64 of 27 bytes: no padding
_SALT = b"memrun.request-id\0"


@dataclass(frozen=True, slots=True)
class RequestRef:
    """What a valid request id says."""

    service: str
    submitted_ms: int
    caller_tag: bytes

    def submitted_by(self, caller: str) -> bool:
        return hmac.compare_digest(self.caller_tag, _caller_tag(caller))


def request_id_new(*, service: str, caller: str | None) -> str:
    """A new request id for `service`, submitted by `caller` (None: by the control plane
    itself, e.g. a dead letter replay; then only readers of the service may poll it)."""
    head = protocol.now_ms().to_bytes(6, "big") + os.urandom(7) + _caller_tag(caller or "")
    mac = hmac.digest(_key(settings.SECRET_KEY), service.encode() + b"." + head, "sha256")
    return f"{service}.{base64.urlsafe_b64encode(head + mac[:_MAC_BYTES]).decode()}"


def request_id_parse(request_id: str) -> RequestRef | None:
    """What `request_id` says, or None when this control plane did not make it (or made
    it longer ago than outcomes are kept)."""
    service, _, body = request_id.rpartition(".")
    if not service or len(body) != _BODY_CHARS:
        return None
    try:
        raw = base64.urlsafe_b64decode(body)
    except (binascii.Error, ValueError):
        return None
    head, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
    expected = hmac.digest(_key(settings.SECRET_KEY), service.encode() + b"." + head, "sha256")
    if not hmac.compare_digest(mac, expected[:_MAC_BYTES]):
        return None
    submitted_ms = int.from_bytes(head[:6], "big")
    if protocol.now_ms() - submitted_ms > protocol.REPLY_TTL_S * 1000:
        return None
    return RequestRef(service=service, submitted_ms=submitted_ms, caller_tag=head[13:19])


@functools.lru_cache(maxsize=4)
def _key(secret: str) -> bytes:
    return hashlib.sha256(_SALT + secret.encode()).digest()


def _caller_tag(caller: str) -> bytes:
    return hashlib.sha256(caller.encode()).digest()[:6]
