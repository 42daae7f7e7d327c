"""From a package file or a dev folder to an imported MemoryService, without dependencies."""

from __future__ import annotations

import hashlib
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from memrun import MemoryService
from memrun.errors import PackageRejected
from memrun.packaging import build_package
from memrun.wire.archive import inspect_package
from worker_daemon.package import (
    DependencyError,
    ServiceLoadError,
    load_service,
    prepare,
)

HANDLER = """# /// script
# requires-python = ">=3.11"
# dependencies = []
# ///
from memrun import MemoryService
from helpers import double

svc = MemoryService("round-trip", memory="1Gi", concurrency=2)


@svc.handler(sticky_key="user_id")
def answer(ctx, request):
    return {"doubled": double(request["n"])}
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def built(tmp_path: Path, handler_text: str = HANDLER) -> Path:
    handler = write(tmp_path / "src" / "handler.py", handler_text)
    write(tmp_path / "src" / "helpers.py", "def double(n):\n    return 2 * n\n")
    out = tmp_path / "dist" / "package.tar.gz"
    build_package(handler, includes=[handler.parent / "helpers.py"], out=out)
    return out


def test_round_trip_build_inspect_prepare_load_run(tmp_path: Path) -> None:
    package = built(tmp_path)
    manifest = inspect_package(package)
    sha256 = hashlib.sha256(package.read_bytes()).hexdigest()
    prepared = prepare(package, work_root=tmp_path / "work", expected_sha256=sha256)
    assert prepared.folder == tmp_path / "work" / "packages" / sha256
    assert prepared.entry == prepared.folder / "handler.py"
    assert prepared.manifest == manifest
    assert prepared.site_packages is None
    assert prepared.sha256 == sha256
    service = load_service(prepared)
    assert isinstance(service, MemoryService)
    assert service.config() == manifest.config
    assert service.request_handler is not None
    assert service.request_handler.fn(None, {"n": 21}) == {"doubled": 42}


def test_a_second_prepare_reuses_the_extracted_folder(tmp_path: Path) -> None:
    package = built(tmp_path)
    first = prepare(package, work_root=tmp_path / "work", expected_sha256=None)
    marker = (first.entry.stat().st_ino, first.entry.stat().st_mtime_ns)
    second = prepare(package, work_root=tmp_path / "work", expected_sha256=None)
    assert second == first
    assert (second.entry.stat().st_ino, second.entry.stat().st_mtime_ns) == marker
    assert [path.name for path in (tmp_path / "work" / "packages").iterdir()] == [first.folder.name]


def test_a_wrong_sha256_is_refused_before_extracting(tmp_path: Path) -> None:
    package = built(tmp_path)
    with pytest.raises(PackageRejected, match="expected") as refusal:
        prepare(package, work_root=tmp_path / "work", expected_sha256="0" * 64)
    assert refusal.value.reason == "hash_mismatch"
    assert not (tmp_path / "work" / "packages").exists()


def test_a_hostile_package_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    package = tmp_path / "evil.tar.gz"
    package.write_bytes(b"PK\x03\x04 a zip pretending")
    with pytest.raises(PackageRejected, match="zip"):
        prepare(package, work_root=tmp_path / "work", expected_sha256=None)
    assert list((tmp_path / "work" / "packages").iterdir()) == []


def test_two_packages_load_as_distinct_modules(tmp_path: Path) -> None:
    one = load_service(
        prepare(built(tmp_path / "a"), work_root=tmp_path / "w", expected_sha256=None)
    )
    two = load_service(
        prepare(built(tmp_path / "b"), work_root=tmp_path / "w", expected_sha256=None)
    )
    assert one is not two
    assert one.request_handler is not None and two.request_handler is not None
    assert one.request_handler.fn.__module__ != two.request_handler.fn.__module__


def test_a_dev_folder_is_used_in_place(tmp_path: Path) -> None:
    folder = tmp_path / "dev"
    write(folder / "helpers.py", "def double(n):\n    return 2 * n\n")
    write(folder / "handler.py", HANDLER)
    prepared = prepare(folder, work_root=tmp_path / "work", expected_sha256=None)
    assert prepared.folder == folder.resolve()
    assert prepared.entry == folder.resolve() / "handler.py"
    assert prepared.manifest is None and prepared.sha256 is None
    assert load_service(prepared).name == "round-trip"
    assert not (tmp_path / "work").exists()


def test_a_dev_folder_with_one_module_uses_it_as_entry(tmp_path: Path) -> None:
    write(tmp_path / "dev" / "qa.py", HANDLER.replace("from helpers import double", "double = abs"))
    prepared = prepare(tmp_path / "dev", work_root=tmp_path / "work", expected_sha256=None)
    assert prepared.entry.name == "qa.py"


def test_an_extracted_package_folder_keeps_its_manifest(tmp_path: Path) -> None:
    first = prepare(built(tmp_path), work_root=tmp_path / "work", expected_sha256=None)
    copy = tmp_path / "copy"
    shutil.copytree(first.folder, copy)
    prepared = prepare(copy, work_root=tmp_path / "other", expected_sha256=None)
    assert prepared.manifest == first.manifest


@pytest.mark.parametrize(
    ("arrange", "error", "phrase"),
    [
        (
            lambda dev: [write(dev / name, "") for name in ("a.py", "b.py")],
            ServiceLoadError,
            "no handler.py",
        ),
        (lambda dev: dev.mkdir(), ServiceLoadError, "0 .py files"),
        (lambda dev: None, ServiceLoadError, "does not exist"),
        (
            lambda dev: write(
                dev / "handler.py", '# /// script\n# requires-python = "<3"\n# ///\n'
            ),
            DependencyError,
            "requires Python <3",
        ),
        (
            lambda dev: write(
                dev / "handler.py", '# /// script\n# requires-python = "about 3"\n# ///\n'
            ),
            DependencyError,
            "cannot read",
        ),
    ],
)
def test_unusable_sources_are_refused(
    tmp_path: Path, arrange: Callable[[Path], object], error: type[Exception], phrase: str
) -> None:
    dev = tmp_path / "dev"
    arrange(dev)
    with pytest.raises(error) as refusal:
        prepare(dev, work_root=tmp_path / "work", expected_sha256=None)
    assert phrase in str(refusal.value)


def test_a_folder_has_no_sha256_to_verify(tmp_path: Path) -> None:
    write(tmp_path / "dev" / "handler.py", HANDLER)
    with pytest.raises(ServiceLoadError, match="no sha256"):
        prepare(tmp_path / "dev", work_root=tmp_path / "work", expected_sha256="0" * 64)


SERVICE = 'from memrun import MemoryService\nsvc = MemoryService("load-test")\n'
HANDLED = SERVICE + "@svc.handler()\ndef run(ctx, request):\n    return request\n"


@pytest.mark.parametrize(
    ("source", "phrase"),
    [
        ("x = 1\n", "declares no MemoryService"),
        (
            HANDLED + 'other = MemoryService("other-svc")\n',
            "several MemoryService objects (other, svc)",
        ),
        (SERVICE, "has no request handler; decorate one function with @svc.handler()"),
        ("import not_installed_anywhere_xyz\n", "ModuleNotFoundError: No module named"),
        (SERVICE + "\n\nraise RuntimeError('boom')\n", "RuntimeError: boom"),
        (SERVICE + "raise SystemExit(3)\n", "SystemExit: 3"),
        (SERVICE + "@svc.handler\ndef run(ctx, request):\n    pass\n", "with parentheses"),
    ],
)
def test_load_errors_say_what_is_wrong(tmp_path: Path, source: str, phrase: str) -> None:
    write(tmp_path / "dev" / "handler.py", source)
    prepared = prepare(tmp_path / "dev", work_root=tmp_path / "work", expected_sha256=None)
    with pytest.raises(ServiceLoadError) as refusal:
        load_service(prepared)
    assert phrase in str(refusal.value)


def test_an_import_error_carries_the_traceback_tail(tmp_path: Path) -> None:
    write(
        tmp_path / "dev" / "handler.py", SERVICE + "\n\ndef boom():\n    return 1 / 0\n\n\nboom()\n"
    )
    prepared = prepare(tmp_path / "dev", work_root=tmp_path / "work", expected_sha256=None)
    with pytest.raises(ServiceLoadError) as refusal:
        load_service(prepared)
    tail = refusal.value.details["traceback_tail"]
    assert 'handler.py", line 6, in boom' in tail
    assert tail.endswith("ZeroDivisionError: division by zero")
    assert not any(name.startswith("memrun_handler_") for name in sys.modules)


def test_one_service_under_two_names_is_one_service(tmp_path: Path) -> None:
    write(tmp_path / "dev" / "handler.py", HANDLED + "alias = svc\n")
    prepared = prepare(tmp_path / "dev", work_root=tmp_path / "work", expected_sha256=None)
    assert load_service(prepared).name == "load-test"
