"""A worker's latest stats snapshot in a local file, for whoever runs it by hand or in tests.

Stats are numbers, not something a person reads in the log stream: a provisioned worker
sends them in its heartbeats, and `MEMRUN_STATS_PATH` makes any worker also keep its
newest snapshot (one JSON object, replaced whole every stats interval) in a file.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


def stats_write(path: Path, stats: dict[str, Any]) -> None:
    """Replace `path` with `stats` plus `ts` (epoch seconds); a reader never sees a
    partial file (temp file, then rename)."""
    body = json.dumps({"ts": round(time.time(), 3), **stats}, default=str, separators=(",", ":"))
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(body)
    os.replace(temp, path)


def stats_read(path: Path) -> dict[str, Any] | None:
    """The newest snapshot in `path`; None before the first one."""
    try:
        value = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return value if isinstance(value, dict) else None
