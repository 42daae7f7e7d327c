"""upload_result without S3: a file:// results folder, and refused keys."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from worker_daemon.cache import UploadFailed, WarmCache


def test_results_go_to_a_local_folder(open_cache: Callable[..., WarmCache], tmp_path: Path) -> None:
    folder = tmp_path / "results"
    cache = open_cache(results_url=folder.as_uri() + "/")
    url = cache.upload_result("hello", "run-1/out.txt")
    assert url == folder.as_uri() + "/run-1/out.txt"
    assert (folder / "run-1" / "out.txt").read_text() == "hello"
    assert cache.read_bytes(url) == b"hello"


def test_a_key_that_climbs_out_or_no_location_is_refused(
    open_cache: Callable[..., WarmCache], tmp_path: Path
) -> None:
    cache = open_cache(results_url=(tmp_path / "r").as_uri())
    with pytest.raises(UploadFailed, match=r"'\.\./x'"):
        cache.upload_result(b"x", "../x")
    cache.close()
    bare = open_cache()
    with pytest.raises(UploadFailed, match="MEMRUN_S3_BUCKET"):
        bare.upload_result(b"x", "k")
