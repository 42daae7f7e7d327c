"""Deploying a service: validate an upload, store it by content hash, record the
deployment and start its rollout; rollbacks; and settings changes, which are deployments
too (a service's settings are its live deployment's, I10).

Nothing reaches the artifact store or the database until the package has passed every
check (apps/services/packages.py); user code is compiled there, never imported.
Receiving the upload itself is apps/services/uploads.py.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction
from django.db.models import F

from apps.common.errors import DomainError
from apps.common.events import ServiceFleetChanged, event_emit_on_commit
from apps.common.fleet import FleetChoice, fleet_check
from apps.common.permissions import Access, Role
from apps.services import selectors
from apps.services.artifacts import artifact_exists, artifact_put
from apps.services.models import Deployment, Service
from apps.services.packages import package_check, package_from_upload, package_limits
from apps.services.principals import kafka_principal_ensure
from apps.services.redis_users import redis_user_ensure
from apps.services.services import deployment_create, service_create, service_update
from apps.services.uploads import Upload, uploads_dir
from memrun.errors import ConfigError, PackageRejected
from memrun.wire import ServiceConfig, validate_service_name
from memrun.wire.archive import Manifest
from memrun.wire.config import SETTING_ARGS, service_config_changes

MESSAGE_MAX_CHARS = 2000
# What a deploy may set of the service's machines besides its settings.
FLEET_FIELDS = frozenset({"provider", "server_type", "location"})


def deployment_upload(
    *,
    service_name: str,
    upload: Upload,
    created_by: AbstractBaseUser | None = None,
    overrides: Mapping[str, Any] | None = None,
    fleet: Mapping[str, str] | None = None,
    access: Access | None = None,
) -> Deployment:
    """Validate `upload` (a package, or a handler .py built into one here) for the
    service `service_name`, store it, and record a new deployment of it, with
    `overrides` (MemoryService argument names, as `memrun deploy`'s flags give them;
    None: not given) merged over the package's settings into the manifest it stores.
    `fleet` (provider, server_type, location; "" or absent: unchanged) sets the
    service's machines, checked against the new settings' memory and disk. The service
    is created on its first deploy, which needs `access` (the caller's; the route checked
    the deploy role) to hold admin on all services. Refusals are DomainErrors; a refused
    upload stores nothing."""
    fleet = {key: value for key, value in (fleet or {}).items() if value}
    unknown_fleet = sorted(set(fleet) - FLEET_FIELDS)
    if unknown_fleet:
        raise DomainError(
            f"unknown fleet field {', '.join(unknown_fleet)}; known: "
            f"{', '.join(sorted(FLEET_FIELDS))}",
            status=422,
            details={"fields": {key: ["unknown"] for key in unknown_fleet}},
        )
    service_name_check(service_name)
    if access is not None and not Service.objects.filter(name=service_name).exists():
        access.require(Role.ADMIN, what=f"create the service {service_name} by deploying it")
    message = _message(upload.message)
    limits = package_limits()
    with tempfile.TemporaryDirectory(prefix="build-", dir=uploads_dir()) as work:
        package = package_from_upload(upload, Path(work), limits, overrides or {})
        manifest = package_check(path=package, service_name=service_name, limits=limits)
        given = {
            key: value
            for key, value in (overrides or {}).items()
            if key in SETTING_ARGS and value is not None
        }
        config = _config_with(manifest.config, given)
        with package.open("rb") as stream:
            sha256 = hashlib.file_digest(stream, "sha256").hexdigest()
        size_bytes = package.stat().st_size
        existing = Service.objects.filter(name=service_name).first()
        if existing is not None:
            _config_check(existing, config)
        _secrets_check(config)
        _secrets_attach_check(service=existing, names=config.secrets, access=access)
        _fleet_check(existing, fleet, config)
        url = artifact_put(path=package, key=f"deployments/{service_name}/{sha256}.tar.gz")
    with transaction.atomic():
        service = Service.objects.filter(name=service_name).first()
        if service is None:
            service = service_create(name=service_name, desired_workers=config.min_workers, **fleet)
        elif fleet:
            service = service_update(service=service, data=fleet)
        return _deployment_record(
            service=service,
            config=config,
            sha256=sha256,
            size_bytes=size_bytes,
            artifact_url=url,
            manifest={**manifest.to_dict(), "config": config.to_dict()},
            message=message,
            created_by=created_by,
        )


def deployment_configure(
    *,
    service: Service,
    changes: Mapping[str, object],
    message: str = "",
    created_by: AbstractBaseUser | None = None,
) -> Deployment | None:
    """A new deployment of the live deployment's package with `changes` (setting name ->
    value in user units) merged into its settings: it rolls out like a deploy and rolls
    back like one. None when nothing changes. Refused (409) before the first deploy,
    since the settings come with the code."""
    live = service.live_deployment
    current = None if live is None else live.config
    if live is None or current is None:
        raise DomainError(
            f"{service.name} has no live deployment, so it has no settings to change: "
            f"its settings ({', '.join(sorted(changes))}) come with its code. Deploy first "
            "(memrun deploy handler.py, whose flags such as --concurrency set them too), "
            "then change them here",
            status=409,
            details={"service": service.name, "fields": {k: ["deploy first"] for k in changes}},
        )
    config = _config_with(current, changes)
    if config == current:
        return None
    _config_check(service, config)
    _secrets_check(config)
    summary = "; ".join(service_config_changes(current, config))
    return _deployment_record(
        service=service,
        config=config,
        sha256=live.sha256,
        size_bytes=live.size_bytes,
        artifact_url=live.artifact_url,
        manifest={**live.manifest, "config": config.to_dict()},
        message=_message(message) or f"settings of v{live.version} changed: {summary}",
        created_by=created_by,
    )


def deployment_restart(
    *, service: Service, message: str, created_by: AbstractBaseUser | None = None
) -> Deployment | None:
    """A new deployment of the live deployment's package and settings, which rolls out
    like a deploy: its new workers read what changed outside the package (a secret's
    values). None when the service has no live deployment."""
    live = service.live_deployment
    config = None if live is None else live.config
    if live is None or config is None:
        return None
    return _deployment_again(
        service=service,
        source=live,
        config=config,
        message=_message(message),
        created_by=created_by,
    )


def service_patch(
    *,
    service: Service,
    data: Mapping[str, Any],
    created_by: AbstractBaseUser | None = None,
    access: Access | None = None,
) -> Service:
    """PATCH of a service: settings in `data` make a new deployment
    (`deployment_configure`), fleet fields change the row (`service_update`), together
    or not at all. Attaching a secret needs admin on all (`_secrets_attach_check`)."""
    changes = {key: value for key, value in data.items() if key in SETTING_ARGS}
    fleet = {key: value for key, value in data.items() if key not in SETTING_ARGS}
    if isinstance(changes.get("secrets"), list | tuple):
        _secrets_attach_check(service=service, names=tuple(changes["secrets"]), access=access)
    with transaction.atomic():
        locked = Service.objects.select_for_update().get(pk=service.pk)
        if changes:
            deployment_configure(service=locked, changes=changes, created_by=created_by)
        return service_update(service=locked, data=fleet)


def deployment_rollback(
    *,
    service: Service,
    version: int | None = None,
    message: str = "",
    created_by: AbstractBaseUser | None = None,
) -> Deployment:
    """A new deployment of the package and settings of `version`; by default of the one
    that was active before the current active one. The artifact is reused, not copied."""
    if version is None:
        target = selectors.deployment_previous_active(service=service)
        if target is None:
            raise DomainError(
                f"{service.name} has no earlier active deployment to roll back to; name "
                "the version to deploy again (memrun rollback NAME --to VERSION)",
                status=409,
                details={"service": service.name},
            )
    else:
        target = selectors.deployment_get(service=service, version=version)
    if not artifact_exists(url=target.artifact_url):
        raise DomainError(
            f"the package of v{target.version} of {service.name} is no longer stored (memrun "
            f"gc keeps the newest {settings.MEMRUN_GC_KEEP_VERSIONS} versions); deploy it again",
            status=409,
            details={"version": target.version},
        )
    try:
        config = Manifest.from_dict(target.manifest).config
    except PackageRejected as exc:
        raise DomainError(
            f"v{target.version} of {service.name} cannot be deployed again: {exc.message}",
            status=409,
            details={"version": target.version},
        ) from None
    _config_check(service, config)
    _secrets_check(config)
    return _deployment_again(
        service=service,
        source=target,
        config=config,
        message=_message(message) or f"rollback to v{target.version}",
        created_by=created_by,
    )


def service_kafka_credentials_rotate(
    *, service: Service, created_by: AbstractBaseUser | None = None
) -> tuple[int, Deployment | None]:
    """Give the service's Kafka principal a new password (its generation goes up by one,
    apps/services/principals.py), then roll its workers: a new deployment of the live
    package and settings, so each new worker starts with the new password and the old
    ones are drained as in any rollout. Returns the new generation and that deployment
    (None before the first deploy: no worker to roll). The API asks the admin role on
    the service."""
    with transaction.atomic():
        locked = Service.objects.select_for_update().get(pk=service.pk)
        locked.kafka_credential_generation = F("kafka_credential_generation") + 1
        locked.save(update_fields=["kafka_credential_generation", "updated_at"])
        locked.refresh_from_db()
        generation = locked.kafka_credential_generation
        kafka_principal_ensure(service=locked)
        # The same generation is part of its Redis user's password: rotated together.
        redis_user_ensure(service=locked)
        live = locked.live_deployment
        config = None if live is None else live.config
        if live is None or config is None:
            return generation, None
        deployment = _deployment_again(
            service=locked,
            source=live,
            config=config,
            message=f"Kafka credentials rotated (generation {generation}): v{live.version} "
            "again, so every worker logs in with the new password",
            created_by=created_by,
        )
    return generation, deployment


def service_name_check(name: str) -> None:
    """DomainError 422 unless `name` can be a service's name."""
    try:
        validate_service_name(name)
    except ConfigError as exc:
        raise DomainError(
            exc.message, status=422, details={"fields": {"name": [exc.message]}}
        ) from None


