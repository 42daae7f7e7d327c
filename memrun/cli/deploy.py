"""`memrun deploy handler.py`: package a handler, upload it, and follow its rollout.

The output reads like a git push: what was packaged, what was uploaded (size, sha256),
the version it became, then the rollout until it is active or failed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from memrun._client import Client
from memrun.errors import ConfigError, MemrunError
from memrun.packaging import build_package
from memrun.wire.config import SETTINGS

_METAVARS = {"size": "SIZE", "count": "N", "template": "FIELDS", "names": "NAME"}

POLL_INTERVAL_S = 1.0
ROLLOUT_TIMEOUT_S = 900.0
EXIT_STILL_ROLLING = 3


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "deploy",
        help="package a handler and deploy it as the next version of its service",
        description=(
            "Package HANDLER (and --include files) with the MemoryService settings read "
            "from its code, overridden by the flags below, upload it to the control plane "
            "(MEMRUN_URL, MEMRUN_TOKEN) and follow the rollout. The service is created on "
            "its first deploy."
        ),
    )
    parser.add_argument(
        "handler_path", type=Path, metavar="HANDLER", help="the handler module, e.g. handler.py"
    )
    parser.add_argument(
        "--name", metavar="NAME", help="service name (default: the one in the code)"
    )
    for setting in SETTINGS:
        parser.add_argument(
            setting.flag,
            dest=setting.arg,
            metavar=_METAVARS[setting.kind],
            help=setting.help,
            # A list setting is one flag per item: --secret a --secret b.
            action="append" if setting.kind == "names" else "store",
        )
    parser.add_argument(
        "--include",
        action="append",
        type=Path,
        default=[],
        metavar="PATH",
        help="a file or folder to package too (repeatable)",
    )
    parser.add_argument(
        "--provider",
        choices=("local", "hetzner"),
        default="",
        help="where the workers run (default: unchanged; local for a new service)",
    )
    parser.add_argument(
        "--server-type",
        default="",
        metavar="TYPE",
        help="the Hetzner server type, e.g. cpx41 (default: the cheapest that fits "
        "--memory and --disk)",
    )
    parser.add_argument(
        "--location", default="", metavar="LOC", help="the Hetzner location, e.g. fsn1"
    )
    parser.add_argument("--message", "-m", default="", help="what changed, for the history")
    parser.add_argument("--no-wait", action="store_true", help="return once uploaded")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    overrides = overrides_from_flags(args)
    client = Client()
    with tempfile.TemporaryDirectory(prefix="memrun-deploy-") as work:
        package = Path(work) / "package.tar.gz"
        info = build_package(
            args.handler_path, includes=args.include, overrides=overrides, out=package
        )
        for warning in info.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        name = info.manifest.service
        extra = len(info.manifest.files) - 1
        files = f" (+{extra} file{'s' if extra != 1 else ''})" if extra else ""
        print(f"packaged {args.handler_path.name}{files} as {name}: {human_bytes(info.size_bytes)}")
        deployment = client.deploy(
            name,
            package,
            message=args.message,
            progress=_progress_printer(),
            provider=args.provider,
            server_type=args.server_type,
            location=args.location,
        )
    print(
        f"uploaded {human_bytes(deployment.size_bytes)}, sha256 {deployment.sha256[:12]}: "
        f"{name} version {deployment.version}"
    )
    if args.no_wait:
        print(f"rolling out in the background; follow it with `memrun status {name}`")
        return 0
    return follow_rollout(client, name, deployment.version)


def overrides_from_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The MemoryService settings given as flags (None: not given), whole numbers checked."""
    overrides: dict[str, Any] = {"name": args.name}
    for setting in SETTINGS:
        raw = getattr(args, setting.arg)
        # Whole numbers are checked here, so a bad one is one line, exit 1.
        if setting.kind == "count" and raw is not None:
            if not raw.strip().isdigit():
                raise ConfigError(f"{setting.flag} takes a whole number, got {raw!r}")
            raw = int(raw)
        overrides[setting.arg] = raw
    return overrides


def follow_rollout(
    client: Client,
    service: str,
    version: int,
    *,
    timeout_s: float = ROLLOUT_TIMEOUT_S,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Print each change of the deployment's state until it is active (0) or failed
    (MemrunError with the reason); EXIT_STILL_ROLLING when `timeout_s` passes first."""
    deadline = time.monotonic() + timeout_s
    shown: tuple[str, int, int] | None = None
    while True:
        deployment = client.deployment(service, version)
        state = (deployment.status, deployment.workers_ready, deployment.workers_desired)
        if state != shown:
            shown = state
            print(
                f"rolling out v{version}: {deployment.status}, workers ready "
                f"{deployment.workers_ready}/{deployment.workers_desired}"
            )
        if deployment.status == "active":
            print(f"done: {service} v{version} is live at {client.service_url(service)}")
            return 0
        if deployment.status == "failed":
            reason = deployment.failure_reason or "no reason recorded"
            raise MemrunError(f"{service} v{version} failed to roll out: {reason}")
        if deployment.status == "superseded":
            raise MemrunError(
                f"{service} v{version} was replaced by a newer deployment before it went live"
            )
        if time.monotonic() >= deadline:
            print(
                f"{service} v{version} is still rolling out after {timeout_s:g}s; "
                f"follow it with `memrun status {service}`",
                file=sys.stderr,
            )
            return EXIT_STILL_ROLLING
        sleep(POLL_INTERVAL_S)


def human_bytes(size: int) -> str:
    """1536 -> '1.5 KiB'."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    value, index = float(size), 0
    while value >= 1024 and index < len(units) - 1:
        value, index = value / 1024, index + 1
    return f"{size} B" if index == 0 else f"{value:.1f} {units[index]}"


def _progress_printer() -> Callable[[int, int], None] | None:
    """On a terminal, a line rewritten as the upload goes: bytes and percent."""
    if not sys.stderr.isatty():
        return None
    shown = -1

    def show(sent: int, total: int) -> None:
        nonlocal shown
        percent = 100 * sent // max(total, 1)
        if percent == shown:
            return
        shown = percent
        end = "\n" if sent >= total else ""
        sys.stderr.write(
            f"\ruploading {human_bytes(sent)} / {human_bytes(total)} ({percent}%){end}"
        )
        sys.stderr.flush()

    return show
