"""The worker daemon's command line: run one worker for a service, from a package
(--package) or from a deployment fetched from the control plane (--deployment, as
provisioners start it).

Two doors, one parser: `python -m worker_daemon ...` (what provisioners run), and the
`memrun worker ...` subcommand, which the memrun CLI finds through the `memrun.commands`
entry point group (pyproject.toml) so that the SDK never imports the daemon. The
daemon's modules are imported inside the handlers: every `memrun` command, even
`memrun --help`, loads this module to build its parser.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from memrun.errors import MemrunError

_DESCRIPTION = (
    "Import the handler in PACKAGE (a .tar.gz, or a folder), run its init handlers, then "
    "serve requests from memrun.requests.SERVICE until SIGTERM. Every option also reads "
    "MEMRUN_<OPTION> from the environment; KAFKA_BOOTSTRAP_SERVERS and REDIS_URL are read too."
)


def register(subparsers: Any) -> None:
    """Add `worker` to the memrun CLI (the `memrun.commands` entry point)."""
    parser = subparsers.add_parser(
        "worker",
        help="run a worker daemon: serve a service's requests from Kafka",
        description=_DESCRIPTION,
    )
    add_arguments(parser)
    _add_commands(parser)


def _add_commands(parser: argparse.ArgumentParser) -> None:
    """`join`, a remote worker's first boot (worker_daemon/join.py), beside the daemon's
    own options: `memrun worker join ...` exchanges, `memrun worker ...` runs."""
    from worker_daemon.join import add_join_parser

    add_join_parser(parser.add_subparsers(title="first boot", metavar="join"))


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m worker_daemon`: the same options as `memrun worker`, and the same
    error contract (one line on stderr, exit 1; a traceback only with --debug)."""
    parser = argparse.ArgumentParser(prog="python -m worker_daemon", description=_DESCRIPTION)
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    add_arguments(parser)
    _add_commands(parser)
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
        return code
    except KeyboardInterrupt:
        return 130
    except MemrunError as exc:
        if args.debug:
            raise
        print(f"memrun worker: error: {exc.message}", file=sys.stderr)
        return 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--service", help="service name (MEMRUN_SERVICE)")
    parser.add_argument(
        "--deployment",
        type=int,
        help="run this deployment's package, fetched from the control plane, and report "
        "to it: what a provisioner starts (needs MEMRUN_URL, MEMRUN_WORKER_ID and "
        "MEMRUN_WORKER_TOKEN); instead of --package",
    )
    parser.add_argument(
        "--package", type=Path, help="package .tar.gz or folder (MEMRUN_PACKAGE_PATH)"
    )
    parser.add_argument("--package-sha256", help="refuse a .tar.gz whose sha256 differs")
    parser.add_argument("--work-root", type=Path, help="where packages and venvs are kept")
    parser.add_argument("--kafka-bootstrap-servers", help="Kafka brokers, host:port[,...]")
    parser.add_argument("--redis-url", help="Redis for replies, redis://host:port/db")
    parser.add_argument("--worker-id", help="stable id: also the Kafka group.instance.id")
    parser.add_argument("--concurrency", type=int, help="handlers at once (default: service's)")
    parser.add_argument("--timeout-s", type=float, help="request timeout (default: service's)")
    parser.add_argument(
        "--grace-period-s", type=float, help="on SIGTERM, wait this long for in-flight work"
    )
    parser.add_argument("--stats-interval-s", type=float, help="log stats this often")
    parser.set_defaults(handler=run_shipping_logs)


def run_shipping_logs(args: argparse.Namespace) -> int:
    """`run`, with this process's stdout and stderr also shipped to the control plane
    when the provisioner set MEMRUN_URL, MEMRUN_WORKER_ID and MEMRUN_WORKER_TOKEN (see
    worker_daemon/logcapture.py). It wraps everything, so every event log and log handler
    the worker makes (the provisioned boot's too) writes through the capture."""
    import contextlib
    import os

    from worker_daemon.logcapture import LogShipping

    with LogShipping.from_env(os.environ) or contextlib.nullcontext():
        return run(args)


def run(args: argparse.Namespace) -> int:
    from worker_daemon.main import run_worker
    from worker_daemon.settings import WorkerSettings

    overrides = {
        "work_root": args.work_root,
        "kafka_bootstrap_servers": args.kafka_bootstrap_servers,
        "redis_url": args.redis_url,
        "concurrency": args.concurrency,
        "timeout_s": args.timeout_s,
        "grace_period_s": args.grace_period_s,
        "stats_interval_s": args.stats_interval_s,
    }
    if args.deployment is not None:
        return run_provisioned(args, overrides)
    settings = WorkerSettings.from_env(
        service=args.service,
        package_path=args.package,
        package_sha256=args.package_sha256,
        worker_id=args.worker_id,
        **overrides,
    )
    return run_worker(settings)


def run_provisioned(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    """`--deployment ID`: fetch the package from the control plane and heartbeat to it."""
    from memrun.errors import ConfigError
    from worker_daemon.control_plane import ProvisionedSettings
    from worker_daemon.main import run_worker
    from worker_daemon.provisioned import run_provisioned_worker

    if args.package is not None:
        raise ConfigError("give --package or --deployment, not both")
    settings = ProvisionedSettings.from_env(
        service=args.service, deployment_id=args.deployment, worker_id=args.worker_id
    )
    worker_overrides = {k: v for k, v in overrides.items() if v is not None}
    return run_provisioned_worker(
        settings,
        run_worker=run_worker,
        worker_overrides=worker_overrides,
        on_stopped=_ignore_sigterm,
    )


def _ignore_sigterm() -> None:
    # The worker has stopped: what is left (its final heartbeat, its last log lines) is
    # bounded by timeouts, and a SIGTERM's default action would cut it short.
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
