"""Schemas of the provisioning API."""

from __future__ import annotations

from ninja import Field, Schema


class ScaleIn(Schema):
    workers: int = Field(ge=0, description="desired workers, within min_workers..max_workers")
