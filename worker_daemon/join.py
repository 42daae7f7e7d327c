"""`memrun worker join`: a remote worker's first boot. It reads its server id from the
metadata service, exchanges its single-use join token with the control plane
(POST /api/v1/workers/join) for its environment, and writes that as a systemd
EnvironmentFile (mode 0600) for the worker's unit (templates/cloud-init/worker.yaml).

The token comes from a file (not the command line, which other users of the machine can
read) or --token. A refusal (used, expired or unknown token, or a server the control
plane does not confirm) is final: the exit code is 1 and nothing is written.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from memrun.errors import ApiError, ConfigError
from memrun.httpclient import HttpClient, Retry

# A booting server's network or the control plane may be a moment away: only a request
# that could not even be sent is retried (the join is single-use).
_RETRY = Retry(attempts=10, backoff_min_s=1.0, backoff_max_s=20.0)
_METADATA_TIMEOUT_S = 10.0
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ESCAPE = re.compile(r'[\\"`$]')


def add_join_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "join",
        help="first boot of a remote worker: exchange its join token for its environment",
        description=(
            "Exchange a single-use join token (with this server's id) for this worker's "
            "environment, written as a systemd EnvironmentFile (mode 0600)."
        ),
    )
    parser.add_argument("--url", required=True, help="the control plane, http(s)://host[:port]")
    token = parser.add_mutually_exclusive_group(required=True)
    token.add_argument("--token", help="the join token (mrj_...)")
    token.add_argument("--token-file", type=Path, help="a file holding the join token")
    server = parser.add_mutually_exclusive_group(required=True)
    server.add_argument("--server-id", type=int, help="this server's id")
    server.add_argument(
        "--server-id-from", metavar="URL", help="read this server's id from URL (metadata service)"
    )
    parser.add_argument(
        "--env-file", type=Path, required=True, help="where to write the environment"
    )
    parser.set_defaults(handler=join_command)


def join_command(args: argparse.Namespace) -> int:
    if not str(args.url).startswith(("http://", "https://")):
        raise ConfigError(f"--url must be http(s)://host[:port], not {args.url!r}")
    token = args.token or _read_token(args.token_file)
    server_id = args.server_id or server_id_read(url=args.server_id_from)
    worker, env = worker_join(url=args.url, token=token, server_id=server_id)
    env_file_write(path=args.env_file, env=env)
    print(f"memrun worker join: {worker} joined as server {server_id}; wrote {args.env_file}")
    return 0


def server_id_read(*, url: str) -> int:
    """The server id served at `url` (Hetzner's metadata service answers it as text)."""
    try:
        response = httpx.get(url, timeout=_METADATA_TIMEOUT_S)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise ConfigError(f"cannot read this server's id from {url}: {exc}") from None
    text = response.text.strip()
    if not text.isdigit():
        raise ConfigError(f"{url} answered {text[:40]!r}, not a server id")
    return int(text)


def worker_join(*, url: str, token: str, server_id: int) -> tuple[str, dict[str, str]]:
    """POST the join; returns the worker's name and environment. ApiError on refusal.
    A 503 (the control plane could not ask its cloud now) consumed nothing: retried."""
    http = HttpClient(url, timeout_s=30.0, retry=_RETRY, unreachable_hint="is --url right?")
    body = {"token": token, "server_id": server_id}
    try:
        for attempt in range(1, _RETRY.attempts + 1):
            try:
                answer = http.call("POST", "/api/v1/workers/join", json=body)
                break
            except ApiError as exc:
                if exc.status != 503 or attempt == _RETRY.attempts:
                    raise
                time.sleep(_RETRY.delay_s(attempt))
    finally:
        http.close()
    env = answer.get("env") if isinstance(answer, dict) else None
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise ConfigError(f"the control plane at {url} answered the join without an environment")
    return str(answer.get("worker", "")), {str(k): v for k, v in env.items()}


def env_file_write(*, path: Path, env: Mapping[str, str]) -> None:
    """Write `env` as a systemd EnvironmentFile: `NAME="value"`, with the characters
    systemd unescapes inside double quotes (backslash, double quote, backtick, dollar)
    escaped. Created 0600 under a temporary name, then renamed: never readable by
    others, never half-written."""
    lines = []
    for name, value in sorted(env.items()):
        if not _NAME.fullmatch(name) or "\n" in value or "\r" in value:
            raise ConfigError(f"the join answered a variable that cannot be written: {name!r}")
        escaped = _ESCAPE.sub(r"\\\g<0>", value)
        lines.append(f'{name}="{escaped}"\n')
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as out:
            out.writelines(lines)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the join token from {path}: {exc.strerror}") from None
    if not token:
        raise ConfigError(f"{path} holds no join token")
    return token
