"""A `Worker.stats()` snapshot as a heartbeat body: compact and bounded in size.

The snapshot holds every detail (per-partition offsets, every cache counter); the
heartbeat keeps what the control plane shows and serves at /metrics:

    state, in_flight, concurrency, lag          numbers of the worker as a whole
    partitions, partition_lag                   owned partitions only, lag of each
    requests                                    RequestMetrics.snapshot(): totals and the
                                                last minute, latency in fixed buckets
    config                                      the settings it runs (ServiceConfig)
    cache                                       per tier (memory, disk, remote): hits,
                                                used and capacity bytes; largest and
                                                hottest entries; handover and prefetch
    hot_sets                                    per partition, the objects its requests
                                                read, newest first: what the partition's
                                                next owner prefetches (cache/hotset.py)
    stats                                       the other scalar counters (completed, ...)

Its size is bounded by the partitions owned (a few bytes each), the fixed latency
buckets, `LARGEST_COUNT` cache entries per list and `HOT_SETS_MAX_BYTES` of hot sets.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

# The runtime's states (Worker.stats()["state"]) as the control plane's worker states.
REPORTED_STATE = {
    "starting": "booting",
    "initializing": "booting",
    "running": "ready",
    "draining": "draining",
    "stopping": "draining",
    "stopped": "draining",  # the final heartbeat says stopped, with the exit code
}
_TOP_LEVEL = ("in_flight", "concurrency", "lag", "requests", "config")
_NOT_COUNTERS = ("worker", "service", "state", "partitions", "cache")
NAME_MAX_CHARS = 300
# Of the control plane's 64 KiB per heartbeat: the newest entries that fit (about 150 of
# a typical URL's length), which covers the hot part of a worker's partitions.
HOT_SETS_MAX_BYTES = 24 * 1024


def heartbeat_report(stats: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """The heartbeat body for `stats` (a `Worker.stats()` snapshot), plus `extra`."""
    report: dict[str, Any] = {"state": REPORTED_STATE.get(str(stats.get("state")), "booting")}
    for name in _TOP_LEVEL:
        if stats.get(name) is not None:
            report[name] = stats[name]
    partitions = stats.get("partitions")
    if isinstance(partitions, list):
        owned = [p for p in partitions if isinstance(p, dict) and "partition" in p]
        report["partitions"] = sorted(p["partition"] for p in owned)
        report["partition_lag"] = {
            str(p["partition"]): p["lag"] for p in owned if isinstance(p.get("lag"), int)
        }
    cache = stats.get("cache")
    if isinstance(cache, Mapping):
        report["cache"] = cache_report(cache)
        hot_sets = hot_sets_report(cache.get("hot_sets"))
        if hot_sets:
            report["hot_sets"] = hot_sets
    report["stats"] = {
        k: v
        for k, v in stats.items()
        if k not in report and k not in _NOT_COUNTERS and isinstance(v, str | int | float | bool)
    }
    report.update(extra)
    return report


def cache_report(cache: Mapping[str, Any]) -> dict[str, Any]:
    """`WarmCache.stats()` per tier: memory (objects in RAM), disk (local files) and
    remote (requests served by a download, and the real downloads: `fetches`,
    `fetched_bytes`, which count a download once however many requests waited on it),
    each with its hits; the largest entries."""
    if "error" in cache:
        return {"error": str(cache["error"])[:NAME_MAX_CHARS]}
    hits = _mapping(cache.get("hits"))
    served_bytes = _mapping(cache.get("bytes"))
    memory = _mapping(cache.get("memory"))
    disk = _mapping(cache.get("disk"))
    return {
        "requests": cache.get("requests", 0),
        "errors": cache.get("errors", 0),
        "memory": {
            "hits": hits.get("memory", 0),
            "used_bytes": memory.get("named_bytes", 0) + memory.get("decoded_bytes", 0),
            "capacity_bytes": memory.get("budget_bytes", 0),
            "objects": memory.get("named_objects", 0) + memory.get("decoded_values", 0),
            "evictions": memory.get("evictions", 0),
        },
        "disk": {
            "hits": hits.get("disk", 0),
            "used_bytes": disk.get("used_bytes", 0),
            "capacity_bytes": disk.get("capacity_bytes", 0),
            "objects": disk.get("entries", 0),
            "evictions": disk.get("evictions", 0),
        },
        "remote": {
            "hits": cache.get("misses", 0),
            "bytes": served_bytes.get("remote", 0),
            "fetches": cache.get("fetches", 0),
            "fetched_bytes": cache.get("fetched_bytes", 0),
            "fetch_seconds_total": cache.get("fetch_seconds_total", 0.0),
            # Requests served by a download another request ran (not fetches of their own).
            "waited": cache.get("waited", 0),
        },
        "handover": {
            "adopted": cache.get("adopted", 0),
            "adopted_bytes": cache.get("adopted_bytes", 0),
            # Brought ahead of requests on a partition move (from peers or S3).
            "prefetched": cache.get("prefetched", 0),
            "prefetched_bytes": cache.get("prefetched_bytes", 0),
            "prefetched_from_peers": cache.get("prefetched_from_peers", 0),
        },
        "largest": _entries(cache.get("largest")),
        "hottest": _entries(cache.get("hottest")),
    }


def hot_sets_report(entries: Any) -> dict[str, list[list[Any]]]:
    """`WarmCache.stats()["hot_sets"]` ([partition, url, size, version, last_access_s],
    newest first) as {"partition": [[url, size, version, last_access_s], ...]}, the
    newest entries that fit in HOT_SETS_MAX_BYTES of JSON."""
    out: dict[str, list[list[Any]]] = {}
    if not isinstance(entries, list):
        return out
    used = 2
    for entry in entries:
        if not isinstance(entry, list) or len(entry) != 5:
            continue
        key, item = str(entry[0]), entry[1:]
        # What it adds to json.dumps(out): the item and ", ", and a new key's `"k": [], `.
        cost = len(json.dumps(item)) + 2 + (0 if key in out else len(key) + 8)
        if used + cost > HOT_SETS_MAX_BYTES:
            break
        used += cost
        out.setdefault(key, []).append(item)
    return out


def _entries(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        return []
    return [
        {**entry, "name": str(entry.get("name", ""))[:NAME_MAX_CHARS]}
        for entry in value
        if isinstance(entry, Mapping)
    ]


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