def _config_check(service: Service, config: ServiceConfig) -> None:
    """What the database would refuse when the config is applied, refused before storing."""
    if config.max_workers > service.partitions:
        raise DomainError(
            f"max_workers ({config.max_workers}) cannot exceed the {service.partitions} "
            f"partitions of {service.name}, fixed when it was created; lower max_workers",
            status=422,
            details={"fields": {"max_workers": ["cannot exceed partitions"]}},
        )


def _secrets_check(config: ServiceConfig, *, lock: bool = False) -> None:
    """422 naming each secret the settings name that does not exist."""
    missing = selectors.secrets_missing(names=config.secrets, lock=lock)
    if missing:
        raise DomainError(
            f"{config.name} names secrets that do not exist: {', '.join(missing)}; create "
            f"them first (memrun secret set {missing[0]} KEY=VALUE...)",
            status=422,
            details={"fields": {"secrets": [f"no secret named {name}" for name in missing]}},
        )


def _fleet_check(service: Service | None, fleet: Mapping[str, str], config: ServiceConfig) -> None:
    """The machine choice the service will have, against the new settings' sizes."""
    fleet_check(
        choice=FleetChoice(
            provider=fleet.get("provider", service.provider if service else "local"),
            server_type=fleet.get("server_type", service.server_type if service else ""),
            location=fleet.get("location", service.location if service else ""),
            memory_bytes=config.memory_bytes,
            disk_bytes=config.disk_bytes,
        )
    )


