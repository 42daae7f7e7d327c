"""The package manifest (`manifest.json`): its schema, and member names every package obeys."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from memrun.errors import ConfigError, PackageRejected
from memrun.wire.config import ServiceConfig, service_config_from_dict

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
MAX_COMPONENT_BYTES = 255

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# A PEP 508 requirement starts with a project name; refusing anything else also keeps a
# dependency from being read as an installer option ("--index-url=...").
_REQUIREMENT = re.compile(r"^[A-Za-z0-9][^\x00-\x1f\x7f]{0,999}$")
_PYTHON_SPEC = re.compile(r"^[0-9A-Za-z.,*<>=!~ ]{1,200}$")
_KEYS = (
    "format",
    "service",
    "entry",
    "config",
    "dependencies",
    "requires_python",
    "files",
    "memrun_version",
    "created_at",
)


def is_requirement(text: str) -> bool:
    """Whether `text` can be handed to an installer as one PEP 508 requirement."""
    return bool(_REQUIREMENT.match(text))


def member_name_problem(name: str, *, max_name_length: int) -> tuple[str, str] | None:
    """Why `name` cannot be a path inside a package, as (reason code, phrase); None if it can.

    Names are relative, '/'-separated, plain UTF-8: no absolute paths, no '.', '..' or
    empty components, no backslashes, NUL or control characters, and bounded lengths.
    """
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > max_name_length:
        return "name_too_long", f"a path of {size} bytes (the limit is {max_name_length})"
    if any(ord(char) < 32 or ord(char) == 127 for char in name):
        return "bad_name", "a path with a NUL or control character"
    if "\\" in name:
        return "bad_name", "a path with a backslash"
    if name.startswith("/"):
        return "absolute_path", "an absolute path"
    parts = name.split("/")
    if ".." in parts:
        return "path_traversal", "a path with a '..' component"
    if "." in parts or "" in parts:
        return "bad_name", "a path with an empty or '.' component"
    if any(len(part.encode("utf-8", "surrogateescape")) > MAX_COMPONENT_BYTES for part in parts):
        return "name_too_long", f"a path with a component over {MAX_COMPONENT_BYTES} bytes"
    return None


def _invalid(message: str, **details: Any) -> PackageRejected:
    return PackageRejected("manifest_invalid", f"manifest.json: {message}", details=details)


def _string(data: Mapping[str, Any], key: str, *, max_length: int = 200) -> str:
    value = data[key]
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise _invalid(f"{key!r} must be a non-empty string of at most {max_length} characters")
    return value


def _service_config(value: object, service: str) -> ServiceConfig:
    try:
        config = service_config_from_dict(value)
    except ConfigError as exc:
        raise _invalid(f"'config' is not valid: {exc.message}") from None
    if config.name != service:
        raise _invalid(f"'config.name' is {config.name!r} but 'service' is {service!r}")
    return config


def _files(value: object, *, max_name_length: int) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _invalid("'files' must be an object mapping paths to sha256 hex digests")
    for name, digest in value.items():
        problem = member_name_problem(name, max_name_length=max_name_length)
        if problem is not None:
            raise _invalid(f"'files' lists {problem[1]}: {name[:200]!r}", member=name[:200])
        if name == MANIFEST_NAME:
            raise _invalid("'files' must not list manifest.json itself")
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise _invalid(f"'files' entry {name!r} must be a lowercase sha256 hex digest")
    return dict(sorted(value.items()))


@dataclass(frozen=True)
class Manifest:
    """What a package declares: its service, entry module, dependencies and file hashes."""

    service: str
    entry: str
    config: ServiceConfig
    dependencies: tuple[str, ...]
    requires_python: str | None
    files: Mapping[str, str]
    memrun_version: str
    created_at: str
    format: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "service": self.service,
            "entry": self.entry,
            "config": self.config.to_dict(),
            "dependencies": list(self.dependencies),
            "requires_python": self.requires_python,
            "files": dict(sorted(self.files.items())),
            "memrun_version": self.memrun_version,
            "created_at": self.created_at,
        }

    def to_json(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_dict(cls, data: object, *, max_name_length: int = 255) -> Manifest:
        """Validate parsed JSON against the schema; PackageRejected names the first problem."""
        if not isinstance(data, dict):
            raise _invalid("the top level must be a JSON object")
        missing = [key for key in _KEYS if key not in data]
        unknown = sorted(key for key in data if key not in _KEYS)
        if missing or unknown:
            raise _invalid(
                f"missing keys {missing}, unknown keys {unknown}", missing=missing, unknown=unknown
            )
        if data["format"] != FORMAT_VERSION or isinstance(data["format"], bool):
            raise _invalid(
                f"'format' is {data['format']!r}; this memrun reads format {FORMAT_VERSION}"
            )
        service = _string(data, "service")
        config = _service_config(data["config"], service)
        files = _files(data["files"], max_name_length=max_name_length)
        entry = _string(data, "entry", max_length=max_name_length)
        if not entry.endswith(".py") or entry not in files:
            raise _invalid(f"'entry' {entry!r} must be a .py file listed in 'files'", member=entry)
        dependencies = data["dependencies"]
        if not isinstance(dependencies, list) or not all(
            isinstance(dep, str) and is_requirement(dep) for dep in dependencies
        ):
            raise _invalid("'dependencies' must be a list of PEP 508 requirement strings")
        requires_python = data["requires_python"]
        if requires_python is not None and not (
            isinstance(requires_python, str) and _PYTHON_SPEC.match(requires_python)
        ):
            raise _invalid("'requires_python' must be null or a version specifier like '>=3.11'")
        created_at = _string(data, "created_at")
        try:
            datetime.fromisoformat(created_at)
        except ValueError:
            raise _invalid(f"'created_at' {created_at!r} is not an ISO 8601 time") from None
        return cls(
            service=service,
            entry=entry,
            config=config,
            dependencies=tuple(dependencies),
            requires_python=requires_python,
            files=files,
            memrun_version=_string(data, "memrun_version", max_length=64),
            created_at=created_at,
        )

    @classmethod
    def from_json(cls, raw: bytes, *, max_name_length: int = 255) -> Manifest:
        """Parse and validate manifest.json's bytes (duplicate keys are refused)."""
        try:
            data = json.loads(raw.decode("utf-8"), object_pairs_hook=_refuse_duplicate_keys)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise _invalid(f"not valid UTF-8 JSON ({exc})") from None
        return cls.from_dict(data, max_name_length=max_name_length)


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result
