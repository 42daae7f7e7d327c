"""What a new worker is told: its WorkerSpec, whatever the backend."""

from __future__ import annotations

import json

from django.conf import settings
from django.views.decorators.debug import sensitive_variables

from apps.provisioning.provisioners import WorkerSpec
from apps.services.models import Deployment, Provider, Service
from apps.services.principals import kafka_principal_connection, kafka_principal_ensure
from apps.services.redis_users import redis_user_ensure, worker_redis_url
from apps.services.selectors import secret_env
from apps.workers.models import Worker


@sensitive_variables("env", "secrets")
def worker_spec_build(
    *, worker: Worker, credential: str, service: Service, deployment: Deployment
) -> WorkerSpec:
    """The spec of `worker`: the env of its daemon (see worker_daemon/control_plane.py)
    carries its own credential, the brokers, the machine's install settings (trust
    store, index, proxy), its deployment's settings and the values of the secrets those
    name, and nothing else: never the appliance's own S3 keys (I8), so a handler reads S3
    with the AWS_* its secrets give. Kafka is reached as the service's own principal,
    never the control plane's; the principal is ensured here, so a broker that lost it
    heals before the worker logs in; Redis as the service's own ACL user, ensured here too
    (a restarted Redis has lost it). The machine is sized from the settings too (I10)."""
    config = deployment.config
    if config is None:
        raise ValueError(f"{deployment} has no valid settings in its manifest")
    kafka_principal_ensure(service=service)
    redis_user_ensure(service=service)
    secrets = secret_env(names=config.secrets)
    # A worker on another machine reaches the appliance at its remote addresses.
    remote = worker.provider != Provider.LOCAL
    env = {
        # Reserved names (apps/services/secretbox.py) cannot come from a secret, so the
        # platform's own settings below are never replaced by one.
        **secrets,
        **settings.MEMRUN_WORKER_INSTALL_ENV,
        "MEMRUN_URL": (
            settings.MEMRUN_REMOTE_CONTROL_PLANE_URL or settings.MEMRUN_CONTROL_PLANE_URL
            if remote
            else settings.MEMRUN_CONTROL_PLANE_URL
        ),
        "MEMRUN_WORKER_ID": worker.name,
        "MEMRUN_WORKER_TOKEN": credential,
        "MEMRUN_SERVICE": service.name,
        "MEMRUN_DEPLOYMENT_ID": str(deployment.pk),
        "MEMRUN_PACKAGE_SHA256": deployment.sha256,
        "MEMRUN_SERVICE_CONFIG": json.dumps(config.to_dict(), sort_keys=True),
        "MEMRUN_GROUP_PROTOCOL": settings.MEMRUN_GROUP_PROTOCOL,
        **kafka_principal_connection(service=service, remote=remote).env(),
        "REDIS_URL": worker_redis_url(
            service=service, address=settings.MEMRUN_REMOTE_REDIS_ADDRESS if remote else ""
        ),
        # Which variables hold secret values, for the log shipper to mask (not the values).
        "MEMRUN_SECRET_KEYS": ",".join(sorted(secrets)),
        **settings.MEMRUN_WORKER_RESULTS_ENV,
        **settings.MEMRUN_WORKER_EXTRA_ENV,
    }
    return WorkerSpec(
        name=worker.name,
        service=service.name,
        deployment_id=deployment.pk,
        env=env,
        labels={
            "service": service.name,
            "worker": worker.name,
            "deployment": str(deployment.pk),
        },
        memory_bytes=config.memory_bytes,
        disk_bytes=config.disk_bytes,
        server_type=service.server_type,
        location=service.location,
    )
