"""Byte sizes written the Kubernetes way: "32Gi", "600Gi", "512Mi", "4G", or plain bytes."""

from __future__ import annotations

import re

from memrun.errors import ConfigError

_UNITS = {
    "": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*$", re.IGNORECASE)


def parse_size(value: str | int, *, field: str = "size") -> int:
    """Return `value` in bytes; raise ConfigError naming `field` when it is not a size."""
    if isinstance(value, bool):
        raise ConfigError(f"{field}: expected a size like '32Gi', got {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ConfigError(f"{field}: a size must be positive, got {value}")
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ConfigError(
            f"{field}: {value!r} is not a size; write a number with a unit "
            "such as '512Mi', '32Gi' or '600Gi' (Ki, Mi, Gi, Ti or K, M, G, T)"
        )
    number, unit = match.groups()
    size = int(float(number) * _UNITS[(unit or "").lower()])
    if size <= 0:
        raise ConfigError(f"{field}: a size must be positive, got {value!r}")
    return size


def format_size(size_bytes: int) -> str:
    """The shortest exact binary-unit spelling of `size_bytes` ("32Gi"), else bytes."""
    for unit, factor in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if size_bytes >= factor and size_bytes % factor == 0:
            return f"{size_bytes // factor}{unit}"
    return str(size_bytes)
