"""`memrun worker`: run one worker daemon for a service from an extracted package folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="run a worker daemon: serve a service's requests from Kafka",
        description=(
            "Import the handler in PACKAGE (a .tar.gz, or a folder), run its init "
            "handlers, then serve requests from memrun.requests.SERVICE until SIGTERM. "
            "Every option also reads MEMRUN_<OPTION> from the environment; "
            "KAFKA_BOOTSTRAP_SERVERS and REDIS_URL are read too."
        ),
    )
    parser.add_argument("--service", help="service name (MEMRUN_SERVICE)")
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
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from worker_daemon.main import run_worker
    from worker_daemon.settings import WorkerSettings

    settings = WorkerSettings.from_env(
        service=args.service,
        package_path=args.package,
        package_sha256=args.package_sha256,
        work_root=args.work_root,
        kafka_bootstrap_servers=args.kafka_bootstrap_servers,
        redis_url=args.redis_url,
        worker_id=args.worker_id,
        concurrency=args.concurrency,
        timeout_s=args.timeout_s,
        grace_period_s=args.grace_period_s,
        stats_interval_s=args.stats_interval_s,
    )
    return run_worker(settings)
