"""Where a local memrun keeps its state, and how the CLI finds the appliance."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8000"
CLI_TOKEN_FILE = "cli-token"


def memrun_home() -> Path:
    """`MEMRUN_HOME`, else `./var` inside a memrun checkout, else `~/.memrun`."""
    configured = os.environ.get("MEMRUN_HOME")
    if configured:
        return Path(configured).expanduser().resolve()
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "manage.py").exists() and os.access(checkout, os.W_OK):
        return checkout / "var"
    return Path.home() / ".memrun"


def default_url() -> str:
    return os.environ.get("MEMRUN_URL", DEFAULT_URL).rstrip("/")


def default_token() -> str | None:
    """`MEMRUN_TOKEN`, else the CLI token `memrun up` wrote under MEMRUN_HOME."""
    token = os.environ.get("MEMRUN_TOKEN")
    if token:
        return token
    path = memrun_home() / CLI_TOKEN_FILE
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def secret_file_ensure(path: Path, *, make: Callable[[], bytes]) -> bytes:
    """What `path` holds (stripped), written from `make()` on first use. The value goes
    to a private (0600) temporary file that is hard-linked into place, so two processes
    starting at once agree on one value and nobody reads a half-written file."""
    if not path.exists():
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(make())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    return path.read_bytes().strip()
