"""Schemas of the provisioning API."""

from __future__ import annotations

from ninja import Field, Schema


class ScaleIn(Schema):
    workers: int = Field(ge=0, description="desired workers, within min_workers..max_workers")


class GcIn(Schema):
    dry_run: bool = Field(default=False, description="only say what would be freed")


class GcKindOut(Schema):
    kind: str = Field(description="artifacts, worker_folders or venvs")
    count: int
    size_bytes: int


class GcItemOut(Schema):
    kind: str
    location: str = Field(description="a package URL or a folder")
    size_bytes: int


class GcOut(Schema):
    """What was freed (or, with dry_run, what would be): per kind and item by item."""

    dry_run: bool
    kinds: list[GcKindOut]
    items: list[GcItemOut]
    size_bytes: int
