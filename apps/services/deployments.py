"""Deploying a service: validate an upload, store it by content hash, record the
deployment and start its rollout; and rollbacks.

Nothing reaches the artifact store or the database until the package has passed every
check (`package_check`); user code is compiled here, never imported. Receiving the
upload itself is apps/services/uploads.py.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction

from apps.common.errors import DomainError
from apps.common.events import ServiceFleetChanged, event_emit_on_commit
from apps.common.permissions import staff_require
from apps.services import selectors
from apps.services.artifacts import artifact_exists, artifact_put
from apps.services.models import Deployment, Service
from apps.services.services import deployment_create, service_create, service_update
from apps.services.uploads import Upload, package_max_bytes, uploads_dir
from memrun.errors import ConfigError, PackageRejected
from memrun.packaging import build_package
from memrun.wire import ServiceConfig, validate_service_name
from memrun.wire.archive import Manifest, PackageLimits, inspect_package, open_tar

MESSAGE_MAX_CHARS = 2000
# The entry module is compiled in the web process: bound what that may cost.
ENTRY_MAX_BYTES = 4 * 2**20
_SOURCE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,100}\.py$")


def package_limits() -> PackageLimits:
    return PackageLimits(max_archive_bytes=package_max_bytes())


def deployment_upload(
    *,
    service_name: str,
    upload: Upload,
    created_by: AbstractBaseUser | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Deployment:
    """Validate `upload` (a package, or a handler .py built into one here) for the
    service `service_name`, store it, and record a new deployment of it: the service is
    created from the package's config on its first deploy, and takes that config on every
    later one. `overrides` (MemoryService argument names, as `memrun deploy`'s flags) win
    over a handler's code; a built package carries its config and takes none. Only staff
    users deploy. Refusals are DomainErrors; a refused upload stores nothing."""
    staff_require(user=created_by, action="deploy")
    service_name_check(service_name)
    message = _message(upload.message)
    limits = package_limits()
    with tempfile.TemporaryDirectory(prefix="build-", dir=uploads_dir()) as work:
        package = _package_of(upload, Path(work), limits, overrides or {})
        manifest = package_check(path=package, service_name=service_name, limits=limits)
        with package.open("rb") as stream:
            sha256 = hashlib.file_digest(stream, "sha256").hexdigest()
        size_bytes = package.stat().st_size
        existing = Service.objects.filter(name=service_name).first()
        if existing is not None:
            _config_check(existing, manifest.config)
        url = artifact_put(path=package, key=f"deployments/{service_name}/{sha256}.tar.gz")
    with transaction.atomic():
        service = _service_configure(service_name, manifest.config)
        deployment = deployment_create(
            service=service,
            sha256=sha256,
            size_bytes=size_bytes,
            artifact_url=url,
            manifest=manifest.to_dict(),
            message=message,
            created_by=created_by,
        )
        # Starts the rollout (provisioning listens). A broker that is down leaves the
        # deployment pending for beat's periodic reconcile; never an upload error.
        event_emit_on_commit(event=ServiceFleetChanged(service_id=service.pk))
    return deployment


def deployment_rollback(
    *,
    service: Service,
    version: int | None = None,
    message: str = "",
    created_by: AbstractBaseUser | None = None,
) -> Deployment:
    """A new deployment of the package and config of `version`; by default of the one
    that was active before the current active one. The artifact is reused, not copied.
    Only staff users roll back."""
    staff_require(user=created_by, action="roll back")
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
    with transaction.atomic():
        service = _service_configure(service.name, config)
        deployment = deployment_create(
            service=service,
            sha256=target.sha256,
            size_bytes=target.size_bytes,
            artifact_url=target.artifact_url,
            manifest=target.manifest,
            message=_message(message) or f"rollback to v{target.version}",
            created_by=created_by,
        )
        # Starts the rollout (provisioning listens). A broker that is down leaves the
        # deployment pending for beat's periodic reconcile; never an upload error.
        event_emit_on_commit(event=ServiceFleetChanged(service_id=service.pk))
    return deployment


def package_check(*, path: Path, service_name: str, limits: PackageLimits) -> Manifest:
    """The manifest of the package at `path` once it is safe (`inspect_package`), for
    `service_name`, and its entry module compiles; else a DomainError naming the problem."""
    try:
        manifest = inspect_package(path, limits=limits)
        source = _entry_source(path, manifest.entry, limits)
    except PackageRejected as exc:
        raise _rejected(exc) from None
    if manifest.service != service_name:
        raise _refused(
            "service_mismatch",
            f"the package is for service {manifest.service!r}, but it was sent to "
            f"{service_name!r}; deploy it to /api/v1/services/{manifest.service}/deployments",
            package_service=manifest.service,
        )
    try:
        compile(source, manifest.entry, "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise _refused(
            "entry_invalid",
            f"the entry module {manifest.entry} does not compile: line {exc.lineno}: {exc.msg}",
            member=manifest.entry,
        ) from None
    except (ValueError, RecursionError, MemoryError, OverflowError) as exc:
        raise _refused(
            "entry_invalid",
            f"the entry module {manifest.entry} does not compile: {exc}",
            member=manifest.entry,
        ) from None
    return manifest


def _package_of(
    upload: Upload, work: Path, limits: PackageLimits, overrides: Mapping[str, Any]
) -> Path:
    """The package to check: the upload itself, or one built from an uploaded handler."""
    with upload.path.open("rb") as stream:
        head = stream.read(2)
    given = sorted(key for key, value in overrides.items() if value is not None and key != "name")
    # The bytes decide: gzip is a package whatever it was called; anything else is
    # checked as a package (and refused by name) unless it was sent as a handler.
    if head == b"\x1f\x8b" or not upload.is_source:
        if given:
            raise _refused(
                "overrides_on_package",
                f"a built package carries its own settings, so {', '.join(given)} cannot be "
                "overridden here; rebuild it with memrun deploy and the flags, or upload "
                "the handler .py",
                overrides=given,
            )
        return upload.path
    name = upload.filename if _SOURCE_NAME.match(upload.filename) else "handler.py"
    if upload.size_bytes > ENTRY_MAX_BYTES:
        raise _refused(
            "entry_too_large",
            f"{name} is {upload.size_bytes} bytes; a handler module may be up to "
            f"{ENTRY_MAX_BYTES}: put data in included files (memrun deploy --include)",
            limit_bytes=ENTRY_MAX_BYTES,
        )
    source = upload.path.read_bytes()
    try:
        source.decode("utf-8")
    except UnicodeDecodeError:
        raise _refused("entry_invalid", f"{name} is not UTF-8 text") from None
    handler = work / name
    handler.write_bytes(source)
    package = work / "package.tar.gz"
    try:
        build_package(handler, overrides=overrides, out=package, limits=limits)
    except ConfigError as exc:
        raise _refused("handler_invalid", exc.message, **exc.details) from None
    return package


def _entry_source(path: Path, entry: str, limits: PackageLimits) -> bytes:
    with open_tar(path, limits) as reader:
        for member in reader.members():
            if member.name != entry:
                continue
            if member.size > ENTRY_MAX_BYTES:
                raise PackageRejected(
                    "entry_too_large",
                    f"the entry module {entry} is {member.size} bytes; the limit is "
                    f"{ENTRY_MAX_BYTES}: put data in included files",
                    details={"member": entry, "limit_bytes": ENTRY_MAX_BYTES},
                )
            return b"".join(reader.data(member))
    raise PackageRejected("missing_file", f"the package does not hold its entry {entry}")


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


def _service_configure(name: str, config: ServiceConfig) -> Service:
    """The service `name`, created with or updated to `config`. Scaling stays where it
    was unless the new bounds exclude it."""
    fields: dict[str, Any] = {
        "memory": config.memory_bytes,
        "disk": config.disk_bytes,
        "min_workers": config.min_workers,
        "max_workers": config.max_workers,
        "concurrency": config.concurrency,
        "timeout_seconds": config.timeout_seconds,
        "sticky_key": config.sticky_key or "",
    }
    service = Service.objects.filter(name=name).first()
    if service is None:
        return service_create(name=name, **fields)
    desired = min(max(service.desired_workers, config.min_workers), config.max_workers)
    return service_update(service=service, data={**fields, "desired_workers": desired})


def _message(message: str) -> str:
    if len(message) > MESSAGE_MAX_CHARS:
        raise DomainError(
            f"the message is {len(message)} characters; keep it under {MESSAGE_MAX_CHARS}",
            status=422,
            details={"fields": {"message": [f"at most {MESSAGE_MAX_CHARS} characters"]}},
        )
    return message.strip()


def _refused(reason: str, message: str, **details: Any) -> DomainError:
    return DomainError(
        f"package refused: {message}", status=422, details={"reason": reason, **details}
    )


def _rejected(exc: PackageRejected) -> DomainError:
    status = 413 if exc.reason == "archive_too_large" else 422
    return DomainError(f"package refused: {exc.message}", status=status, details=exc.details)
