"""The worker's warm data path: decoded objects in RAM, files on local disk, S3 behind.

`WarmCache.open(settings)` is the one entry point; the SDK's request context delegates
`get_or_fetch`, `set_object`, `get_object` and `upload_result` to it.
"""

from worker_daemon.cache.errors import (
    AccessDenied,
    CacheError,
    CacheFull,
    DiskFull,
    FetchFailed,
    ObjectChanged,
    ObjectNotFound,
    UnsupportedURL,
    UploadFailed,
)
from worker_daemon.cache.settings import CacheSettings
from worker_daemon.cache.tiers import Fetched, Tier
from worker_daemon.cache.warm import WarmCache

__all__ = [
    "AccessDenied",
    "CacheError",
    "CacheFull",
    "CacheSettings",
    "DiskFull",
    "FetchFailed",
    "Fetched",
    "ObjectChanged",
    "ObjectNotFound",
    "Tier",
    "UnsupportedURL",
    "UploadFailed",
    "WarmCache",
]
