"""Building packages: service settings read from the source, PEP 723, reproducible archives."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from memrun.errors import ConfigError
from memrun.packaging import build_package, read_script_metadata, resolve_service
from memrun.wire.archive import extract_package, inspect_package

HANDLER = """# /// script
# requires-python = ">=3.11"
# dependencies = [
#   "numpy>=2",
#   "tomli-w",
# ]
# ///
from memrun import MemoryService

svc = MemoryService("matrix-qa", memory="32Gi", disk="100Gi", max_workers=3, concurrency=4)


@svc.handler(sticky_key="user_id:dataset_id")
def answer(ctx, request):
    return {"n": request["n"] * 2}
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def service_source(call: str, decorator: str = "@svc.handler()") -> str:
    return (
        f"from memrun import MemoryService\n\nsvc = {call}\n\n\n"
        f"{decorator}\ndef f(ctx, request):\n    pass\n"
    )


def test_settings_are_read_from_the_code_without_importing_it(tmp_path: Path) -> None:
    handler = write(tmp_path / "handler.py", "import not_installed_anywhere\n" + HANDLER)
    service, warnings = resolve_service(handler)
    config = service.config()
    assert config.name == "matrix-qa"
    assert config.memory_bytes == 32 * 2**30
    assert config.disk_bytes == 100 * 2**30
    assert (config.max_workers, config.min_workers, config.concurrency) == (3, 1, 4)
    assert config.sticky_key == "user_id:dataset_id"
    assert warnings == []


def test_overrides_win_and_conflicts_become_warnings(tmp_path: Path) -> None:
    handler = write(tmp_path / "handler.py", HANDLER)
    service, warnings = resolve_service(
        handler,
        {
            "name": "matrix-prod",
            "memory": "64Gi",
            "disk": "100Gi",
            "concurrency": None,
            "timeout_seconds": 60,
        },
    )
    config = service.config()
    assert config.name == "matrix-prod"
    assert config.memory_bytes == 64 * 2**30
    assert config.concurrency == 4
    assert config.timeout_seconds == 60
    assert len(warnings) == 2
    assert any("--memory '64Gi' overrides '32Gi'" in warning for warning in warnings)
    assert any("'matrix-qa'" in warning for warning in warnings)


@pytest.mark.parametrize(
    ("call", "phrase"),
    [
        (
            'MemoryService("a-b", memory=SIZE)',
            "memory=SIZE (line 3) is not a literal (pass --memory)",
        ),
        ("MemoryService(NAME)", "name=NAME (line 3) is not a literal (pass --name)"),
        ('MemoryService("a-b", **OPTIONS)', "MemoryService(**OPTIONS) is not literal"),
        ('MemoryService("a-b", max_workers=2 * N)', "max_workers=2 * N"),
    ],
)
def test_non_literal_settings_are_reported(tmp_path: Path, call: str, phrase: str) -> None:
    handler = write(tmp_path / "handler.py", service_source(call))
    with pytest.raises(ConfigError, match="without running the code") as refusal:
        resolve_service(handler)
    assert phrase in str(refusal.value)


def test_a_flag_stands_in_for_a_non_literal_setting(tmp_path: Path) -> None:
    handler = write(tmp_path / "handler.py", service_source('MemoryService("a-b", memory=SIZE)'))
    service, warnings = resolve_service(handler, {"memory": "8Gi"})
    assert service.config().memory_bytes == 8 * 2**30
    assert warnings == []


@pytest.mark.parametrize(
    ("source", "phrase"),
    [
        ("x = 1\n", "no MemoryService(...) found"),
        (service_source('MemoryService("a-b")') + 'other = MemoryService("c-d")\n', "lines 3, 9"),
        (service_source('MemoryService("a-b", ram="3Gi")'), "no argument 'ram'"),
        (service_source('MemoryService("a-b", "4Gi")'), "only positional argument"),
        (service_source('MemoryService("Bad_Name")'), "service name 'Bad_Name' is not valid"),
        (service_source('MemoryService("a-b", memory="lots")'), "'lots' is not a size"),
        (service_source('MemoryService("a-b", min_workers=3)'), "cannot exceed max_workers"),
        (service_source('MemoryService(memory="1Gi")'), "has no name"),
        (
            service_source('MemoryService("a-b", sticky_key="a")', '@svc.handler(sticky_key="b")'),
            "give it in one place",
        ),
        (
            service_source('MemoryService("a-b")', '@svc.handler(sticky_key="a b")'),
            "not a field name",
        ),
        ("def broken(:\n", "syntax error"),
    ],
)
def test_invalid_services_are_refused_with_the_rule(
    tmp_path: Path, source: str, phrase: str
) -> None:
    handler = write(tmp_path / "handler.py", source)
    with pytest.raises(ConfigError) as refusal:
        resolve_service(handler)
    assert phrase in str(refusal.value)


