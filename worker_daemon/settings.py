"""Worker settings: one frozen dataclass, built from the environment and CLI flags.

Every tunable of the request path lives here, with its unit in its name. The environment
variable of a field is `MEMRUN_` + the field name in upper case (`MEMRUN_GRACE_PERIOD_S`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memrun.errors import ConfigError
from memrun.wire import validate_service_name
from memrun.wire.config import ServiceConfig, service_config_from_dict
from memrun.wire.kafka import ENV_NAMES as KAFKA_ENV_NAMES
from memrun.wire.kafka import KafkaConnection
from memrun.wire.protocol import REPLY_TTL_S

ENV_PREFIX = "MEMRUN_"
GROUP_PROTOCOLS = ("consumer", "classic")


@dataclass(frozen=True)
class WorkerSettings:
    """How one worker process serves one service.

    `worker_id` names the worker in logs, outcomes and DLQ records. A given id (from the
    provisioner) is also the Kafka `group.instance.id` unless that is set ("" turns it
    off): static membership, so a quick restart keeps the worker's partitions without a
    rebalance. Without an id the worker is host-pid and its membership is dynamic. Static
    membership is the classic protocol's only (consumer.group_config says why).
    """

    service: str
    package_path: Path
    # The package's expected sha256 (a .tar.gz is refused if it differs).
    package_sha256: str | None = None
    # Extracted packages and dependency venvs live under here.
    work_root: Path = Path("/var/lib/memrun/work")
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    # How to authenticate to Kafka (memrun.wire.kafka): the service's own principal, given
    # by the control plane in the worker's spec. PLAINTEXT: no authentication.
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = "SCRAM-SHA-512"
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = field(default="", repr=False)
    kafka_ssl_ca_location: str = ""
    kafka_ssl_ca_pem_base64: str = ""
    redis_url: str = "redis://127.0.0.1:6379/0"
    worker_id: str = ""
    group_instance_id: str | None = None
    # The deployment's settings (MEMRUN_SERVICE_CONFIG, JSON, set by the provisioner):
    # they win over the package's manifest. None: the manifest's.
    service_config: ServiceConfig | None = None
    # None: the service's own `concurrency` / `timeout_seconds`.
    concurrency: int | None = None
    timeout_s: float | None = None
    # Jobs queued in the pool beyond the running ones (None: as many as `concurrency`),
    # so a thread that finishes starts its next job without waiting for the poll thread.
    prefetch: int | None = None
    grace_period_s: float = 30.0
    revoke_wait_s: float = 5.0
    commit_interval_s: float = 1.0
    stats_interval_s: float = 10.0
    # Keep the newest stats snapshot in this file (see worker_daemon/statsfile.py).
    stats_path: Path | None = None
    poll_timeout_s: float = 0.1
    # A full pool waits this long for a slot before pausing partitions: pausing drops
    # librdkafka's prefetched messages, so pausing on every momentary full pool would
    # refetch constantly under load.
    pause_after_full_s: float = 0.05
    # An async handler past its deadline is cancelled in its own loop; only if it
    # ignores the cancellation this long is it abandoned like a sync handler.
    async_cancel_grace_s: float = 1.0
    reply_ttl_s: int = REPLY_TTL_S
    # On SIGTERM leave the group, so partitions move at once. A crash, or exit 75, keeps
    # the static membership: a restart within the session timeout gets them back.
    leave_group_on_stop: bool = True
    # The consumer group protocol (worker_daemon/consumer.py group_config): "classic" is the
    # JoinGroup protocol with cooperative-sticky; "consumer" is KIP-848 (the broker assigns,
    # sticky, incrementally, in heartbeat responses: a moved partition waits two heartbeats,
    # not two JoinGroup rounds). The provisioner passes the control plane's
    # MEMRUN_GROUP_PROTOCOL, the same default; README "Warm handoff" says what each costs.
    group_protocol: str = "consumer"
    # The two below are the classic protocol's only: under "consumer" the broker's
    # group.consumer.session.timeout.ms and heartbeat.interval.ms rule (scripts/services).
    session_timeout_ms: int = 10_000
    # How often the consumer heartbeats the group coordinator, which is also how soon a
    # member learns that a rebalance began. A partition that moves is unowned from its
    # old owner's revoke until every member has rejoined the second (cooperative) round,
    # so requests to it wait up to this long: librdkafka's default of 3 s made that the
    # bulk of a moved key's first request (bench_locality P7).
    group_heartbeat_interval_ms: int = 300
    max_poll_interval_ms: int = 300_000
    log_requests: bool = True
    # Successful requests logged a second, at most (failures always are): replies.py.
    request_log_per_s: float = 50.0

    def __post_init__(self) -> None:
        validate_service_name(self.service)
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.prefetch is not None and self.prefetch < 0:
            raise ConfigError(f"prefetch must be >= 0, got {self.prefetch}")
        if self.request_log_per_s < 0:
            raise ConfigError(f"request_log_per_s must be >= 0, got {self.request_log_per_s}")
        if self.group_protocol not in GROUP_PROTOCOLS:
            raise ConfigError(
                f"group_protocol must be one of {', '.join(GROUP_PROTOCOLS)}, "
                f"got {self.group_protocol!r}"
            )
        if not 0 < self.group_heartbeat_interval_ms < self.session_timeout_ms:
            raise ConfigError(
                f"group_heartbeat_interval_ms must be > 0 and below session_timeout_ms "
                f"({self.session_timeout_ms}), got {self.group_heartbeat_interval_ms}"
            )
        for name in ("grace_period_s", "commit_interval_s", "stats_interval_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.worker_id:
            object.__setattr__(self, "worker_id", f"{socket.gethostname()}-{os.getpid()}")
        elif self.group_instance_id is None:
            object.__setattr__(self, "group_instance_id", self.worker_id)
        if self.group_instance_id == "":
            object.__setattr__(self, "group_instance_id", None)
        try:
            _ = self.kafka  # built once here, so a wrong KAFKA_* fails at start
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    @property
    def kafka(self) -> KafkaConnection:
        """The broker and this worker's credentials on it."""
        return KafkaConnection(
            bootstrap_servers=self.kafka_bootstrap_servers,
            security_protocol=self.kafka_security_protocol.upper(),
            sasl_mechanism=self.kafka_sasl_mechanism,
            sasl_username=self.kafka_sasl_username,
            sasl_password=self.kafka_sasl_password,
            ssl_ca_location=self.kafka_ssl_ca_location,
            ssl_ca_pem_base64=self.kafka_ssl_ca_pem_base64,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> WorkerSettings:
        """Fields from `MEMRUN_*` variables; `overrides` (CLI flags) win when not None.

        `KAFKA_*` (`memrun.wire.kafka.ENV_NAMES`) and `REDIS_URL`, what `scripts/services
        env` prints, are read when the `MEMRUN_` names are absent.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for item in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + item.name.upper())
            if raw is None and item.name in _PLAIN_ENV:
                raw = env.get(_PLAIN_ENV[item.name])
            if raw is not None and raw != "":
                values[item.name] = _parse(item.name, str(item.type), raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        for required in ("service", "package_path"):
            if required not in values:
                raise ConfigError(
                    f"{required} is required: pass --{required.split('_')[0]} or set "
                    f"{ENV_PREFIX}{required.upper()}"
                )
        values["package_path"] = Path(values["package_path"])
        return cls(**values)


def kafka_fields(connection: KafkaConnection) -> dict[str, str]:
    """The WorkerSettings fields (`kafka_*`) that hold `connection`."""
    return {f"kafka_{name}": getattr(connection, name) for name in KAFKA_ENV_NAMES}


_PLAIN_ENV = {
    **{f"kafka_{name}": variable for name, variable in KAFKA_ENV_NAMES.items()},
    "redis_url": "REDIS_URL",
}


def _parse(name: str, type_name: str, raw: str) -> Any:
    try:
        if type_name.startswith("int"):
            return int(raw)
        if type_name.startswith("float"):
            return float(raw)
        if type_name == "bool":
            if raw.lower() not in {"1", "0", "true", "false", "yes", "no"}:
                raise ValueError(raw)
            return raw.lower() in {"1", "true", "yes"}
        if type_name.startswith("Path"):
            return Path(raw)
        if type_name.startswith("ServiceConfig"):
            return service_config_from_dict(json.loads(raw))
    except (ValueError, ConfigError):
        raise ConfigError(
            f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {type_name.split(' ')[0]}"
        ) from None
    return raw
