"""Bearer secrets: random, prefixed by their kind, stored only as a sha256."""

from __future__ import annotations

import hashlib
import secrets

API_TOKEN_PREFIX = "mr_"
WORKER_TOKEN_PREFIX = "mrw_"
# A remote worker's single-use join token, the one secret in its cloud-init user-data.
JOIN_TOKEN_PREFIX = "mrj_"
# Enough of the secret to tell tokens apart in a list, far too little to guess the rest.
SHOWN_CHARS = 8


def secret_new(*, prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_shown_part(secret: str) -> str:
    return secret[:SHOWN_CHARS]
