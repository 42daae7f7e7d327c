"""Cloud-init user-data for a remote worker (templates/cloud-init/worker.yaml).

At first boot the server installs Python and uv, this appliance's own memrun (its wheel,
pinned by sha256, see apps/provisioning/wheel.py), prepares the cache folder, exchanges
its join token for its credentials (`memrun worker join`, POST /api/v1/workers/join) and
starts the worker under systemd. The join token is the only secret in it (I8): the
spec's env, which holds the worker's credential, is never rendered.
"""

from __future__ import annotations

import json

from django.conf import settings
from django.template.loader import render_to_string

from apps.provisioning.jointokens import join_token_issue
from apps.provisioning.provisioners.base import WorkerSpec
from apps.provisioning.wheel import appliance_wheel

TEMPLATE = "cloud-init/worker.yaml"
# Hetzner refuses larger user-data.
MAX_USER_DATA_BYTES = 32 * 1024
# Where a server reads its own id; `memrun worker join --server-id-from` takes another
# (the tests' stand-in).
METADATA_INSTANCE_ID_URL = "http://169.254.169.254/hetzner/v1/metadata/instance-id"
CACHE_ROOT = "/var/lib/memrun/cache"
WORK_ROOT = "/var/lib/memrun/work"
# The uv the server installs from PyPI to install memrun's dependencies.
UV_VERSION = "0.13.9"


def worker_user_data(*, spec: WorkerSpec, server_name: str) -> str:
    """The user-data of the server `server_name` that runs the worker of `spec`, with a
    new join token for that worker. Raises ValueError if it would exceed Hetzner's
    32 KiB limit; DomainError 503 when the appliance cannot build its wheel."""
    wheel = appliance_wheel()
    control_plane = (
        settings.MEMRUN_REMOTE_CONTROL_PLANE_URL or settings.MEMRUN_CONTROL_PLANE_URL
    ).rstrip("/")
    rendered = render_to_string(
        TEMPLATE,
        {
            "worker": spec.name,
            "service": spec.service,
            "deployment_id": spec.deployment_id,
            "server_name": server_name,
            "join_token_yaml": json.dumps(join_token_issue(worker_name=spec.name)),
            "wheel_sha256": wheel.sha256,
            "wheel_filename": wheel.filename,
            "wheel_url_yaml": json.dumps(f"{control_plane}/api/v1/bootstrap/wheel"),
            "control_plane_url_yaml": json.dumps(control_plane),
            "metadata_url_yaml": json.dumps(METADATA_INSTANCE_ID_URL),
            "cache_root": CACHE_ROOT,
            "work_root": WORK_ROOT,
            "uv_version": UV_VERSION,
        },
    )
    size = len(rendered.encode())
    if size > MAX_USER_DATA_BYTES:
        raise ValueError(
            f"the user-data of {server_name} is {size} bytes, over the "
            f"{MAX_USER_DATA_BYTES} bytes Hetzner accepts"
        )
    return rendered
