"""Deploy-to-first-answer and worker boot-to-consuming, on the embedded defaults.

Starts its own appliance (`memrun up` on a free port, a fresh MEMRUN_HOME), deploys the
README's example (examples/warm_lookup) ROUNDS times and, for each version, times:

- deploy-to-first-answer: from the upload's start to the first answer served by a worker
  of the new version (dependencies cached: the example declares none);
- boot-to-consuming: from the provisioner writing the worker's spec to the worker's
  `worker.consuming` event, less its init handlers' time.

The baseline, measured in the same run: a bare `python -c "import memrun"` process, the
floor any worker process pays. Targets: deploy-to-first-answer <= 5 s, boot <= 2 s.

    eval "$(bash scripts/services env)"
    .venv/bin/python bench/bench_deploy.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import boto3
from botocore.config import Config

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from examples.warm_lookup.make_dataset import make_csv  # noqa: E402
from memrun import Client  # noqa: E402
from memrun.packaging import build_package  # noqa: E402

EXAMPLE = REPO / "examples" / "warm_lookup" / "handler.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"memrun up exited; its log:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/v1/health", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"memrun up was not healthy within 120 s; its log:\n{log.read_text()[-3000:]}")


def python_start_s(samples: int = 5) -> float:
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import memrun"], check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def boot_to_consuming_s(home: Path, worker: str) -> float:
    """Spec written -> `worker.consuming`, less the init handlers' own time."""
    spec = home / "local-workers" / f"{worker}.json"
    events = [
        json.loads(line)
        for line in (home / "workers" / worker / "worker.log").read_text().splitlines()
        if line.startswith("{")
    ]
    consuming = next(e["ts"] for e in events if e.get("event") == "worker.consuming")
    init_s = sum(e["duration_ms"] for e in events if e.get("event") == "worker.init_handler")
    return float(consuming - spec.stat().st_mtime - init_s / 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="memrun-bench-deploy-"))
    home = work / "home"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MEMRUN_HOME": str(home)}
    env.pop("DATABASE_URL", None)  # the embedded default: SQLite under MEMRUN_HOME
    log = work / "memrun-up.log"
    with log.open("wb") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "memrun.cli", "up", "--bind", f"127.0.0.1:{port}"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    try:
        wait_healthy(url, up, log)
        client = Client(url, (home / "cli-token").read_text().strip(), timeout_s=120)
        bucket = os.environ.get("MEMRUN_S3_BUCKET", "memrun")
        key = f"bench/{uuid.uuid4().hex[:8]}/sales.csv"
        boto3.client(
            "s3",
            endpoint_url=os.environ.get("MEMRUN_S3_ENDPOINT_URL"),
            config=Config(s3={"addressing_style": "path"}),
        ).put_object(Bucket=bucket, Key=key, Body=make_csv(10_000))
        name = f"bench-{uuid.uuid4().hex[:6]}"
        payload = {"user_id": 1, "dataset_id": "sales", "dataset_url": f"s3://{bucket}/{key}"}
        baseline_s = python_start_s()

        deploy_s, boot_s = [], []
        for version in range(1, args.rounds + 1):
            package = work / f"v{version}.tar.gz"
            build_package(EXAMPLE, overrides={"name": name}, out=package)
            t0 = time.perf_counter()
            client.deploy(name, package, message=f"bench round {version}")
            while True:
                answer = client.invoke(name, payload, wait=60)
                if f"-v{version}-" in answer["worker"]:
                    break
            deploy_s.append(time.perf_counter() - t0)
            boot_s.append(boot_to_consuming_s(home, answer["worker"]))
            print(
                f"v{version}: deploy-to-first-answer {deploy_s[-1]:.2f} s, "
                f"boot-to-consuming {boot_s[-1]:.2f} s ({answer['worker']})"
            )
        deploy_med, boot_med = statistics.median(deploy_s), statistics.median(boot_s)
        print(f"baseline: bare python process importing memrun {baseline_s * 1000:.0f} ms")
        print(
            f"deploy-to-first-answer median {deploy_med:.2f} s (target <= 5 s), "
            f"{deploy_med / baseline_s:.1f}x the baseline"
        )
        print(
            f"boot-to-consuming median {boot_med:.2f} s (target <= 2 s), "
            f"{boot_med / baseline_s:.1f}x the baseline"
        )
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(90)


if __name__ == "__main__":
    main()