def test_aliases_and_module_attribute_calls_are_found(tmp_path: Path) -> None:
    aliased = write(
        tmp_path / "a.py",
        "from memrun import MemoryService as MS\nsvc = MS('aliased')\n"
        "@svc.handler(sticky_key='k')\ndef f(ctx, r): pass\n",
    )
    dotted = write(
        tmp_path / "b.py",
        "import memrun\nsvc: memrun.MemoryService = memrun.MemoryService('dotted')\n",
    )
    assert resolve_service(aliased)[0].config().sticky_key == "k"
    assert resolve_service(dotted)[0].name == "dotted"


def test_unknown_override_is_refused(tmp_path: Path) -> None:
    handler = write(tmp_path / "handler.py", HANDLER)
    with pytest.raises(ConfigError, match="unknown settings"):
        resolve_service(handler, {"ram": "1Gi"})


def test_script_metadata_follows_pep_723() -> None:
    metadata = read_script_metadata(HANDLER)
    assert metadata.dependencies == ("numpy>=2", "tomli-w")
    assert metadata.requires_python == ">=3.11"
    assert read_script_metadata("print(1)\n").dependencies == ()
    # The spec's own example: an embedded '# ///' line does not end the block early.
    tricky = (
        '# /// script\n# dependencies = ["six"]\n# [tool.x]\n# text = """\n# ///\n# """\n# ///\n'
    )
    assert read_script_metadata(tricky).dependencies == ("six",)
    # A non-script block is ignored.
    assert read_script_metadata("# /// other\n# x = 1\n# ///\n").dependencies == ()


@pytest.mark.parametrize(
    ("source", "phrase"),
    [
        (
            '# /// script\n# dependencies = ["a"]\n# ///\nimport x\n'
            "# /// script\n# dependencies = []\n# ///\n",
            "more than one",
        ),
        ("# /// script\n# dependencies = [\n# ///\n", "not valid TOML"),
        ('# /// script\n# dependecies = ["a"]\n# ///\n', "unknown keys ['dependecies']"),
        ('# /// script\n# dependencies = "numpy"\n# ///\n', "list of requirements"),
        (
            '# /// script\n# dependencies = ["--index-url=http://x"]\n# ///\n',
            "list of requirements",
        ),
        ("# /// script\n# requires-python = 3.11\n# ///\n", "'requires-python' must be a string"),
    ],
)
def test_bad_script_metadata_is_refused(source: str, phrase: str) -> None:
    with pytest.raises(ConfigError) as refusal:
        read_script_metadata(source)
    assert phrase in str(refusal.value)


def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    handler = write(root / "handler.py", HANDLER)
    write(root / "lib" / "helpers.py", "def double(n):\n    return 2 * n\n")
    write(root / "lib" / "__pycache__" / "helpers.cpython-311.pyc", "stale")
    write(root / "data" / ("long-" * 30 + "é.json"), "{}")
    return handler


def test_build_writes_a_package_that_inspects_to_the_same_manifest(tmp_path: Path) -> None:
    handler = project(tmp_path)
    root = handler.parent
    out = tmp_path / "dist" / "matrix-qa.tar.gz"
    info = build_package(handler, includes=[root / "lib", root / "data"], out=out)
    assert info.size_bytes == out.stat().st_size
    assert inspect_package(out) == info.manifest
    manifest = info.manifest
    assert manifest.entry == "handler.py"
    assert manifest.dependencies == ("numpy>=2", "tomli-w")
    assert manifest.requires_python == ">=3.11"
    assert sorted(manifest.files) == [
        "data/" + "long-" * 30 + "é.json",
        "handler.py",
        "lib/helpers.py",
    ]
    with tarfile.open(out) as archive:
        names = archive.getnames()
        assert names[0] == "manifest.json"
        assert names[1:] == sorted(names[1:])
        assert {(m.uid, m.gid, m.mtime, m.mode, m.uname) for m in archive.getmembers()} == {
            (0, 0, 0, 0o644, "")
        }
    folder = extract_package(out, tmp_path / "packages")
    assert (folder / "lib/helpers.py").read_text() == "def double(n):\n    return 2 * n\n"
    assert [p.name for p in out.parent.iterdir()] == [out.name]


