"""Formatting for the pages: ratios, sizes and durations, with "-" for a number not
reported yet."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime

from django import template
from django.utils import timezone

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


@register.filter
def ago(moment: datetime | None) -> str:
    """How long ago, to the second while it is under a minute: heartbeats come every few
    seconds, and Django's `timesince` says "0 minutes" for all of them."""
    if moment is None:
        return "never"
    return f"{age(moment)} ago"


@register.filter
def age(moment: datetime | None) -> str:
    """How long since `moment`: "7 s", "3 min", "1 h 25 min", "3 d"."""
    if moment is None:
        return "-"
    return elapsed(int((timezone.now() - moment).total_seconds()))


def elapsed(seconds: int) -> str:
    seconds = max(0, seconds)  # a clock a little ahead of ours is "now", not the future
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d"
