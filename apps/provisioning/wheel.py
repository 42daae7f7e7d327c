"""The appliance's own memrun, as a wheel a remote worker installs: the exact code this
appliance runs, pinned by sha256 in the worker's user-data.

Built once per version and source (`pip wheel --no-deps` from a copy of the packaged
folders, so the source tree gets no build/ or egg-info), and kept under
MEMRUN_BOOTSTRAP_WHEEL_DIR (default MEMRUN_HOME/wheels). The folder name holds the
version and a digest of the sources: a changed checkout at the same version number is a
different wheel, never a stale one.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from apps.common.errors import DomainError

# What pyproject.toml packages (its [tool.setuptools.packages.find] and readme).
_PACKAGES = ("memrun", "worker_daemon", "memrun_site", "apps")
_FILES = ("pyproject.toml", "README.md")
_BUILD_TIMEOUT_S = 600


@dataclass(frozen=True)
class Wheel:
    path: Path
    sha256: str
    version: str

    @property
    def filename(self) -> str:
        return self.path.name


def appliance_wheel() -> Wheel:
    """The wheel of the memrun this appliance runs, built on first use. DomainError 503
    when this appliance has no sources to build it from, or the build fails."""
    source = Path(settings.BASE_DIR)
    if not (source / "pyproject.toml").is_file():
        raise DomainError(
            f"this appliance has no memrun sources at {source} to build the workers' wheel "
            "from; run it from a checkout or the image, which include them",
            status=503,
        )
    version = importlib.metadata.version("memrun")
    folder = Path(settings.MEMRUN_BOOTSTRAP_WHEEL_DIR) / f"{version}-{_sources_digest(source)}"
    found = sorted(folder.glob("memrun-*.whl")) if folder.is_dir() else []
    if not found:
        _build(source, folder)
        found = sorted(folder.glob("memrun-*.whl"))
    path = found[0]
    return Wheel(path=path, sha256=_file_sha256(path), version=version)


def _sources_digest(source: Path) -> str:
    digest = hashlib.sha256()
    for name in _FILES:
        digest.update(name.encode() + b"\0" + (source / name).read_bytes())
    for package in _PACKAGES:
        for path in sorted((source / package).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(source)).encode() + b"\0")
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _build(source: Path, folder: Path) -> None:
    """Build into a temporary folder beside `folder`, then rename: concurrent builders
    both finish, the first rename wins and the other's copy is dropped."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".build-") as scratch:
        copy = Path(scratch) / "src"
        copy.mkdir()
        for name in _FILES:
            shutil.copy2(source / name, copy / name)
        for package in _PACKAGES:
            shutil.copytree(
                source / package, copy / package, ignore=shutil.ignore_patterns("__pycache__")
            )
        out = Path(scratch) / "out"
        done = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), "."],
            cwd=copy,
            capture_output=True,
            text=True,
            timeout=_BUILD_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0 or not list(out.glob("memrun-*.whl")):
            raise DomainError(
                "building the workers' memrun wheel failed: "
                + (done.stderr.strip().splitlines() or ["no wheel was written"])[-1],
                status=503,
            )
        try:
            os.rename(out, folder)
        except OSError:
            if not folder.is_dir():
                raise


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        for chunk in iter(lambda: data.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()
