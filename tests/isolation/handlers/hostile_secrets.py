"""A service for the secrets isolation tests. As service B it proves it runs with its
secret (the sha256 of the variable named in the request); as service A it tries, on
request, to read what is not its own: other processes' environments, files of the
appliance and of other workers, another service's package, and the artifact store with
no credentials or with none but an anonymous request."""

import hashlib
import os
import urllib.error
import urllib.request

from memrun import MemoryService

svc = MemoryService(
    os.environ["MEMRUN_SERVICE"], memory="512Mi", max_workers=1, concurrency=2, timeout_seconds=60
)


def attempt_read(path):
    try:
        with open(path, "rb") as stream:
            return {"read": True, "data": stream.read(1 << 20).decode("utf-8", "replace")}
    except OSError as exc:
        return {"read": False, "error": type(exc).__name__}


def every_environ():
    """What /proc/*/environ this process can read: the pids it sees, and their contents."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            outcome = attempt_read(f"/proc/{entry}/environ")
            if outcome["read"]:
                found[entry] = outcome["data"]
    return found


def fetch_package(deployment_id):
    url = f"{os.environ['MEMRUN_URL']}/api/v1/deployments/{deployment_id}/package"
    request = urllib.request.Request(url)
    request.add_header("Authorization", f"Bearer {os.environ['MEMRUN_WORKER_TOKEN']}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def list_bucket(endpoint, bucket, *, unsigned):
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1})
    if unsigned:
        config = config.merge(Config(signature_version=UNSIGNED))
    client = boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", config=config
    )
    try:
        listed = client.list_objects_v2(Bucket=bucket, MaxKeys=5)
    except Exception as exc:
        return {"listed": False, "error": type(exc).__name__}
    return {"listed": True, "keys": [item["Key"] for item in listed.get("Contents", [])]}


def connect_database(dsn):
    try:
        import psycopg

        with psycopg.connect(dsn, connect_timeout=10):
            return {"connected": True}
    except Exception as exc:
        return {"connected": False, "error": type(exc).__name__}


@svc.handler(sticky_key="user")
def handle(ctx, request):
    if "hash_of" in request:
        value = os.environ.get(request["hash_of"], "")
        return {"sha256": hashlib.sha256(value.encode()).hexdigest(), "worker": ctx.worker_id}
    if "probe" in request:
        probe = request["probe"]
        return {
            "env": dict(os.environ),
            "environs": every_environ(),
            "files": {path: attempt_read(path) for path in probe["files"]},
            "packages": {str(i): fetch_package(i) for i in probe["deployments"]},
            "bucket": {
                "no_credentials": list_bucket(probe["s3"], probe["bucket"], unsigned=False),
                "anonymous": list_bucket(probe["s3"], probe["bucket"], unsigned=True),
            },
            "database": connect_database(probe["database"]),
        }
    return {"worker": ctx.worker_id}