def _secrets_attach_check(
    *, service: Service | None, names: tuple[str, ...], access: Access | None
) -> None:
    """Attaching a secret a service does not have yet hands its values to that service's
    code, so it needs what managing secrets needs: admin on all services (`access` is the
    caller's; None: memrun itself). Keeping or dropping attached ones needs no more than
    the deploy itself."""
    live = None if service is None else service.config
    new = [name for name in names if live is None or name not in live.secrets]
    if new and access is not None:
        access.require(Role.ADMIN, what=f"attach the secrets {', '.join(new)} to a service")


def _config_with(config: ServiceConfig, changes: Mapping[str, object]) -> ServiceConfig:
    """`config` with `changes` merged in; 422 naming a bad setting."""
    try:
        return config.with_settings(changes)
    except ConfigError as exc:
        named = [key for key in changes if key in exc.message] or sorted(changes)
        raise DomainError(
            f"invalid settings: {exc.message}",
            status=422,
            details={"fields": {key: [exc.message] for key in named}},
        ) from None


def _deployment_record(*, service: Service, config: ServiceConfig, **fields: Any) -> Deployment:
    """Record the deployment, bring the desired worker count within its bounds, and start
    its rollout once committed."""
    with transaction.atomic():
        # Again, with the rows locked: a secret deleted since the first check is refused.
        _secrets_check(config, lock=True)
        deployment = deployment_create(service=service, **fields)
        locked = deployment.service
        desired = min(max(locked.desired_workers, config.min_workers), config.max_workers)
        if desired != locked.desired_workers:
            locked.desired_workers = desired
            locked.save(update_fields=["desired_workers", "updated_at"])
        service.desired_workers = desired
        # Starts the rollout (provisioning listens). A broker that is down leaves the
        # deployment pending for beat's periodic reconcile; never an upload error.
        event_emit_on_commit(event=ServiceFleetChanged(service_id=locked.pk))
    return deployment


def _deployment_again(
    *,
    service: Service,
    source: Deployment,
    config: ServiceConfig,
    message: str,
    created_by: AbstractBaseUser | None,
) -> Deployment:
    """A new deployment of `source`'s package and manifest as they are (the artifact is
    reused, not copied), with `config`: a restart or a credential rotation (`source` is
    the live deployment) or a rollback (an earlier one)."""
    return _deployment_record(
        service=service,
        config=config,
        sha256=source.sha256,
        size_bytes=source.size_bytes,
        artifact_url=source.artifact_url,
        manifest=source.manifest,
        message=message,
        created_by=created_by,
    )


def _message(message: str) -> str:
    if len(message) > MESSAGE_MAX_CHARS:
        raise DomainError(
            f"the message is {len(message)} characters; keep it under {MESSAGE_MAX_CHARS}",
            status=422,
            details={"fields": {"message": [f"at most {MESSAGE_MAX_CHARS} characters"]}},
        )
    return message.strip()
