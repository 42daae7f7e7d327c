"""`ServiceConfig`: a service's settings, validated, in plain units (bytes, seconds).

It is the only carrier of a service's settings: `MemoryService` builds one from what the
user wrote, the package manifest carries it, the control plane keeps it on each
deployment (the deploy's overrides merged in), and the worker and the provisioner read
it. The settings are listed once, as the fields below; everything else (deploy flags,
API schemas, admin columns) iterates `SETTINGS`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from memrun.errors import ConfigError
from memrun.wire.sizes import format_size, parse_size
from memrun.wire.sticky import StickyTemplate

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,61}[a-z0-9]$")

SettingKind = Literal["size", "count", "template", "names"]
# Settings an older stored config may lack (it was written before they existed): reading
# one takes the setting's default.
_ADDED_LATER = frozenset({"secrets"})


def validate_service_name(name: object) -> str:
    """Service names become Kafka topics, group ids, folders and URLs: keep them plain."""
    if not isinstance(name, str) or not _NAME.match(name) or "--" in name:
        raise ConfigError(
            f"service name {name!r} is not valid: use 2-63 lowercase letters, digits and "
            "single '-', starting with a letter, e.g. 'matrix-qa'"
        )
    return name


def validate_secret_name(name: object) -> str:
    """Secret names follow the service names' rule: they appear in URLs, flags and lists."""
    if not isinstance(name, str) or not _NAME.match(name) or "--" in name:
        raise ConfigError(
            f"secret name {name!r} is not valid: use 2-63 lowercase letters, digits and "
            "single '-', starting with a letter, e.g. 's3-data'"
        )
    return name


def _setting(
    arg: str,
    kind: SettingKind,
    default: object,
    help: str,
    *,
    minimum: int = 1,
    flag: str = "",
) -> Any:
    return field(
        metadata={
            "arg": arg,
            "kind": kind,
            "default": default,
            "help": help,
            "minimum": minimum,
            "flag": flag or "--" + arg.replace("_", "-"),
        }
    )


@dataclass(frozen=True)
class ServiceConfig:
    """A validated service definition, in plain units (bytes, seconds)."""

    name: str
    memory_bytes: int = _setting("memory", "size", "4Gi", "RAM per worker, e.g. 32Gi")
    disk_bytes: int = _setting("disk", "size", "50Gi", "local NVMe cache per worker, e.g. 600Gi")
    max_workers: int = _setting("max_workers", "count", 1, "most workers")
    min_workers: int = _setting("min_workers", "count", 1, "fewest workers", minimum=0)
    concurrency: int = _setting("concurrency", "count", 16, "handlers running at once per worker")
    timeout_seconds: int = _setting("timeout_seconds", "count", 300, "time limit of one request")
    sticky_key: str | None = _setting(
        "sticky_key", "template", None, "payload fields that pick the worker, e.g. user_id:a"
    )
    secrets: tuple[str, ...] = _setting(
        "secrets",
        "names",
        (),
        "secrets whose KEY=VALUE pairs its workers get as env vars (repeatable)",
        flag="--secret",
    )

    def to_dict(self) -> dict[str, Any]:
        """JSON's types: the secrets as a list."""
        return {**asdict(self), "secrets": list(self.secrets)}

    def settings(self) -> dict[str, Any]:
        """The settings as `service_config_build` takes them (sizes as bytes)."""
        return {s.arg: getattr(self, s.field) for s in SETTINGS}

    def with_settings(self, changes: Mapping[str, object]) -> ServiceConfig:
        """This config with `changes` (setting name -> value in user units), validated;
        ConfigError names the first bad one."""
        return service_config_build(self.name, **{**self.settings(), **changes})


@dataclass(frozen=True)
class Setting:
    """One setting as a person gives it: `arg` is its name in code, flags and the API
    (`memory`, kept as the field `memory_bytes`), `default` is in those units."""

    field: str
    arg: str
    kind: SettingKind
    default: object
    help: str
    minimum: int
    flag: str

    def show(self, value: object) -> str:
        """`value` (as kept in ServiceConfig) the way a person writes it."""
        if value is None or value == ():
            return "none"
        if self.kind == "names":
            return ",".join(value)  # type: ignore[arg-type]
        return format_size(int(value)) if self.kind == "size" else str(value)  # type: ignore[call-overload]


SETTINGS: tuple[Setting, ...] = tuple(
    Setting(field=f.name, **f.metadata) for f in fields(ServiceConfig) if f.metadata
)
SETTING_ARGS: tuple[str, ...] = tuple(s.arg for s in SETTINGS)
_BY_ARG = {s.arg: s for s in SETTINGS}
_FIELD_NAMES = tuple(f.name for f in fields(ServiceConfig))


def _positive_int(value: object, field: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{field} must be a whole number >= {minimum}, got {value!r}")
    return value


def _parse(setting: Setting, value: object) -> object:
    if setting.kind == "size":
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ConfigError(
                f"{setting.arg}: expected a size like '32Gi' or a number of bytes, got {value!r}"
            )
        return parse_size(value, field=setting.arg)
    if setting.kind == "count":
        return _positive_int(value, setting.arg, minimum=setting.minimum)
    if setting.kind == "names":
        return _names(value, setting.arg)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{setting.arg} must be a string like 'user_id:dataset_id' or null")
    return str(StickyTemplate.parse(value))


def _names(value: object, arg: str) -> tuple[str, ...]:
    """A list of secret names, each once, in the order given."""
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ConfigError(f"{arg} must be a list of secret names like ['s3-data'], got {value!r}")
    return tuple(dict.fromkeys(validate_secret_name(name) for name in value))


def service_config_build(name: str, **settings: object) -> ServiceConfig:
    """A `ServiceConfig` from user units ("32Gi"); a setting not given takes its default.
    ConfigError names the first bad or unknown setting."""
    unknown = sorted(set(settings) - set(_BY_ARG))
    if unknown:
        raise ConfigError(
            f"unknown setting {', '.join(unknown)}; the settings are {', '.join(SETTING_ARGS)}"
        )
    values = {s.field: _parse(s, settings.get(s.arg, s.default)) for s in SETTINGS}
    if values["min_workers"] > values["max_workers"]:  # type: ignore[operator]
        raise ConfigError(
            f"min_workers ({values['min_workers']}) cannot exceed max_workers "
            f"({values['max_workers']})"
        )
    return ServiceConfig(name=validate_service_name(name), **values)  # type: ignore[arg-type]


def service_config_from_dict(data: object) -> ServiceConfig:
    """The inverse of `ServiceConfig.to_dict`, validated: exactly the field names, values
    in plain units. ConfigError names the problem."""
    if (
        not isinstance(data, Mapping)
        or not set(data) <= set(_FIELD_NAMES)
        or not set(_FIELD_NAMES) - _ADDED_LATER <= set(data)
    ):
        raise ConfigError(f"a service config is an object with the keys {', '.join(_FIELD_NAMES)}")
    name = validate_service_name(data["name"])
    return service_config_build(name, **{s.arg: data[s.field] for s in SETTINGS if s.field in data})


def service_config_changes(old: ServiceConfig, new: ServiceConfig) -> list[str]:
    """What differs, one "concurrency 16 -> 32" per setting, in `SETTINGS` order."""
    return [
        f"{s.arg} {s.show(getattr(old, s.field))} -> {s.show(getattr(new, s.field))}"
        for s in SETTINGS
        if getattr(old, s.field) != getattr(new, s.field)
    ]
