"""Every tunable of the warm cache, in one frozen dataclass with units in the names."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

MiB = 2**20
GiB = 2**30
MAX_CAPACITY_BYTES = 600 * GiB
WORKER_CACHE_ROOT = Path("/var/lib/memrun/cache")


@dataclass(frozen=True)
class CacheSettings:
    """Where the cache lives, how big each tier may grow and how downloads run.

    Files go under `root / service`; `capacity_bytes` bounds the bytes of cached files
    (index and temp files of in-flight downloads count against it too: the latter are
    reserved before they are written). `memory_budget_bytes` bounds decoded values and
    named objects in RAM. `max_age_s` (None: never) is how long a cached object is
    served without asking its source whether it changed.
    """

    root: Path
    service: str
    capacity_bytes: int
    memory_budget_bytes: int
    max_age_s: float | None = None
    s3_endpoint_url: str | None = None
    results_url: str | None = None
    download_part_size_bytes: int = 16 * MiB
    download_concurrency: int = 8
    download_part_attempts: int = 3
    probation_fraction: float = 0.1
    ghost_entries: int = 4096
    index_map_size_bytes: int = 64 * MiB
    index_max_map_size_bytes: int = 4 * GiB
    # Caches of this service's stopped workers on this host (warm deploys), and the folder
    # of its running workers' cache roots (warm moves): read-only, cache/handover.py.
    handover_dir: Path | None = None
    peers_dir: Path | None = None
    # The warm handoff (worker_daemon/handoff.py): what one assignment may prefetch of
    # its partitions' hot sets, in bytes (None: a quarter of capacity_bytes) and time.
    prefetch_max_bytes: int | None = None
    prefetch_max_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.service or "/" in self.service or self.service in {".", ".."}:
            raise ValueError(f"cache service name {self.service!r} must be a plain folder name")
        if not 0 < self.capacity_bytes <= MAX_CAPACITY_BYTES:
            raise ValueError(
                f"cache capacity_bytes={self.capacity_bytes} must be positive and at most "
                f"{MAX_CAPACITY_BYTES} (600Gi); lower the service's disk"
            )
        if self.memory_budget_bytes < 0:
            raise ValueError("cache memory_budget_bytes must not be negative")
        if self.download_part_size_bytes < 64 * 2**10 or self.download_concurrency < 1:
            raise ValueError("download_part_size_bytes must be >= 64Ki, download_concurrency >= 1")
        if not 0 < self.probation_fraction < 1:
            raise ValueError("probation_fraction must be between 0 and 1")

    @property
    def service_dir(self) -> Path:
        return self.root / self.service

    @property
    def prefetch_budget_bytes(self) -> int:
        if self.prefetch_max_bytes is not None:
            return self.prefetch_max_bytes
        return self.capacity_bytes // 4

    @classmethod
    def from_env(
        cls,
        service: str,
        *,
        disk_bytes: int,
        memory_bytes: int,
        environ: Mapping[str, str] = os.environ,
    ) -> CacheSettings:
        """Settings for a worker of `service` with the service's declared disk and memory.

        The root is MEMRUN_CACHE_ROOT, else `$MEMRUN_HOME/cache` (a local worker), else
        /var/lib/memrun/cache (a provisioned worker). Half the service's memory holds
        decoded values; results go to `s3://$MEMRUN_S3_BUCKET/results/{service}/` when a
        bucket is configured, else under MEMRUN_HOME. MEMRUN_CACHE_HANDOVER_DIR holds the
        caches earlier workers of the service handed over, MEMRUN_CACHE_PEERS_DIR the cache
        roots of its workers running beside this one, one folder each (cache/handover.py).
        MEMRUN_CACHE_PREFETCH_MAX_BYTES and MEMRUN_CACHE_PREFETCH_MAX_S bound the warm
        handoff's prefetch of one assignment.
        """
        if environ.get("MEMRUN_CACHE_ROOT"):
            root = Path(environ["MEMRUN_CACHE_ROOT"])
        elif environ.get("MEMRUN_HOME"):
            root = Path(environ["MEMRUN_HOME"]) / "cache"
        else:
            root = WORKER_CACHE_ROOT
        bucket = environ.get("MEMRUN_S3_BUCKET")
        if bucket:
            results_url: str | None = f"s3://{bucket}/results/{service}/"
        elif environ.get("MEMRUN_HOME"):
            results = Path(environ["MEMRUN_HOME"]) / "results" / service
            results_url = results.resolve().as_uri() + "/"
        else:
            results_url = None
        max_age = environ.get("MEMRUN_CACHE_MAX_AGE_S")
        handover = environ.get("MEMRUN_CACHE_HANDOVER_DIR")
        peers = environ.get("MEMRUN_CACHE_PEERS_DIR")
        prefetch_bytes = environ.get("MEMRUN_CACHE_PREFETCH_MAX_BYTES")
        prefetch_s = environ.get("MEMRUN_CACHE_PREFETCH_MAX_S")
        return cls(
            root=root,
            service=service,
            capacity_bytes=min(disk_bytes, MAX_CAPACITY_BYTES),
            memory_budget_bytes=memory_bytes // 2,
            max_age_s=float(max_age) if max_age else None,
            # Only the standard AWS variables, which come from the service's secrets: the
            # appliance's own S3 settings are not given to workers (I8).
            s3_endpoint_url=environ.get("AWS_ENDPOINT_URL_S3")
            or environ.get("AWS_ENDPOINT_URL")
            or None,
            results_url=results_url,
            handover_dir=Path(handover) if handover else None,
            peers_dir=Path(peers) if peers else None,
            prefetch_max_bytes=int(prefetch_bytes) if prefetch_bytes else None,
            prefetch_max_s=float(prefetch_s) if prefetch_s else cls.prefetch_max_s,
        )
