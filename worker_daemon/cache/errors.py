"""The cache's one exception family; every message names the URL and what to do."""

from __future__ import annotations


class CacheError(Exception):
    """Base of every error the warm cache raises on purpose."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.url = url


class UnsupportedURL(CacheError):
    """The URL's scheme is not one the cache can fetch (s3://, file:// or a plain path)."""


class ObjectNotFound(CacheError):
    """The object does not exist at its source (an S3 404 or a missing local file)."""


class AccessDenied(CacheError):
    """The source refused the credentials or the permission to read the object."""


class FetchFailed(CacheError):
    """The source could not be read to the end (server down, connection cut, changed object)."""


class ObjectChanged(FetchFailed):
    """The object was replaced at its source while it was being downloaded."""


class CacheFull(CacheError):
    """The object is larger than the whole cache capacity."""


class DiskFull(CacheError):
    """The filesystem under the cache ran out of space while an object was written."""


class UploadFailed(CacheError):
    """A result could not be written to the results location."""
