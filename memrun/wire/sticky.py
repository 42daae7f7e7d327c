"""Sticky key templates: "user_id:dataset_id" turns a payload into the Kafka key "42:sales"."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from memrun.errors import ConfigError, StickyKeyError

_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class StickyTemplate:
    """Payload fields joined by ':'; a dotted field ("user.id") reads a nested object."""

    fields: tuple[str, ...]

    @classmethod
    def parse(cls, template: str) -> StickyTemplate:
        if not isinstance(template, str) or not template.strip():
            raise ConfigError(
                "sticky_key must name payload fields joined by ':', e.g. 'user_id:dataset_id'"
            )
        fields = tuple(part.strip() for part in template.split(":"))
        for name in fields:
            if not _FIELD.match(name):
                raise ConfigError(
                    f"sticky_key {template!r}: {name!r} is not a field name; use letters, "
                    "digits and '_' joined by ':', e.g. 'user_id:dataset_id'"
                )
        if len(set(fields)) != len(fields):
            raise ConfigError(f"sticky_key {template!r} names a field twice")
        return cls(fields)

    def __str__(self) -> str:
        return ":".join(self.fields)

    def key_for(self, payload: Any) -> str:
        """The routing key for `payload`; StickyKeyError names the first missing field."""
        if not isinstance(payload, Mapping):
            raise StickyKeyError(
                f"the payload must be a JSON object with fields {', '.join(self.fields)}",
                details={"fields": list(self.fields)},
            )
        parts = []
        for name in self.fields:
            value: Any = payload
            for step in name.split("."):
                if not isinstance(value, Mapping) or step not in value:
                    raise StickyKeyError(
                        f"payload field {name!r} is required by the sticky key {str(self)!r}",
                        details={"field": name, "sticky_key": str(self)},
                    )
                value = value[step]
            if isinstance(value, (dict, list)) or value is None:
                raise StickyKeyError(
                    f"payload field {name!r} must be a string or number to route by it",
                    details={"field": name, "sticky_key": str(self)},
                )
            parts.append(str(value).lower() if isinstance(value, bool) else str(value))
        return ":".join(parts)
