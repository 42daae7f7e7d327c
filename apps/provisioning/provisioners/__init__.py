"""Provisioner backends by provider name (Service.provider / Worker.provider).

`local` runs workers as processes of this machine; `hetzner` as Hetzner Cloud servers
booted from cloud-init (HCLOUD_TOKEN and the other HCLOUD_* settings).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from django.conf import settings

from apps.common.errors import DomainError
from apps.provisioning.provisioners.base import LiveWorker, Provisioner, WorkerSpec
from apps.provisioning.provisioners.hetzner import hetzner_from_settings
from apps.provisioning.provisioners.local import LocalProvisioner

__all__ = ["LiveWorker", "Provisioner", "WorkerSpec", "provisioner_for"]

_BACKENDS: dict[str, Callable[[], Provisioner]] = {
    "local": lambda: LocalProvisioner(Path(settings.MEMRUN_HOME)),
    "hetzner": hetzner_from_settings,
}


def provisioner_for(provider: str) -> Provisioner:
    """The backend for `provider`; DomainError 409 when none is available."""
    factory = _BACKENDS.get(provider)
    if factory is None:
        raise DomainError(
            f"no provisioner for provider {provider!r} in this memrun; available: "
            f"{', '.join(sorted(_BACKENDS))}",
            status=409,
            details={"provider": provider},
        )
    return factory()
