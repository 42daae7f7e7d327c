"""PEP 723 dependencies: one venv per dependency set, reused, never half-built.

These tests install a small pure-Python package (tomli-w) from PyPI.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from memrun.packaging import build_package
from tests.fixtures.envprobe import REQUIREMENT, probe_index
from worker_daemon.logs import EventLog
from worker_daemon.package import DependencyError, _venv, load_service, prepare
from worker_daemon.package._venv import VENV_MARKER, ensure_venv, installer_env

HANDLER = """# /// script
# dependencies = ["tomli-w>=1.0"]
# ///
import tomli_w
from memrun import MemoryService

svc = MemoryService("deps-test")


@svc.handler()
def dump(ctx, request):
    return tomli_w.dumps(request)
"""


def package(tmp_path: Path, handler_text: str = HANDLER) -> Path:
    handler = tmp_path / "src" / "handler.py"
    handler.parent.mkdir(parents=True, exist_ok=True)
    handler.write_text(handler_text, encoding="utf-8")
    out = tmp_path / "dist" / "package.tar.gz"
    build_package(handler, out=out)
    return out


def venv_of(site_packages: Path) -> Path:
    return site_packages.parents[2]


def said(stream: io.BytesIO) -> list[dict[str, object]]:
    """The events an EventLog wrote to `stream`, without their time."""
    events = [json.loads(line) for line in stream.getvalue().decode().splitlines()]
    return [{k: v for k, v in event.items() if k != "ts"} for event in events]


def test_dependencies_get_a_venv_that_the_next_prepare_reuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work_root = tmp_path / "work"
    built = io.BytesIO()
    first = prepare(
        package(tmp_path / "a"), work_root=work_root, expected_sha256=None, log=EventLog(built)
    )
    assert first.site_packages is not None
    key = venv_of(first.site_packages).name
    [installing, installed] = said(built)
    assert installing == {
        "event": "package.dependencies",
        "dependencies": ["tomli-w>=1.0"],
        "venv_key": key,
        "reused": False,
    }
    assert installed["event"] == "package.dependencies_installed"
    assert installed["venv_key"] == key
    assert isinstance(installed["seconds"], float) and installed["seconds"] >= 0
    assert (first.site_packages / "tomli_w").is_dir()
    marker = venv_of(first.site_packages) / VENV_MARKER
    recorded = (marker.read_text(), marker.stat().st_mtime_ns)
    assert json.loads(recorded[0])["dependencies"] == ["tomli-w>=1.0"]

    service = load_service(first)
    assert service.request_handler is not None
    assert service.request_handler.fn(None, {"a": 1}) == "a = 1\n"

    def no_installer(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"an installer ran: {args}")

    monkeypatch.setattr(_venv.subprocess, "run", no_installer)
    reused = io.BytesIO()
    again = prepare(
        package(tmp_path / "a"), work_root=work_root, expected_sha256=None, log=EventLog(reused)
    )
    assert said(reused) == [
        {
            "event": "package.dependencies",
            "dependencies": ["tomli-w>=1.0"],
            "venv_key": key,
            "reused": True,
        }
    ]
    other = prepare(
        package(tmp_path / "b", HANDLER.replace("deps-test", "deps-other")),
        work_root=work_root,
        expected_sha256=None,
    )
    assert again.site_packages == other.site_packages == first.site_packages
    assert other.folder != first.folder
    assert (marker.read_text(), marker.stat().st_mtime_ns) == recorded
    assert [p.name for p in (work_root / "venvs").iterdir() if p.is_dir()] == [
        venv_of(first.site_packages).name
    ]


def test_the_venv_python_sees_its_dependencies_and_memrun(tmp_path: Path) -> None:
    site_packages = ensure_venv(["tomli-w"], None, venvs_root=tmp_path / "venvs", timeout_s=600)
    python = venv_of(site_packages) / "bin" / "python"
    result = subprocess.run(
        [str(python), "-c", "import memrun, tomli_w; print(memrun.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0.1.0"


def test_a_failed_install_says_why_and_leaves_no_venv(tmp_path: Path) -> None:
    bogus = HANDLER.replace('"tomli-w>=1.0"', '"tomli-w==999.0"')
    stream = io.BytesIO()
    with pytest.raises(DependencyError) as refusal:
        prepare(
            package(tmp_path, bogus),
            work_root=tmp_path / "work",
            expected_sha256=None,
            log=EventLog(stream),
        )
    message = str(refusal.value)
    [installing, failed] = said(stream)
    assert installing["event"] == "package.dependencies" and installing["reused"] is False
    assert failed["event"] == "package.dependencies_failed"
    assert failed["error"] == refusal.value.message
    assert message.startswith("installing tomli-w==999.0 failed (exit")
    assert "tomli-w" in refusal.value.details["output_tail"]
    leftovers = [p.name for p in (tmp_path / "work" / "venvs").iterdir() if p.is_dir()]
    assert leftovers == []


def test_concurrent_builds_of_one_venv_build_it_once(tmp_path: Path) -> None:
    results: list[Path] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            results.append(ensure_venv(["tomli-w"], None, venvs_root=tmp_path, timeout_s=600))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(results)) == 1
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [venv_of(results[0]).name]


@pytest.mark.slow
def test_without_uv_pip_builds_the_venv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_venv, "_find_uv", lambda: None)
    site_packages = ensure_venv(["tomli-w"], None, venvs_root=tmp_path, timeout_s=600)
    marker = json.loads((venv_of(site_packages) / VENV_MARKER).read_text())
    assert marker["installer"] == "pip"
    assert (site_packages / "tomli_w").is_dir()
    python = venv_of(site_packages) / "bin" / "python"
    subprocess.run([str(python), "-c", "import memrun, tomli_w"], check=True)
    assert sys.version.startswith(marker["python"].split()[0])


# What a provisioned worker holds besides the install settings (I8): never for the installer.
WORKER_SECRETS = {
    "MEMRUN_WORKER_TOKEN": "mrw_not-for-the-installer",
    "AWS_ACCESS_KEY_ID": "not-for-the-installer",
    "AWS_SECRET_ACCESS_KEY": "not-for-the-installer",
    "DATABASE_URL": "postgres://memrun:not-for-the-installer@db/memrun",
    "REDIS_URL": "redis://127.0.0.1:1/0",
}


def test_the_installer_gets_the_install_settings_and_none_of_the_workers_secrets(
    tmp_path: Path,
) -> None:
    record = tmp_path / "installer-env.json"
    with probe_index(record) as index_url:
        environ = {
            **WORKER_SECRETS,
            "PATH": os.environ["PATH"],
            "HOME": os.environ["HOME"],
            "UV_INDEX_URL": index_url,
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
        site_packages = ensure_venv(
            [REQUIREMENT], None, venvs_root=tmp_path / "venvs", timeout_s=600, environ=environ
        )
    assert (site_packages / "memrun_test_envprobe.py").is_file()
    seen = json.loads(record.read_text())
    assert seen["UV_INDEX_URL"] == index_url
    assert seen["NO_PROXY"] == seen["no_proxy"] == "127.0.0.1,localhost"
    assert seen["UV_SYSTEM_CERTS"] == "1"
    assert not set(WORKER_SECRETS) & set(seen)


def test_uv_trusts_the_system_certificates_unless_the_machine_says_otherwise() -> None:
    assert installer_env({"PATH": "/bin", "AWS_SECRET_ACCESS_KEY": "x"}) == {
        "PATH": "/bin",
        "UV_SYSTEM_CERTS": "1",
        "UV_NATIVE_TLS": "1",
    }
    assert installer_env({"UV_NATIVE_TLS": "0"}) == {"UV_NATIVE_TLS": "0"}
    assert installer_env({"UV_SYSTEM_CERTS": "false"}) == {"UV_SYSTEM_CERTS": "false"}


def test_a_password_in_a_dependency_url_is_not_in_the_failure(tmp_path: Path) -> None:
    secret = "s3cret-pw"
    dependency = f"nothing @ http://alice:{secret}@127.0.0.1:9/nothing-1.0.tar.gz"
    with pytest.raises(DependencyError) as refusal:
        ensure_venv([dependency], None, venvs_root=tmp_path, timeout_s=600)
    assert "http://***@127.0.0.1:9/nothing-1.0.tar.gz" in refusal.value.message
    assert secret not in refusal.value.message
    assert secret not in json.dumps(refusal.value.details)
