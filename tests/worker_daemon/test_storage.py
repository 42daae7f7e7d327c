"""`ctx.storage`, the handler's async S3 client, through a deployed handler in a real
worker process against the real S3 server: put, get, head, list and delete, with the
worker's own endpoint and credentials from its environment; a missing object is None
(head) or FileNotFoundError (get), and what storage wrote the cache reads."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis

from tests.worker_daemon.conftest import ServiceUnderTest
from tests.worker_daemon.harness import (
    WorkerProcess,
    make_package,
    make_producer,
    produce_requests,
    wait_outcomes,
    worker_env,
)


@pytest.mark.slow
def test_a_handler_reads_writes_lists_and_deletes_through_ctx_storage(
    service_factory: Callable[..., ServiceUnderTest],
    redis_client: redis.Redis,
    s3_settings: Any,
    s3_client: Any,
    unique_name: str,
) -> None:
    service = service_factory(partitions=1)
    package = make_package(service.tmp / "package", service=service.name, handler="storage_ops.py")
    env = worker_env(
        service=service.name,
        bootstrap=service.bootstrap,
        redis_url=service.redis_url,
        cache_root=service.tmp / "cache",
    )
    # The service's S3 settings, as its secrets hand them to a worker.
    env.update(
        AWS_ENDPOINT_URL=s3_settings.endpoint_url,
        AWS_ACCESS_KEY_ID=s3_settings.access_key_id,
        AWS_SECRET_ACCESS_KEY=s3_settings.secret_access_key,
    )
    env.pop("MEMRUN_S3_ENDPOINT_URL", None)
    worker = WorkerProcess(
        service=service.name,
        package=package,
        worker_id=f"{service.name}-a",
        env=env,
        log_path=service.tmp / "a.log",
    )
    try:
        worker.wait_event("worker.assigned")
        prefix = f"s3://{s3_settings.bucket}/tests/storage/{unique_name}/"
        request = ("u", {"user": "u", "prefix": prefix})
        [request_id] = produce_requests(make_producer(service.bootstrap), service.topic, [request])
        outcome = wait_outcomes(redis_client, service.name, [request_id])[request_id]
        assert outcome.ok, outcome.error
        result = outcome.result
        assert result["text"] == "alpha" and result["size"] == 5
        assert result["listed"] == [[prefix + "a.txt", 5], [prefix + "b.bin", 3]]
        assert result["missing_head"] is None
        assert result["missing_get"] == f"{prefix}nope does not exist"
        assert result["after_delete"] == [prefix + "a.txt"]
        assert result["cached"] == "alpha"
        # Written for real: another client reads it.
        key = f"tests/storage/{unique_name}/a.txt"
        assert s3_client.get_object(Bucket=s3_settings.bucket, Key=key)["Body"].read() == b"alpha"
    finally:
        worker.stop()
        for name in ("a.txt", "b.bin"):
            s3_client.delete_object(
                Bucket=s3_settings.bucket, Key=f"tests/storage/{unique_name}/{name}"
            )