def test_the_same_inputs_give_the_same_sha256(tmp_path: Path) -> None:
    handler = project(tmp_path)
    includes = [handler.parent / "lib"]
    first = build_package(handler, includes=includes, out=tmp_path / "one.tar.gz")
    stream = io.BytesIO()
    second = build_package(handler, includes=includes, out=stream)
    assert first.sha256 == second.sha256
    assert (tmp_path / "one.tar.gz").read_bytes() == stream.getvalue()
    write(handler.parent / "lib" / "helpers.py", "def double(n):\n    return n + n\n")
    third = build_package(handler, includes=includes, out=io.BytesIO())
    assert third.sha256 != first.sha256


def test_created_at_comes_from_source_date_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = write(tmp_path / "handler.py", HANDLER)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    info = build_package(handler, out=io.BytesIO())
    assert info.manifest.created_at == "2023-11-14T22:13:20+00:00"
    explicit = datetime(2025, 1, 2, tzinfo=UTC)
    assert build_package(handler, out=io.BytesIO(), created_at=explicit).manifest.created_at == (
        "2025-01-02T00:00:00+00:00"
    )


def test_including_the_handler_folder_skips_hidden_and_cached_files(tmp_path: Path) -> None:
    handler = project(tmp_path)
    root = handler.parent
    write(root / ".git" / "HEAD", "ref")
    write(root / ".env", "SECRET=1")
    info = build_package(handler, includes=[root, root / ".env"], out=io.BytesIO())
    assert sorted(info.manifest.files) == [
        ".env",
        "data/" + "long-" * 30 + "é.json",
        "handler.py",
        "lib/helpers.py",
    ]


def test_includes_outside_the_handler_folder_keep_their_name(tmp_path: Path) -> None:
    handler = write(tmp_path / "app" / "handler.py", HANDLER)
    write(tmp_path / "shared" / "models.py", "X = 1\n")
    config = write(tmp_path / "settings.json", "{}")
    info = build_package(handler, includes=[tmp_path / "shared", config], out=io.BytesIO())
    assert sorted(info.manifest.files) == ["handler.py", "settings.json", "shared/models.py"]


@pytest.mark.parametrize(
    ("arrange", "phrase"),
    [
        (lambda lib: (lib / "link.py").symlink_to("/etc/passwd"), "link or special file"),
        (lambda lib: os.mkfifo(lib / "pipe"), "link or special file"),
        (lambda lib: write(lib / "bad\\name.py", ""), "backslash"),
    ],
)
def test_unpackageable_includes_are_refused(
    tmp_path: Path, arrange: Callable[[Path], object], phrase: str
) -> None:
    handler = write(tmp_path / "handler.py", HANDLER)
    write(tmp_path / "lib" / "ok.py", "")
    arrange(tmp_path / "lib")
    with pytest.raises(ConfigError) as refusal:
        build_package(handler, includes=[tmp_path / "lib"], out=io.BytesIO())
    assert phrase in str(refusal.value)


def test_reserved_and_missing_paths_are_refused(tmp_path: Path) -> None:
    handler = write(tmp_path / "handler.py", HANDLER)
    write(tmp_path / "manifest.json", "{}")
    with pytest.raises(ConfigError, match="reserved"):
        build_package(handler, includes=[tmp_path / "manifest.json"], out=io.BytesIO())
    write(tmp_path / "lib" / "manifest.json", "{}")
    info = build_package(handler, includes=[tmp_path / "lib"], out=io.BytesIO())
    assert "lib/manifest.json" in info.manifest.files
    with pytest.raises(ConfigError, match="does not exist"):
        build_package(handler, includes=[tmp_path / "nope"], out=io.BytesIO())
    with pytest.raises(ConfigError, match=r"must be an existing \.py file"):
        build_package(tmp_path / "manifest.json", out=io.BytesIO())


def test_a_failed_build_leaves_no_partial_archive(tmp_path: Path) -> None:
    handler = write(tmp_path / "src" / "handler.py", service_source("MemoryService(NAME)"))
    out = tmp_path / "dist" / "x.tar.gz"
    with pytest.raises(ConfigError):
        build_package(handler, out=out)
    assert not out.exists()
    assert not (tmp_path / "dist").exists() or list((tmp_path / "dist").iterdir()) == []
