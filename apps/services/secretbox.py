"""Secrets at rest: Fernet encryption of a secret's KEY=VALUE pairs, and the keys that do it.

The keys are `MEMRUN_SECRETS_KEYS` (a comma list of Fernet keys, newest first), else one
generated on first use and kept in `MEMRUN_HOME/secrets-key` (mode 0600; a sandboxed local
worker sees an empty MEMRUN_HOME, apps/provisioning/local_sandbox.py). A MultiFernet
encrypts with the first key and decrypts with any, so a key rotates by putting a new one
first and re-encrypting (`secrets_reencrypt`, `manage.py secrets_rotate`), then dropping
the old one.

Which names a secret may set (`secret_key_problem`) lives here too: they become
environment variables of a worker, beside the ones the platform sets.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.crypto import salted_hmac
from django.views.decorators.debug import sensitive_variables

from memrun.home import secret_file_ensure
from memrun.wire import INSTALL_ENV_NAMES

KEY_FILE_NAME = "secrets-key"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# What the platform sets in a worker's env, or what its interpreter and installer read:
# a secret may not replace them (a secret's REDIS_URL would re-route the worker).
RESERVED_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "PWD",
        "TMPDIR",
        "TZ",
        "LANG",
        "TERM",
        "HOSTNAME",
        "VIRTUAL_ENV",
        "REDIS_URL",
        "DATABASE_URL",
        "SECRET_KEY",
        *INSTALL_ENV_NAMES,
    }
)
RESERVED_PREFIXES = ("MEMRUN_", "KAFKA_", "PYTHON", "LC_", "LD_", "UV_", "PIP_", "CELERY_")


class SecretUnreadable(Exception):
    """A stored secret that none of the configured keys opens (a key was dropped too early)."""


def secret_key_problem(key: str) -> str | None:
    """Why `key` cannot be a secret's variable name, or None when it can."""
    if not _ENV_NAME.match(key):
        return (
            f"{key!r} is not an environment variable name: use letters, digits and '_', "
            "not starting with a digit, at most 128 characters"
        )
    upper = key.upper()
    if upper in RESERVED_NAMES or upper.startswith(RESERVED_PREFIXES):
        return (
            f"{key} is set by memrun itself for every worker (reserved: "
            f"{', '.join(p + '*' for p in RESERVED_PREFIXES)}, REDIS_URL, PATH, HOME, ...); "
            "pick another name"
        )
    return None


def secrets_fernet() -> MultiFernet:
    """The MultiFernet of the configured keys (see the module's docstring)."""
    raw = list(settings.MEMRUN_SECRETS_KEYS) or [_key_file(Path(settings.MEMRUN_HOME))]
    keys = []
    for position, key in enumerate(raw, start=1):
        try:
            keys.append(Fernet(key))
        except (ValueError, TypeError):
            # The key itself is never quoted: it is the secret that guards the others.
            raise ImproperlyConfigured(
                f"MEMRUN_SECRETS_KEYS: key {position} is not a Fernet key (32 url-safe "
                "base64-encoded bytes; make one with `python -c 'from cryptography.fernet "
                "import Fernet; print(Fernet.generate_key().decode())'`)"
            ) from None
    return MultiFernet(keys)


@sensitive_variables("values")
def secret_encrypt(values: dict[str, str]) -> str:
    return secrets_fernet().encrypt(json.dumps(values, sort_keys=True).encode()).decode()


@sensitive_variables("plain", "values")
def secret_decrypt(ciphertext: str, *, name: str) -> dict[str, str]:
    try:
        plain = secrets_fernet().decrypt(ciphertext.encode())
    except InvalidToken:
        raise SecretUnreadable(
            f"secret {name} cannot be decrypted with the configured keys; put the key it "
            "was stored with back into MEMRUN_SECRETS_KEYS (after the new one)"
        ) from None
    values: dict[str, str] = json.loads(plain)
    return values


def secret_rotate(ciphertext: str, *, name: str) -> str:
    """`ciphertext` encrypted again with the newest key."""
    try:
        return secrets_fernet().rotate(ciphertext.encode()).decode()
    except InvalidToken:
        raise SecretUnreadable(
            f"secret {name} cannot be decrypted with the configured keys, so it cannot be "
            "re-encrypted; put the key it was stored with back into MEMRUN_SECRETS_KEYS"
        ) from None


@sensitive_variables("values", "payload")
def secret_fingerprint(values: dict[str, str]) -> str:
    """A short keyed hash of the pairs: tells versions apart, reveals nothing guessable
    (a plain hash of a short value could be brute-forced offline)."""
    payload = json.dumps(values, sort_keys=True)
    return salted_hmac("memrun.secrets.fingerprint", payload, algorithm="sha256").hexdigest()[:12]


def _key_file(home: Path) -> bytes:
    """The key in `home/secrets-key`, made on first use (memrun.home.secret_file_ensure:
    two processes starting at once agree on one key)."""
    # The appliance makes its home at start; a process given a home not made yet (a
    # fresh MEMRUN_HOME) makes it here, private like everything in it.
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    return secret_file_ensure(home / KEY_FILE_NAME, make=Fernet.generate_key)
