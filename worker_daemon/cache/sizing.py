"""An estimate of how many bytes of RAM a decoded value holds, for the memory budget."""

from __future__ import annotations

import sys
from typing import Any

SAMPLE_ITEMS = 256
MAX_DEPTH = 8


def measure_size_bytes(obj: Any) -> int:
    """Bytes held by `obj`: `nbytes` when it has one (NumPy, PyArrow, Torch), else a deep
    size of containers and instance attributes. Large containers are sampled (the first
    SAMPLE_ITEMS items, scaled up), so this stays fast on a dict of millions of entries;
    declare `size_bytes` when the estimate matters."""
    return _measure(obj, set(), 0)


def _measure(obj: Any, seen: set[int], depth: int) -> int:
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    nbytes = getattr(obj, "nbytes", None)
    if isinstance(nbytes, int) and not isinstance(obj, type):
        return nbytes
    size = sys.getsizeof(obj)
    if depth >= MAX_DEPTH or isinstance(obj, str | bytes | bytearray | int | float | type):
        return size
    items: list[Any]
    if isinstance(obj, dict):
        count = len(obj)
        items = [x for kv in _first(obj.items(), SAMPLE_ITEMS) for x in kv]
    elif isinstance(obj, list | tuple | set | frozenset):
        count = len(obj)
        items = _first(obj, SAMPLE_ITEMS)
    elif hasattr(obj, "__dict__"):
        return size + _measure(vars(obj), seen, depth + 1)
    else:
        return size
    sampled = sum(_measure(item, seen, depth + 1) for item in items)
    taken = min(count, SAMPLE_ITEMS)
    return size + (sampled * count // taken if taken else 0)


def _first(iterable: Any, count: int) -> list[Any]:
    out: list[Any] = []
    for item in iterable:
        if len(out) == count:
            break
        out.append(item)
    return out
