"""`ServiceConfig`, the one carrier of a service's settings: listed once, validated once,
merged and compared in the units a person writes."""

from __future__ import annotations

import dataclasses

import pytest

from memrun.errors import ConfigError
from memrun.wire.config import (
    SETTING_ARGS,
    SETTINGS,
    ServiceConfig,
    service_config_build,
    service_config_changes,
    service_config_from_dict,
)


def test_the_settings_are_the_fields_of_service_config() -> None:
    fields = [f.name for f in dataclasses.fields(ServiceConfig)]
    assert fields == ["name", *(s.field for s in SETTINGS)]
    assert SETTING_ARGS == (
        "memory",
        "disk",
        "max_workers",
        "min_workers",
        "concurrency",
        "timeout_seconds",
        "sticky_key",
        "secrets",
    )


def test_defaults_and_round_trip() -> None:
    config = service_config_build("matrix-qa")
    assert (config.memory_bytes, config.disk_bytes) == (4 * 2**30, 50 * 2**30)
    assert (config.min_workers, config.max_workers, config.concurrency) == (1, 1, 16)
    assert (config.timeout_seconds, config.sticky_key, config.secrets) == (300, None, ())
    assert service_config_from_dict(config.to_dict()) == config


def test_secrets_are_a_list_of_names_each_once() -> None:
    config = service_config_build("matrix-qa", secrets=["s3-data", "api-key", "s3-data"])
    assert config.secrets == ("s3-data", "api-key")
    assert config.to_dict()["secrets"] == ["s3-data", "api-key"]
    assert service_config_from_dict(config.to_dict()) == config
    changed = config.with_settings({"secrets": []})
    assert service_config_changes(config, changed) == ["secrets s3-data,api-key -> none"]


def test_a_config_stored_before_secrets_existed_reads_with_none() -> None:
    data = service_config_build("matrix-qa").to_dict()
    del data["secrets"]
    assert service_config_from_dict(data).secrets == ()


def test_with_settings_merges_user_units_and_validates() -> None:
    config = service_config_build("matrix-qa", sticky_key="a")
    changed = config.with_settings({"memory": "8Gi", "max_workers": 3, "sticky_key": None})
    assert (changed.memory_bytes, changed.max_workers, changed.sticky_key) == (8 * 2**30, 3, None)
    assert changed.disk_bytes == config.disk_bytes
    assert service_config_changes(config, changed) == [
        "memory 4Gi -> 8Gi",
        "max_workers 1 -> 3",
        "sticky_key a -> none",
    ]
    assert service_config_changes(config, config) == []


@pytest.mark.parametrize(
    ("changes", "phrase"),
    [
        ({"memory": "lots"}, "memory: 'lots' is not a size"),
        ({"memory": ["1Gi"]}, "memory: expected a size"),
        ({"concurrency": 0}, "concurrency must be a whole number >= 1"),
        ({"concurrency": True}, "concurrency must be a whole number"),
        ({"min_workers": 2}, "min_workers (2) cannot exceed max_workers (1)"),
        ({"sticky_key": 5}, "sticky_key must be a string"),
        ({"secrets": "s3-data"}, "secrets must be a list of secret names"),
        ({"secrets": ["Bad Name"]}, "secret name 'Bad Name' is not valid"),
        ({"colour": "blue"}, "unknown setting colour"),
    ],
)
def test_a_bad_setting_is_named(changes: dict[str, object], phrase: str) -> None:
    with pytest.raises(ConfigError) as refusal:
        service_config_build("matrix-qa").with_settings(changes)
    assert phrase in refusal.value.message


def test_from_dict_wants_exactly_the_fields() -> None:
    data = service_config_build("matrix-qa").to_dict()
    for bad in ({k: v for k, v in data.items() if k != "concurrency"}, {**data, "x": 1}, None):
        with pytest.raises(ConfigError, match="the keys name, memory_bytes"):
            service_config_from_dict(bad)
