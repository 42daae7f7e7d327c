"""Worker settings from env/flags, and decoding messages from any producer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memrun.errors import ConfigError
from memrun.wire.config import service_config_build
from memrun.wire.protocol import encode_headers, now_ms
from worker_daemon.decode import decode_request
from worker_daemon.settings import WorkerSettings

ENV = {"MEMRUN_SERVICE": "matrix-qa", "MEMRUN_PACKAGE_PATH": "/srv/pkg"}


def test_settings_read_memrun_variables_and_flags_win() -> None:
    env = {
        **ENV,
        "MEMRUN_CONCURRENCY": "8",
        "MEMRUN_GRACE_PERIOD_S": "2.5",
        "MEMRUN_LEAVE_GROUP_ON_STOP": "false",
        "KAFKA_BOOTSTRAP_SERVERS": "k:1",
        "REDIS_URL": "redis://r:2/0",
    }
    settings = WorkerSettings.from_env(env, concurrency=4, redis_url=None)
    assert settings.service == "matrix-qa"
    assert settings.package_path == Path("/srv/pkg")
    assert settings.concurrency == 4  # the flag
    assert settings.grace_period_s == 2.5
    assert settings.leave_group_on_stop is False
    assert settings.kafka_bootstrap_servers == "k:1"
    assert settings.redis_url == "redis://r:2/0"


def test_the_deployments_settings_come_as_json() -> None:
    """The provisioner passes a deployment's settings; a settings change (PATCH) does not
    rebuild the package, so these win over its manifest (worker_daemon.main.load_package)."""
    assert WorkerSettings.from_env(ENV).service_config is None
    config = service_config_build("matrix-qa", concurrency=3, sticky_key="user")
    env = {**ENV, "MEMRUN_SERVICE_CONFIG": json.dumps(config.to_dict())}
    assert WorkerSettings.from_env(env).service_config == config
    with pytest.raises(ConfigError, match=r"MEMRUN_SERVICE_CONFIG=.* is not a valid ServiceConfig"):
        WorkerSettings.from_env({**ENV, "MEMRUN_SERVICE_CONFIG": '{"name": "matrix-qa"}'})


def test_a_given_worker_id_is_the_static_group_instance_id() -> None:
    assert WorkerSettings.from_env({**ENV, "MEMRUN_WORKER_ID": "w-7"}).group_instance_id == "w-7"
    anonymous = WorkerSettings.from_env(ENV)
    assert anonymous.group_instance_id is None and anonymous.worker_id
    off = {**ENV, "MEMRUN_WORKER_ID": "w-7", "MEMRUN_GROUP_INSTANCE_ID": ""}
    assert WorkerSettings.from_env(off, group_instance_id="").group_instance_id is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MEMRUN_PACKAGE_PATH": "/p"}, "service is required"),
        ({**ENV, "MEMRUN_CONCURRENCY": "many"}, "MEMRUN_CONCURRENCY='many' is not a valid int"),
        ({**ENV, "MEMRUN_CONCURRENCY": "0"}, "concurrency must be >= 1"),
        ({**ENV, "MEMRUN_SERVICE": "Bad_Name"}, "service name 'Bad_Name' is not valid"),
        (
            {**ENV, "MEMRUN_GROUP_PROTOCOL": "eager"},
            "group_protocol must be one of consumer, classic, got 'eager'",
        ),
        (
            {**ENV, "MEMRUN_GROUP_HEARTBEAT_INTERVAL_MS": "10000"},
            r"group_heartbeat_interval_ms must be > 0 and below session_timeout_ms \(10000\)",
        ),
    ],
)
def test_bad_settings_say_what_to_fix(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        WorkerSettings.from_env(env)


def test_a_memrun_message_decodes_with_its_headers() -> None:
    deadline = now_ms() + 5000
    request = decode_request(
        topic="memrun.requests.s",
        partition=2,
        offset=41,
        key=b"42:sales",
        value=json.dumps({"user_id": 42}).encode(),
        headers=encode_headers(request_id="abc123", deadline_ms=deadline, attempt=2),
    )
    assert request.request_id == "abc123"
    assert request.key == "42:sales"
    assert request.attempt == 2
    assert request.deadline_ms == deadline
    assert request.payload == {"user_id": 42}
    assert request.payload_error is None


@pytest.mark.parametrize(
    "headers",
    [None, [], [("memrun-request-id", b"")], [("memrun-request-id", b"has space/and slash")]],
)
def test_a_message_without_a_usable_request_id_gets_one_from_its_place(headers: object) -> None:
    request = decode_request(
        topic="memrun.requests.s", partition=1, offset=7, key=None, value=b"[]", headers=headers
    )  # type: ignore[arg-type]
    assert request.request_id == "memrun.requests.s:1:7"
    assert request.attempt == 1 and request.deadline_ms is None and request.key is None


@pytest.mark.parametrize("value", [b"{oops", b"\xff\xfe", None, b""])
def test_a_payload_that_is_not_json_is_an_error_not_a_crash(value: bytes | None) -> None:
    request = decode_request(topic="t", partition=0, offset=0, key=b"k", value=value, headers=None)
    assert request.payload is None
    assert request.payload_error is not None
    assert "not JSON" in str(request.payload_error)
