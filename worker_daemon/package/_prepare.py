"""Turn a package (a .tar.gz, or a folder in dev mode) into files on disk and a ready venv."""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

from memrun.errors import PackageRejected
from memrun.packaging import read_script_metadata
from memrun.wire.archive import extract_package, read_manifest
from memrun.wire.manifest import MANIFEST_NAME, Manifest
from worker_daemon.logs import EventLog
from worker_daemon.package._python import python_satisfies
from worker_daemon.package._venv import ensure_venv
from worker_daemon.package.errors import DependencyError, ServiceLoadError

INSTALL_TIMEOUT_S = 1800.0
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class PreparedPackage:
    """A package ready to import: its folder, entry module and the venv to put on sys.path.

    `manifest` and `sha256` are None for a dev folder without a manifest.json;
    `site_packages` is None when the package declares no dependencies.
    """

    folder: Path
    entry: Path
    manifest: Manifest | None
    site_packages: Path | None
    sha256: str | None


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _dev_entry(folder: Path) -> Path:
    """The entry of a folder without manifest: its only .py file, else its handler.py."""
    modules = sorted(path for path in folder.glob("*.py") if path.is_file())
    if len(modules) == 1:
        return modules[0]
    if (folder / "handler.py").is_file():
        return folder / "handler.py"
    raise ServiceLoadError(
        f"{folder} holds {len(modules)} .py files and no handler.py: name the entry module "
        "handler.py, or deploy a package built by memrun deploy"
    )


def _unpacked(source: Path, work_root: Path, expected_sha256: str | None) -> tuple[Path, str]:
    sha256 = _sha256_file(source)
    if expected_sha256 is not None and sha256 != expected_sha256.lower():
        raise PackageRejected(
            "hash_mismatch",
            f"the package's sha256 is {sha256}, but {expected_sha256} was expected",
            details={"expected": expected_sha256, "actual": sha256},
        )
    folder = work_root / "packages" / sha256
    if not folder.is_dir():
        folder = extract_package(source, work_root / "packages")
    if folder.name != sha256:
        raise PackageRejected("hash_mismatch", f"{source} changed while it was being extracted")
    return folder, sha256


def prepare(
    source: Path,
    *,
    work_root: Path,
    expected_sha256: str | None,
    install_timeout_s: float = INSTALL_TIMEOUT_S,
    log: EventLog | None = None,
) -> PreparedPackage:
    """Verify, extract (or reuse) `source` and build (or reuse) the venv its deps need.

    `source` is a .tar.gz, extracted to `{work_root}/packages/{sha256}`, or a folder used
    in place (dev mode; `expected_sha256` must then be None). Raises PackageRejected,
    DependencyError or ServiceLoadError with the reason. `log` hears about the venv
    (worker_daemon/package/_venv.py's events).
    """
    sha256: str | None = None
    if source.is_dir():
        if expected_sha256 is not None:
            raise ServiceLoadError(f"{source} is a folder, which has no sha256 to verify")
        folder = source.resolve()
    elif source.is_file():
        folder, sha256 = _unpacked(source, work_root, expected_sha256)
    else:
        raise ServiceLoadError(f"package {source} does not exist")
    manifest = read_manifest(folder) if (folder / MANIFEST_NAME).is_file() else None
    if manifest is not None:
        entry = folder / manifest.entry
        dependencies, requires_python = manifest.dependencies, manifest.requires_python
    else:
        entry = _dev_entry(folder)
        script = read_script_metadata(entry.read_text(encoding="utf-8"), filename=entry.name)
        dependencies, requires_python = script.dependencies, script.requires_python
    if not entry.is_file():
        raise ServiceLoadError(f"the entry module {entry} does not exist")
    _check_python(requires_python)
    site_packages = None
    if dependencies:
        site_packages = ensure_venv(
            dependencies,
            requires_python,
            venvs_root=work_root / "venvs",
            timeout_s=install_timeout_s,
            log=log,
        )
    return PreparedPackage(folder, entry, manifest, site_packages, sha256)


def _check_python(requires_python: str | None) -> None:
    if requires_python is None:
        return
    version = sys.version_info[:3]
    try:
        satisfied = python_satisfies(requires_python, version)
    except ValueError as exc:
        raise DependencyError(f"requires-python {requires_python!r}: {exc}") from None
    if not satisfied:
        running = ".".join(map(str, version))
        raise DependencyError(
            f"the package requires Python {requires_python}, but this worker runs {running}",
            details={"requires_python": requires_python, "python": running},
        )
