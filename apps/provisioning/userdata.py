"""The cloud-init user-data of a worker's machine (the bootstrap seam).

A stand-in until the bootstrap work lands its template (templates/cloud-init/worker.yaml,
the join token): a minimal valid `#cloud-config` that carries no secret at all.
"""

from __future__ import annotations

from apps.provisioning.provisioners.base import WorkerSpec


def worker_user_data(*, spec: WorkerSpec, server_name: str) -> str:
    """The user-data for `server_name`, which runs the worker `spec.name`."""
    return (
        "#cloud-config\n"
        f"hostname: {server_name}\n"
        "write_files:\n"
        "  - path: /etc/memrun/worker-name\n"
        f"    content: {spec.name}\n"
    )
