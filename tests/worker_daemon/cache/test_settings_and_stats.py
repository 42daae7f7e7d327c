"""Settings from the environment, their checks, and stats fit for a heartbeat."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from worker_daemon.cache import CacheSettings, WarmCache
from worker_daemon.cache.settings import MAX_CAPACITY_BYTES, WORKER_CACHE_ROOT

GiB = 2**30


def test_a_provisioned_worker_caches_under_var_lib_and_writes_results_to_s3() -> None:
    settings = CacheSettings.from_env(
        "matrix-qa",
        disk_bytes=800 * GiB,
        memory_bytes=32 * GiB,
        environ={"MEMRUN_S3_BUCKET": "memrun", "AWS_ENDPOINT_URL": "http://s3:9000"},
    )
    assert settings.service_dir == WORKER_CACHE_ROOT / "matrix-qa"
    assert settings.capacity_bytes == MAX_CAPACITY_BYTES
    assert settings.memory_budget_bytes == 16 * GiB
    assert settings.results_url == "s3://memrun/results/matrix-qa/"
    assert settings.s3_endpoint_url == "http://s3:9000"


def test_a_local_worker_caches_under_memrun_home(tmp_path: Path) -> None:
    settings = CacheSettings.from_env(
        "svc",
        disk_bytes=GiB,
        memory_bytes=GiB,
        environ={"MEMRUN_HOME": str(tmp_path), "MEMRUN_CACHE_MAX_AGE_S": "30"},
    )
    assert settings.service_dir == tmp_path / "cache" / "svc"
    assert settings.results_url == (tmp_path / "results" / "svc").as_uri() + "/"
    assert settings.max_age_s == 30.0


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("service", "../escape", "plain folder name"),
        ("capacity_bytes", 0, "must be positive"),
        ("capacity_bytes", MAX_CAPACITY_BYTES + 1, "600Gi"),
        ("download_concurrency", 0, "download_concurrency"),
    ],
)
def test_settings_refuse_values_that_cannot_work(
    settings_for: Callable[..., CacheSettings], field: str, value: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        settings_for(**{field: value})


def test_stats_are_json_for_the_heartbeat(
    open_cache: Callable[..., WarmCache], source_file: Callable[[str, int], Path]
) -> None:
    cache = open_cache()
    url = str(source_file("f", 100))
    cache.get_or_fetch(url)
    cache.get_or_fetch(url)
    stats = json.loads(json.dumps(cache.stats()))
    assert stats["requests"] == 2 and stats["fetches"] == 1
    assert stats["bytes"] == {"memory": 0, "disk": 100, "remote": 100, "waited": 0}
    assert stats["fetched_bytes"] == 100 and stats["adopted"] == 0
    assert stats["disk"]["used_bytes"] == 100 and stats["downloads_in_flight"] == 0
