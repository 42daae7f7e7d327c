"""Settings of the memrun control plane, all read from the environment (12-factor).

Every knob is an environment variable, read here once through the small typed helpers
below; nothing else reads os.environ for Django. The defaults run a single-machine
appliance (`memrun up`) against the development services (`bash scripts/services up`).
"""

from __future__ import annotations

import os
import secrets
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from memrun.home import memrun_home, secret_file_ensure
from memrun.wire.install_env import install_env_pick
from memrun.wire.kafka import KafkaConnection

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def env_str(name: str, default: str) -> str:
    """The variable's value, or `default` when it is unset or blank."""
    return os.environ.get(name, "").strip() or default


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r}: write 1 or 0 (or true/false, yes/no, on/off)")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r}: expected a whole number") from None


def env_list(name: str, default: list[str]) -> list[str]:
    """A comma-separated list; unset or blank gives `default`."""
    raw = os.environ.get(name, "")
    items = [item.strip() for item in raw.split(",") if item.strip()]
    return items or default


def _secret_key(home: Path) -> str:
    """SECRET_KEY, else one generated on first use and kept in MEMRUN_HOME (mode 0600)."""
    given = os.environ.get("SECRET_KEY", "").strip()
    if given:
        return given
    made = secret_file_ensure(home / "secret-key", make=lambda: secrets.token_urlsafe(50).encode())
    return made.decode()


def _artifacts_url(raw: str) -> str:
    """`s3://bucket/prefix`, or a folder given as a path or a file:// URL (made absolute)."""
    scheme = urlsplit(raw).scheme
    if scheme == "s3":
        if not urlsplit(raw).netloc:
            raise ImproperlyConfigured(
                f"MEMRUN_ARTIFACTS_URL={raw!r}: name the bucket, e.g. s3://memrun/artifacts"
            )
        return raw.rstrip("/")
    if scheme == "file":
        return Path(urlsplit(raw).path).resolve().as_uri()
    if scheme == "":
        return Path(raw).expanduser().resolve().as_uri()
    raise ImproperlyConfigured(
        f"MEMRUN_ARTIFACTS_URL={raw!r}: use s3://bucket/prefix or a local folder"
    )


BASE_DIR = Path(__file__).resolve().parent.parent

MEMRUN_HOME = memrun_home()
MEMRUN_HOME.mkdir(mode=0o700, parents=True, exist_ok=True)

SECRET_KEY = _secret_key(MEMRUN_HOME)
# Fernet keys of the services' secrets, newest first (apps/services/secretbox.py); unset:
# one generated on first use in MEMRUN_HOME/secrets-key.
MEMRUN_SECRETS_KEYS = env_list("MEMRUN_SECRETS_KEYS", [])
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

# Behind a TLS-terminating proxy (MEMRUN_HTTPS=1): trust its X-Forwarded-Proto, send
# cookies only over HTTPS and pin browsers to HTTPS. The health check stays reachable
# over plain HTTP for container and load-balancer probes.
MEMRUN_HTTPS = env_bool("MEMRUN_HTTPS", False)
if MEMRUN_HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SECURE_REDIRECT_EXEMPT = [r"^api/v1/health$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("MEMRUN_HSTS_SECONDS", 31_536_000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "ninja",
    "apps.services",
    "apps.workers",
    "apps.provisioning",
    "apps.web",
    "axes",
]

