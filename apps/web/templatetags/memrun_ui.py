"""Formatting for the pages: ratios, sizes and durations, with "-" for a number not
reported yet."""

from __future__ import annotations

import json
from collections.abc import Iterable

from django import template

from memrun.wire.sizes import format_size

register = template.Library()


@register.filter
def percent(ratio: float | None) -> str:
    return "-" if ratio is None else f"{100 * ratio:.0f}%"


@register.filter
def size(size_bytes: int | None) -> str:
    if size_bytes is None:
        return "-"
    if size_bytes < 1024:
        return f"{size_bytes} B"
    for unit, factor in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if size_bytes >= factor:
            exact = format_size(size_bytes)
            return exact if exact.endswith(unit) else f"{size_bytes / factor:.1f}{unit}"
    return str(size_bytes)


@register.filter
def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


@register.filter
def pretty_json(value: object) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


@register.filter
def ranges(numbers: Iterable[int]) -> str:
    """(0, 1, 2, 3, 7) -> "0-3, 7": a worker's partitions at a glance."""
    spans: list[list[int]] = []
    for n in sorted(numbers):
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans) or "-"
