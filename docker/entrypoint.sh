#!/bin/sh
# Roles of the memrun appliance image: the first argument picks one, the rest go to it.
#   web          migrate, collect static files, create the admin user on first start,
#                then serve with gunicorn running uvicorn workers (ASGI) on :8000
#   celery       a Celery worker (provisioning tasks)
#   beat         Celery beat (the reconcile loop's clock)
#   supervisor   the local worker supervisor: runs provider=local workers as processes
#                from the specs reconcile writes to MEMRUN_HOME (as `memrun up` does)
#   worker       the memrun worker daemon (`memrun worker ...`)
#   init-bucket  create the S3 bucket of MEMRUN_ARTIFACTS_URL if it is missing, then exit
#   manage       a Django management command, e.g. `manage createsuperuser`
#   healthcheck  ROLE: exit 0 when that role in this container is healthy
set -eu

role="${1:-web}"
[ "$#" -gt 0 ] && shift

case "$role" in
web)
    python -m django migrate --noinput
    python -m django collectstatic --noinput -v 0
    python -m django memrun_init
    # ASGI (see memrun/cli/up.py for why, and why the database pool).
    MEMRUN_DB_POOL=1 exec gunicorn --config python:memrun_site.gunicorn_conf \
        --bind 0.0.0.0:8000 --workers "${MEMRUN_WEB_WORKERS:-2}" "$@" memrun_site.asgi:application
    ;;
celery)
    exec celery -A memrun_site worker --loglevel INFO --hostname "memrun@%h" "$@"
    ;;
beat)
    # Its schedule file is settings.CELERY_BEAT_SCHEDULE_FILENAME, in MEMRUN_HOME.
    exec celery -A memrun_site beat --loglevel INFO "$@"
    ;;
supervisor)
    exec python -m apps.provisioning.local_supervisor "$@"
    ;;
worker)
    exec memrun worker "$@"
    ;;
init-bucket)
    exec python - <<'PY'
import os
from urllib.parse import urlsplit

import boto3
from botocore.exceptions import ClientError

url = urlsplit(os.environ["MEMRUN_ARTIFACTS_URL"])
if url.scheme == "s3":
    s3 = boto3.client("s3", endpoint_url=os.environ.get("MEMRUN_S3_ENDPOINT_URL") or None)
    try:
        s3.head_bucket(Bucket=url.netloc)
    except ClientError:
        s3.create_bucket(Bucket=url.netloc)
    print(f"bucket {url.netloc} is ready")
PY
    ;;
manage)
    exec python -m django "$@"
    ;;
healthcheck)
    case "${1:-}" in
    web)
        # As one of ALLOWED_HOSTS, or Django refuses the request; urlopen raises on the
        # 503 the health check gives when a dependency is down.
        exec python - <<'PY'
import os
import urllib.request

host = os.environ.get("ALLOWED_HOSTS", "").split(",")[0].strip().lstrip(".")
request = urllib.request.Request(
    "http://127.0.0.1:8000/api/v1/health",
    headers={"Host": host if host and host != "*" else "localhost"},
)
urllib.request.urlopen(request, timeout=8)
PY
        ;;
    celery)
        exec celery -A memrun_site inspect ping --destination "memrun@$(hostname)" --timeout 5
        ;;
    supervisor)
        # It is this container's first process (exec above); it exits when it fails.
        grep -q local_supervisor /proc/1/cmdline
        ;;
    beat)
        # Beat rewrites its schedule file after each task it sends (every 15 s).
        find "$MEMRUN_HOME" -maxdepth 1 -name 'celerybeat-schedule*' -mmin -2 | grep -q .
        ;;
    *)
        echo "healthcheck: unknown role '${1:-}' (web, celery, beat or supervisor)" >&2
        exit 64
        ;;
    esac
    ;;
*)
    echo "memrun-entrypoint: unknown role '$role'; use web, celery, beat, supervisor," \
        "worker, init-bucket, manage or healthcheck" >&2
    exit 64
    ;;
esac