MIDDLEWARE = [
    "memrun_site.errors.ApiErrorShapeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it answers a locked-out login attempt.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "memrun_site.urls"
WSGI_APPLICATION = "memrun_site.wsgi.application"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "web:dashboard"
LOGOUT_REDIRECT_URL = "login"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# MEMRUN_DB_POOL=1 (set by `memrun up` for its ASGI web server): a connection pool per
# process instead of persistent connections, which under ASGI would be one per request
# thread, each left open when its thread ends.
MEMRUN_DB_POOL = env_bool("MEMRUN_DB_POOL", False)
DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{MEMRUN_HOME / 'memrun.sqlite3'}"),
        conn_max_age=0 if MEMRUN_DB_POOL else env_int("MEMRUN_DB_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web server, Celery and beat share the file: WAL lets readers run beside the writer,
    # and IMMEDIATE transactions take the write lock up front instead of failing later.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
else:
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", 5)
    if MEMRUN_DB_POOL:
        DATABASES["default"]["OPTIONS"]["pool"] = {
            "min_size": 1,
            "max_size": env_int("MEMRUN_DB_POOL_MAX", 16),
            "timeout": 10,
        }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Password logins (the admin's and the web UI's) are rate-limited by django-axes: after
# MEMRUN_LOGIN_FAILURE_LIMIT failures for one username from one address, that pair is
# refused (429) for MEMRUN_LOGIN_COOLOFF_S; a success resets the count. API tokens are
# not passwords and do not pass here.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("MEMRUN_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(seconds=env_int("MEMRUN_LOGIN_COOLOFF_S", 900))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# Static files are collected into MEMRUN_HOME by `memrun up` (and the image's entrypoint)
# and served by the appliance itself unless MEMRUN_SERVE_STATIC=0 (a proxy serves them).
STATIC_URL = "static/"
STATIC_ROOT = MEMRUN_HOME / "static"
STATICFILES_DIRS = [path for path in [BASE_DIR / "static"] if path.is_dir()]
MEMRUN_SERVE_STATIC = env_bool("MEMRUN_SERVE_STATIC", True)
if MEMRUN_SERVE_STATIC:
    STATIC_ROOT.mkdir(exist_ok=True)
    # whitenoise serves them from the web process itself, under gunicorn and under ASGI
    # alike, with caching headers; right after SecurityMiddleware, as it asks.
    MIDDLEWARE.insert(
        MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1,
        "whitenoise.middleware.WhiteNoiseMiddleware",
    )

# Backing services.
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:16379/0")
KAFKA_BOOTSTRAP_SERVERS = env_str("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
# The control plane's own Kafka principal (the broker's super user) and transport;
# PLAINTEXT: a broker without authentication. apps/common/kafka.py builds clients from them.
KAFKA_SECURITY_PROTOCOL = env_str("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper()
KAFKA_SASL_MECHANISM = env_str("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
KAFKA_SASL_USERNAME = env_str("KAFKA_SASL_USERNAME", "")
KAFKA_SASL_PASSWORD = env_str("KAFKA_SASL_PASSWORD", "")
KAFKA_SSL_CA_LOCATION = env_str("KAFKA_SSL_CA_LOCATION", "")
try:
    KafkaConnection(
        bootstrap_servers=KAFKA_BOOTSTRAP_SERVERS,
        security_protocol=KAFKA_SECURITY_PROTOCOL,
        sasl_username=KAFKA_SASL_USERNAME,
        sasl_password=KAFKA_SASL_PASSWORD,
    )
except ValueError as exc:
    raise ImproperlyConfigured(str(exc)) from None
MEMRUN_KAFKA_TIMEOUT_S = 5.0

# The invoke front door (apps/services/admission.py, invoke.py), per web process.
MEMRUN_INVOKE_WAITING_PER_SERVICE = env_int("MEMRUN_INVOKE_WAITING_PER_SERVICE", 1000)
MEMRUN_INVOKE_WAITING_PER_TOKEN = env_int("MEMRUN_INVOKE_WAITING_PER_TOKEN", 1000)
MEMRUN_INVOKE_BACKLOG_PER_SERVICE = env_int("MEMRUN_INVOKE_BACKLOG_PER_SERVICE", 20_000)
MEMRUN_INVOKE_BATCH_MAX = env_int("MEMRUN_INVOKE_BATCH_MAX", 1000)
# How long a web process trusts its cached token and service look-ups: the bound on how
# late a revoked token or a changed service is seen when the invalidation message is lost.
MEMRUN_LOOKUP_CACHE_TTL_S = float(env_int("MEMRUN_LOOKUP_CACHE_TTL_S", 5))
MEMRUN_ARTIFACTS_URL = _artifacts_url(
    env_str("MEMRUN_ARTIFACTS_URL", str(MEMRUN_HOME / "artifacts"))
)
MEMRUN_S3_ENDPOINT_URL = env_str("MEMRUN_S3_ENDPOINT_URL", "") or None

# Celery: Redis is the broker; tasks record nothing, their effects live in the database.
CELERY_BROKER_URL = REDIS_URL
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_BEAT_SCHEDULE_FILENAME = str(MEMRUN_HOME / "celerybeat-schedule")
# Beat writes its schedule file after every task it sends, which also makes the file's
# age a liveness signal for the container health check.
CELERY_BEAT_SYNC_EVERY = 1
MEMRUN_RECONCILE_INTERVAL_S = 5.0
CELERY_BEAT_SCHEDULE = {
    "reconcile": {
        "task": "apps.provisioning.tasks.reconcile",
        "schedule": MEMRUN_RECONCILE_INTERVAL_S,
    },
}
# Autoscaling (apps/provisioning/autoscaling.py): each service with a policy on is decided
# this often; its windows and cooldowns (seconds, per service) are what smooth it, so the
# tick only bounds how late a decision is. The newest KEPT decisions per service stay.
MEMRUN_AUTOSCALE_INTERVAL_S = float(env_int("MEMRUN_AUTOSCALE_INTERVAL_S", 10))
MEMRUN_AUTOSCALE_DECISIONS_KEPT = 500
CELERY_BEAT_SCHEDULE["autoscale"] = {
    "task": "apps.provisioning.tasks.autoscale",
    "schedule": MEMRUN_AUTOSCALE_INTERVAL_S,
}

# Worker logs (apps/workers/services.py): at most this many lines per worker and
# nothing older, pruned on ingest about every MEMRUN_LOG_PRUNE_EVERY_LINES lines and swept
# by beat.
MEMRUN_LOG_MAX_LINES_PER_WORKER = env_int("MEMRUN_LOG_MAX_LINES_PER_WORKER", 10_000)
MEMRUN_LOG_RETENTION_S = env_int("MEMRUN_LOG_RETENTION_S", 7 * 24 * 3600)
MEMRUN_LOG_PRUNE_EVERY_LINES = 1000
MEMRUN_LOG_PRUNE_INTERVAL_S = 600.0
CELERY_BEAT_SCHEDULE["prune_worker_logs"] = {
    "task": "apps.workers.tasks.prune_worker_logs",
    "schedule": MEMRUN_LOG_PRUNE_INTERVAL_S,
}

# Garbage collection (apps/provisioning/gc.py, `memrun gc`, and beat every INTERVAL):
# packages of the newest KEEP_VERSIONS versions of each service stay (besides the live and
# rolling ones and any a worker runs); nothing younger than MIN_AGE is touched.
MEMRUN_GC_KEEP_VERSIONS = env_int("MEMRUN_GC_KEEP_VERSIONS", 5)
MEMRUN_GC_MIN_AGE_S = float(env_int("MEMRUN_GC_MIN_AGE_S", 3600))
MEMRUN_GC_INTERVAL_S = float(env_int("MEMRUN_GC_INTERVAL_S", 3600))
CELERY_BEAT_SCHEDULE["gc"] = {
    "task": "apps.provisioning.tasks.gc",
    "schedule": MEMRUN_GC_INTERVAL_S,
}

# Workers. They reach the control plane at MEMRUN_CONTROL_PLANE_URL (`memrun up` sets it
# from --bind). A new worker must report ready within the boot timeout (fetch, venv,
# init handlers); a draining one gets the service's request timeout plus the grace.
MEMRUN_CONTROL_PLANE_URL = env_str("MEMRUN_CONTROL_PLANE_URL", "http://127.0.0.1:8000")
# Workers on other machines (provider hetzner) reach the appliance at these addresses
# instead, typically its private-network ones: the appliance's own may be loopback. Kafka
# should be SASL_SSL for them (`MEMRUN_KAFKA_TLS=1 scripts/services up` adds the listener);
# the CA certificate at MEMRUN_REMOTE_KAFKA_SSL_CA_LOCATION is read here and travels in
# the worker's join answer, since the worker has none of the appliance's files. Redis is
# reached at MEMRUN_REMOTE_REDIS_ADDRESS (host:port) as the service's own ACL user.
# Each empty: the appliance's own (read where used, so tests that move those move these).
MEMRUN_REMOTE_CONTROL_PLANE_URL = env_str("MEMRUN_REMOTE_CONTROL_PLANE_URL", "")
MEMRUN_REMOTE_KAFKA_BOOTSTRAP_SERVERS = env_str("MEMRUN_REMOTE_KAFKA_BOOTSTRAP_SERVERS", "")
MEMRUN_REMOTE_KAFKA_SECURITY_PROTOCOL = env_str("MEMRUN_REMOTE_KAFKA_SECURITY_PROTOCOL", "").upper()
MEMRUN_REMOTE_KAFKA_SSL_CA_LOCATION = env_str("MEMRUN_REMOTE_KAFKA_SSL_CA_LOCATION", "")
MEMRUN_REMOTE_REDIS_ADDRESS = env_str("MEMRUN_REMOTE_REDIS_ADDRESS", "")
MEMRUN_WORKER_BOOT_TIMEOUT_S = float(env_int("MEMRUN_WORKER_BOOT_TIMEOUT_S", 600))
MEMRUN_WORKER_DRAIN_GRACE_S = float(env_int("MEMRUN_WORKER_DRAIN_GRACE_S", 60))
# A stopped worker's credential still delivers log lines this long after it stopped: its
# last lines are shipped after its final heartbeat, within a few seconds (its shipper's
# close timeout); a minute covers a slow control plane, and no more (apps/workers/auth.py).
MEMRUN_WORKER_LOG_GRACE_S = 60.0
# Handed to every worker as is: where `ctx.upload_result` writes (a bucket name, not a
# credential). The appliance's own S3 keys and endpoint never reach a worker (I8): a
# handler's S3 access uses the AWS_* variables of its service's secrets.
MEMRUN_WORKER_RESULTS_ENV = {
    name: os.environ[name] for name in ("MEMRUN_S3_BUCKET",) if os.environ.get(name, "").strip()
}
# Handed to every worker as is, for its PEP 723 installs: the machine's trust store,
# package index mirror and proxy, by an explicit allowlist of names
# (memrun/wire/install_env.py); the worker gives its installer these and nothing else.
MEMRUN_WORKER_INSTALL_ENV = install_env_pick(os.environ)
# Rollouts and crash loops (apps/provisioning/plan.py). A new version's worker counts as
# ready, for retiring the old version's workers, once it has been ready this long (0: at
# once). A version whose workers keep dying gets its replacements backed off: the first
# death is replaced at once, the n-th waits BASE * 2^(n-2) seconds up to MAX; after
# DEGRADED_AFTER_FAILURES deaths within WINDOW it is marked degraded (reason, log tail).
MEMRUN_ROLLOUT_MIN_READY_S = float(env_int("MEMRUN_ROLLOUT_MIN_READY_S", 0))
MEMRUN_CRASH_WINDOW_S = float(env_int("MEMRUN_CRASH_WINDOW_S", 900))
MEMRUN_CRASH_BACKOFF_BASE_S = float(env_int("MEMRUN_CRASH_BACKOFF_BASE_S", 10))
MEMRUN_CRASH_BACKOFF_MAX_S = float(env_int("MEMRUN_CRASH_BACKOFF_MAX_S", 600))
MEMRUN_CRASH_DEGRADED_AFTER_FAILURES = env_int("MEMRUN_CRASH_DEGRADED_AFTER_FAILURES", 3)
# The Kafka consumer group protocol of every worker (worker_daemon/consumer.py
# group_config): "consumer" is KIP-848 (Kafka >= 4.0 with the broker's group.consumer.* of
# services/kafka: with Kafka's defaults a member heartbeats every 5 s and a crashed one
# keeps its partitions 45 s), which moves partitions several times faster (bench_locality
# P7); "classic" is the JoinGroup protocol (cooperative-sticky, static members), whose
# restarted worker gets its partitions back at once after a crash: README "Warm handoff".
MEMRUN_GROUP_PROTOCOL = env_str("MEMRUN_GROUP_PROTOCOL", "consumer")
if MEMRUN_GROUP_PROTOCOL not in ("consumer", "classic"):
    raise ImproperlyConfigured(
        f"MEMRUN_GROUP_PROTOCOL={MEMRUN_GROUP_PROTOCOL!r}: write consumer or classic"
    )
# Extra MEMRUN_* settings for every worker (tests shorten its timers here).
MEMRUN_WORKER_EXTRA_ENV: dict[str, str] = {}
# Remote workers (cloud-init, apps/provisioning/userdata.py). Their user-data carries a
# single-use join token valid this long: enough for a VM to boot, install its packages
# and memrun, and exchange it; short, since user-data stays readable on the VM. Refused
# joins beyond MAX_FAILURES per caller within the window get 429. The wheel of this
# appliance's memrun, which they install, is built once per version into the folder.
MEMRUN_JOIN_TOKEN_TTL_S = float(env_int("MEMRUN_JOIN_TOKEN_TTL_S", 900))
MEMRUN_JOIN_MAX_FAILURES = env_int("MEMRUN_JOIN_MAX_FAILURES", 10)
MEMRUN_JOIN_FAILURE_WINDOW_S = float(env_int("MEMRUN_JOIN_FAILURE_WINDOW_S", 600))
MEMRUN_BOOTSTRAP_WHEEL_DIR = Path(
    env_str("MEMRUN_BOOTSTRAP_WHEEL_DIR", str(MEMRUN_HOME / "wheels"))
)
# Start a service's reconcile as soon as a worker becomes ready or stops, besides beat.
MEMRUN_RECONCILE_ON_EVENTS = env_bool("MEMRUN_RECONCILE_ON_EVENTS", True)

# Workers on Hetzner Cloud (provider=hetzner, apps/provisioning/provisioners/hetzner.py).
# The token is the appliance's alone: it never reaches a worker or its user-data (I8).
# Location and image are the defaults a service may override (location); SSH keys,
# firewall and private network are names of ones made beforehand in the project ("" or
# unset: none). A reconcile pass makes at most HCLOUD_REQUESTS_PER_PASS requests (Hetzner
# allows 3,600 an hour) and leaves the rest to the next pass.
HCLOUD_TOKEN = os.environ.get("HCLOUD_TOKEN", "").strip()
HCLOUD_API_ENDPOINT = env_str("HCLOUD_API_ENDPOINT", "https://api.hetzner.cloud/v1")
HCLOUD_LOCATION = env_str("HCLOUD_LOCATION", "fsn1")
HCLOUD_IMAGE = env_str("HCLOUD_IMAGE", "debian-12")
HCLOUD_SSH_KEYS = env_list("HCLOUD_SSH_KEYS", [])
HCLOUD_FIREWALL = env_str("HCLOUD_FIREWALL", "")
HCLOUD_NETWORK = env_str("HCLOUD_NETWORK", "")
HCLOUD_TIMEOUT_S = float(env_int("HCLOUD_TIMEOUT_S", 30))
HCLOUD_ACTION_TIMEOUT_S = float(env_int("HCLOUD_ACTION_TIMEOUT_S", 300))
HCLOUD_REQUESTS_PER_PASS = env_int("HCLOUD_REQUESTS_PER_PASS", 60)
# A labelled machine with no worker row, or a worker row whose machine is gone, is
# reconciled only once it is this old: a machine being made, or a listing that lags a
# create, is not an orphan.
MEMRUN_ORPHAN_GRACE_S = float(env_int("MEMRUN_ORPHAN_GRACE_S", 120))
# A worker whose machine could not be made (an API error, the pass's request budget) is
# made again by a pass at least this long after its first try.
MEMRUN_CREATE_RETRY_S = float(env_int("MEMRUN_CREATE_RETRY_S", 30))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
    },
    "root": {"handlers": ["console"], "level": env_str("MEMRUN_LOG_LEVEL", "INFO").upper()},
}
