"""The machine settings a worker's PEP 723 install honours, passed from the appliance.

A worker runs with a scrubbed environment (its own credential, the brokers, the data
path's S3, nothing of the appliance's), but installing dependencies needs the machine's
trust store, package index mirror and proxy: behind a corporate CA or mirror, uv fails
without them. These are settings of the machine, not secrets, so an explicit list of
them goes through: the control plane copies those it has into every worker's
environment, and the worker hands the installer those, and nothing else of its own
(never its token, AWS keys or database URL).

An index or proxy URL may still carry a user and password (`https://user:pass@mirror/`):
`redact_urls` hides them in any text that is logged or shown.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

TRUST_STORE = (
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "PIP_CERT",
    "UV_NATIVE_TLS",
    "UV_SYSTEM_CERTS",
)
PACKAGE_INDEX = (
    "UV_DEFAULT_INDEX",
    "UV_INDEX",
    "UV_INDEX_URL",
    "UV_EXTRA_INDEX_URL",
    "UV_FIND_LINKS",
    "UV_INDEX_STRATEGY",
    "UV_INSECURE_HOST",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_FIND_LINKS",
    "PIP_TRUSTED_HOST",
)
PROXY = tuple(
    name
    for base in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
    for name in (base, base.lower())
)
# Every variable a worker's install step may receive from the appliance, and only these.
INSTALL_ENV_NAMES = (*TRUST_STORE, *PACKAGE_INDEX, *PROXY)

_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def install_env_pick(environ: Mapping[str, str]) -> dict[str, str]:
    """The allowlisted install settings found (set, not blank) in `environ`."""
    return {name: environ[name] for name in INSTALL_ENV_NAMES if environ.get(name, "").strip()}


def redact_urls(text: str) -> str:
    """`text` with the user and password of every URL in it replaced by `***`."""
    return _URL_USERINFO.sub(r"\g<scheme>***@", text)
