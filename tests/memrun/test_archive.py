"""Safe package reading (I7): a corpus of hostile packages, each refused, nothing written."""

from __future__ import annotations

import random
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from memrun.wire.archive import PackageLimits, extract_package, inspect_package, read_manifest
from tests.memrun.archives import (
    HANDLER,
    assert_refused,
    cases,
    member,
    package,
    sha256,
    tree,
    valid,
)


@pytest.mark.parametrize(
    ("build", "reason", "phrase"),
    [pytest.param(build, reason, phrase, id=case_id) for case_id, build, reason, phrase in cases()],
)
def test_hostile_package_is_refused_and_writes_nothing(
    tmp_path: Path, build: Callable[[], bytes], reason: str, phrase: str
) -> None:
    assert_refused(tmp_path, build(), reason, phrase)


def test_the_valid_package_of_the_corpus_is_accepted(tmp_path: Path) -> None:
    source = tmp_path / "package.tar.gz"
    source.write_bytes(valid())
    manifest = inspect_package(source)
    folder = extract_package(source, tmp_path / "packages")
    assert folder.name == sha256(source.read_bytes())
    assert tree(tmp_path / "packages") == {
        folder.name,
        f"{folder.name}/handler.py",
        f"{folder.name}/manifest.json",
    }
    assert (folder / "handler.py").read_bytes() == HANDLER
    assert read_manifest(folder) == manifest
    assert manifest.service == "demo-svc" and manifest.entry == "handler.py"


def test_extracting_the_same_archive_twice_reuses_the_folder(tmp_path: Path) -> None:
    source = tmp_path / "package.tar.gz"
    source.write_bytes(valid())
    first = extract_package(source, tmp_path / "packages")
    with source.open("rb") as stream:
        second = extract_package(stream, tmp_path / "packages")
    assert first == second
    assert [path.name for path in (tmp_path / "packages").iterdir()] == [first.name]


def test_folders_and_nested_files_extract(tmp_path: Path) -> None:
    files = {"handler.py": HANDLER, "lib/deep/util.py": b"X = 1\n", "data/é.json": b"{}"}
    data = package(
        [member("lib", kind=tarfile.DIRTYPE), member("empty", kind=tarfile.DIRTYPE)], files=files
    )
    source = tmp_path / "package.tar.gz"
    source.write_bytes(data)
    folder = extract_package(source, tmp_path / "packages")
    assert (folder / "lib/deep/util.py").read_bytes() == b"X = 1\n"
    assert (folder / "data/é.json").read_bytes() == b"{}"
    assert (folder / "empty").is_dir()


@pytest.mark.parametrize(
    ("limits", "reason"),
    [
        (PackageLimits(max_archive_bytes=2048), "archive_too_large"),
        (PackageLimits(max_file_bytes=4096), "file_too_large"),
        (PackageLimits(max_inflated_bytes=8192), "inflated_too_large"),
        (PackageLimits(max_members=2), "too_many_members"),
        (PackageLimits(max_name_length=8), "name_too_long"),
        (PackageLimits(max_manifest_bytes=64), "manifest_invalid"),
    ],
)
def test_each_limit_is_enforced(tmp_path: Path, limits: PackageLimits, reason: str) -> None:
    noise = random.Random(1).randbytes(6000)
    data = package(files={"handler.py": HANDLER, "noise.bin": noise})
    assert_refused(tmp_path, data, reason, "", limits)
