"""One virtualenv per set of PEP 723 dependencies, built once, atomically, and reused.

A venv lives at `{venvs_root}/{key}`, the key hashing the dependencies, requires-python
and this interpreter. It is built in a temporary folder and renamed into place with its
marker file already inside, so a half-built venv is never found under its key.

The installer runs with `installer_env`: the machine's trust store, index and proxy
settings (memrun.wire.install_env) and a few basics, never the worker's own secrets; uv
is told to trust the system's certificates, where a corporate CA is installed.

Given an event log, it says what it does, for the rollout page (apps/web/selectors.py):
`package.dependencies` (the list, the venv key, reused or not; a reused venv says no
more), then `package.dependencies_installed` (seconds) or `package.dependencies_failed`
(the redacted reason, the seconds).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from memrun.wire.install_env import install_env_pick, redact_urls
from worker_daemon.logs import EventLog
from worker_daemon.package.errors import DependencyError

VENV_MARKER = "memrun-venv.json"
# What the installer gets of the worker's environment besides the allowlist: where the
# programs are, the home its caches live in, the locale and the temporary folder.
INSTALLER_BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR")
# uv trusts only its bundled roots unless told otherwise. UV_SYSTEM_CERTS is the current
# name, UV_NATIVE_TLS the older one (deprecated, but the only one older uv reads).
_UV_SYSTEM_CERTS = ("UV_SYSTEM_CERTS", "UV_NATIVE_TLS")
_WORKER_ENV_PTH = "_memrun_worker_env.pth"
_OUTPUT_TAIL_LINES = 30


def venv_key(dependencies: Sequence[str], requires_python: str | None) -> str:
    """The folder name of the venv for these dependencies on this interpreter."""
    identity = {
        "dependencies": sorted(dependencies),
        "requires_python": requires_python,
        "python": sys.version,
        "prefix": sys.prefix,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


def site_packages(venv: Path) -> Path:
    return Path(sysconfig.get_path("purelib", "venv", vars={"base": str(venv)}))


def _find_uv() -> str | None:
    """uv from the running environment first (pinned with it), else from PATH."""
    beside = Path(sys.executable).parent / "uv"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("uv")


def installer_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of the venv and install commands, from the worker's `environ`:
    INSTALLER_BASE_ENV and the allowlisted install settings, with uv using the system's
    certificates unless the machine says otherwise."""
    env = {name: environ[name] for name in INSTALLER_BASE_ENV if name in environ}
    env |= install_env_pick(environ)
    if not any(name in env for name in _UV_SYSTEM_CERTS):
        env |= dict.fromkeys(_UV_SYSTEM_CERTS, "1")
    return env


def _run(command: list[str], *, what: str, env: Mapping[str, str], timeout_s: float) -> None:
    try:
        result = subprocess.run(
            command,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout if isinstance(exc.stdout, str) else ""
        raise _failure(f"{what} took longer than {timeout_s:.0f} s", output) from None
    if result.returncode != 0:
        raise _failure(f"{what} failed (exit {result.returncode})", result.stdout)


def _failure(headline: str, output: str) -> DependencyError:
    # An index URL's password would otherwise reach the logs and the deployment's reason.
    tail = redact_urls("\n".join(output.strip().splitlines()[-_OUTPUT_TAIL_LINES:]))
    headline = redact_urls(headline)
    return DependencyError(f"{headline}:\n{tail}", details={"output_tail": tail})


def _link_worker_env(venv: Path) -> None:
    """Let the venv's own python import this worker's packages (memrun among them).

    `--system-site-packages` exposes the base interpreter's packages only; when the worker
    itself runs in a venv, its site-packages are added after the new venv's own.
    """
    lines = [
        f"import site, sys; {path!r} in sys.path or site.addsitedir({path!r})\n"
        for path in site.getsitepackages()
    ]
    (site_packages(venv) / _WORKER_ENV_PTH).write_text("".join(lines), encoding="utf-8")


def _build(
    venv: Path,
    dependencies: Sequence[str],
    *,
    key: str,
    requires_python: str | None,
    env: Mapping[str, str],
    timeout_s: float,
) -> None:
    uv = _find_uv()
    python = str(venv / "bin" / "python")
    if uv is not None:
        create = [uv, "venv", "--quiet", "--system-site-packages", "--python", sys.executable]
        install = [uv, "pip", "install", "--python", python, "--"]
    else:
        create = [sys.executable, "-m", "venv", "--system-site-packages"]
        install = [
            python,
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--",
        ]
    _run([*create, str(venv)], what="creating the venv", env=env, timeout_s=timeout_s)
    _link_worker_env(venv)
    _run(
        [*install, *dependencies],
        what=f"installing {', '.join(dependencies)}",
        env=env,
        timeout_s=timeout_s,
    )
    marker = {
        "key": key,
        "dependencies": list(dependencies),
        "requires_python": requires_python,
        "python": sys.version,
        "installer": "uv" if uv else "pip",
        "created_at": datetime.now(UTC).isoformat(),
    }
    (venv / VENV_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise builds of one key across the worker processes sharing a work root."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_venv(
    dependencies: Sequence[str],
    requires_python: str | None,
    *,
    venvs_root: Path,
    timeout_s: float,
    environ: Mapping[str, str] = os.environ,
    log: EventLog | None = None,
) -> Path:
    """The site-packages of a venv holding `dependencies`, built unless one exists already;
    the installer sees `installer_env(environ)` only. `log` gets the events above."""
    key = venv_key(dependencies, requires_python)
    final = venvs_root / key
    said = {"dependencies": list(dependencies), "venv_key": key}
    if (final / VENV_MARKER).is_file():
        _say(log, "package.dependencies", **said, reused=True)
        return site_packages(final)
    venvs_root.mkdir(parents=True, exist_ok=True)
    with _locked(venvs_root / f".{key}.lock"):
        # Another worker on this work root may have built it while this one waited.
        reused = (final / VENV_MARKER).is_file()
        _say(log, "package.dependencies", **said, reused=reused)
        if reused:
            return site_packages(final)
        if final.exists():
            shutil.rmtree(final)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=venvs_root))
        started = time.monotonic()
        try:
            _build(
                staging,
                dependencies,
                key=key,
                requires_python=requires_python,
                env=installer_env(environ),
                timeout_s=timeout_s,
            )
            staging.rename(final)
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            reason = exc.message if isinstance(exc, DependencyError) else repr(exc)
            _say(
                log,
                "package.dependencies_failed",
                venv_key=key,
                seconds=round(time.monotonic() - started, 1),
                error=redact_urls(reason),
            )
            raise
    _say(
        log,
        "package.dependencies_installed",
        venv_key=key,
        seconds=round(time.monotonic() - started, 1),
    )
    return site_packages(final)


def _say(log: EventLog | None, name: str, /, **fields: object) -> None:
    if log is not None:
        log.event(name, **fields)
