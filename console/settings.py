"""Laneway settings: everything comes from environment variables.

Nothing set gives the embedded default: SQLite under var/ and an embedded Valkey
server on a unix socket under var/ (started by the run command). DATABASE_URL and
REDIS_URL (optionally CELERY_BROKER_URL) point the same code at PostgreSQL and an
external Redis/Valkey.
"""

import ipaddress
import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def _env(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


def envbool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use true/false, 1/0, yes/no)")


def _envnumber(name: str, default, cast, kind: str, minimum):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = cast(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not {kind}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} must be at least {minimum}")
    return value


def envint(name: str, default: int, minimum: int | None = None) -> int:
    return _envnumber(name, default, int, "an integer", minimum)


def envfloat(name: str, default: float, minimum: float | None = None) -> float:
    return _envnumber(name, default, float, "a number", minimum)


def envchoice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _env(name, default).lower()
    if value not in choices:
        raise ImproperlyConfigured(f"{name}={value!r} must be one of {', '.join(choices)}")
    return value


def envpath(name: str, default: Path) -> Path:
    return Path(_env(name, str(default))).expanduser().resolve()


DEBUG = envbool("DEBUG", False)
VAR_DIR = envpath("LANEWAY_VAR_DIR", BASE_DIR / "var")

SECRET_KEY = os.environ.get("SECRET_KEY", "").strip()
if not SECRET_KEY:
    # The embedded default keeps a generated key under var/ so sessions survive restarts
    # without a fixed secret in the repository.
    _key_file = VAR_DIR / "secret_key"
    if _key_file.exists():
        SECRET_KEY = _key_file.read_text().strip()
    else:
        import secrets

        VAR_DIR.mkdir(parents=True, exist_ok=True)
        SECRET_KEY = secrets.token_urlsafe(50)
        _key_file.write_text(SECRET_KEY)
        _key_file.chmod(0o600)

ALLOWED_HOSTS = [h.strip() for h in _env("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",") if h.strip()]
CSRF_TRUSTED_ORIGINS = [o.strip() for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "channels",
    "axes",
    "csp",
    # Serves the API docs page's Swagger UI from the wheel (no CDN).
    "ninja",
    "console",
    "accounts",
    "telemetry",
    "webhooks",
    "lanes",
    "experiments",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "console.middleware.RefuseNulMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes asks: it answers a locked-out login.
    "axes.middleware.AxesMiddleware",
]

# Content-Security-Policy: scripts, styles, images and sockets from Laneway itself (no CDN, no inline
# script; style attributes are allowed, for progress bars and the API docs page).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'", "ws:", "wss:"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

# HTTPS (behind TLS, in production): LANEWAY_HTTPS=true turns on the redirect, HSTS and secure cookies;
# LANEWAY_PROXY_SSL=true trusts X-Forwarded-Proto from the proxy that terminates TLS.
LANEWAY_HTTPS = envbool("LANEWAY_HTTPS", False)
if LANEWAY_HTTPS:
    SECURE_SSL_REDIRECT = True
    SECURE_HSTS_SECONDS = envint("HSTS_SECONDS", 31_536_000, 0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = envbool("HSTS_PRELOAD", False)
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    # Probes call /healthz over plain HTTP from inside the cluster.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
if envbool("LANEWAY_PROXY_SSL", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Logins are throttled (django-axes): after LOGIN_FAILURE_LIMIT wrong passwords for one username from
# one address, that pair is locked out for LOGIN_LOCKOUT_MINUTES (admins unlock it in the admin site's
# "Access attempts", or with `manage.py axes_reset_username NAME`). Every lockout is in the audit log.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = envint("LOGIN_FAILURE_LIMIT", 5, 1)
AXES_COOLOFF_TIME = envfloat("LOGIN_LOCKOUT_MINUTES", 15.0, 0.1) / 60  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False

ROOT_URLCONF = "console.urls"
ASGI_APPLICATION = "console.asgi.application"
# Plain HTTP through Django's WSGI handler wrapped for ASGI (one call per request, on one of HTTP_THREADS
# threads), or "asgi": through Django's ASGI handler (each middleware method hops to its sync thread and
# back). See console.asgi.
HTTP_HANDLER = _env("LANEWAY_HTTP_HANDLER", "wsgi")
HTTP_THREADS = envint("LANEWAY_HTTP_THREADS", 10, 1)
if HTTP_HANDLER not in ("wsgi", "asgi"):
    raise ImproperlyConfigured(f"LANEWAY_HTTP_HANDLER={HTTP_HANDLER!r}: use wsgi or asgi")

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
                "console.context_processors.control_plane",
            ],
        },
    },
]

# Database: PostgreSQL (or any dj-database-url URL) when DATABASE_URL is set, else SQLite.
DATABASE_URL = os.environ.get("DATABASE_URL", "").strip()
if DATABASE_URL:
    try:
        _db = dj_database_url.parse(DATABASE_URL, conn_max_age=envint("DB_CONN_MAX_AGE", 60, 0))
    except ValueError as exc:
        raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from None
    if "postgres" in _db["ENGINE"]:
        _db.setdefault("TEST", {})["NAME"] = _env("TEST_DATABASE_NAME", f"test_{_db['NAME']}")
        # A database host that does not answer fails a request (and /healthz) in seconds, not minutes.
        _db.setdefault("OPTIONS", {}).setdefault("connect_timeout", envint("DB_CONNECT_TIMEOUT", 5, 1))
        if envbool("DB_POOL", True):
            # Under ASGI every request runs in a fresh thread, so per-thread persistent
            # connections never get reused: a process-wide pool does.
            _db["CONN_MAX_AGE"] = 0
            _db.setdefault("OPTIONS", {})["pool"] = {
                "min_size": 1,
                "max_size": envint("DB_POOL_SIZE", 20, 1),
                # How long a request waits for a pooled connection (all busy, or the database down).
                "timeout": envfloat("DB_POOL_TIMEOUT", 10.0, 0.1),
            }
else:
    # WAL + IMMEDIATE transactions + a busy timeout: the web server, the worker and beat
    # all write, and without IMMEDIATE SQLite raises "database is locked" despite the timeout.
    _db = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(VAR_DIR / "laneway.sqlite3"),
        "OPTIONS": {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
        # A file, not :memory:, so the worker thread and the live server see the test data.
        "TEST": {"NAME": VAR_DIR / "test.sqlite3"},
        # Kept open between requests and tasks: a new SQLite connection (its functions registered, the
        # pragmas above, the schema read on its first query) costs ~3.5 ms here, against ~0.6 ms for a query.
        "CONN_MAX_AGE": envint("DB_CONN_MAX_AGE", 60, 0),
    }
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Broker, channel layer and cache: external Redis/Valkey, or the embedded Valkey socket.
VALKEY_SOCKET = VAR_DIR / "valkey.sock"
REDIS_URL = os.environ.get("REDIS_URL", "").strip()
EMBEDDED_VALKEY = not REDIS_URL
if EMBEDDED_VALKEY:
    REDIS_URL = f"unix://{VALKEY_SOCKET}"
    _broker_default = f"redis+socket://{VALKEY_SOCKET}"
elif REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
    _broker_default = REDIS_URL
else:
    raise ImproperlyConfigured(f"REDIS_URL={REDIS_URL!r} must start with redis://, rediss:// or unix://")
CELERY_BROKER_URL = _env("CELERY_BROKER_URL", _broker_default)
# The cache's keys and the channel layer's channels start with this, so several deployments or test
# runs can share one server and database. (Not the broker's queues: kombu's global_keyprefix loses
# this stack's messages; give each its own Redis database for that.)
KEY_PREFIX = _env("LANEWAY_KEY_PREFIX", "laneway")
if not KEY_PREFIX.replace("-", "").replace("_", "").isalnum():
    raise ImproperlyConfigured(f"LANEWAY_KEY_PREFIX={KEY_PREFIX!r} may hold only letters, digits, - and _")

CHANNEL_LAYERS = {
    "default": {
        # Redis pub/sub: a group send is one PUBLISH that each web process fans out to its
        # sockets itself, instead of one queued message per socket. Pushes are hints
        # (pages re-read the database on reconnect), so at-most-once delivery is enough.
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {
            # redis-py 8 times socket reads out after 5 s by default, and its async pool refuses
            # (not waits) past 100 connections: idle consumers and 200 dashboards connecting
            # at once must survive both.
            "hosts": [
                {
                    "address": REDIS_URL,
                    "socket_timeout": 30,
                    "max_connections": envint("CHANNEL_LAYER_MAX_CONNECTIONS", 2000, 10),
                }
            ],
            "prefix": _env("CHANNELS_PREFIX", KEY_PREFIX),
        },
    }
}
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": KEY_PREFIX,
    }
}

# Typography verification: OCR runs on its own queue, on CPU workers.
VERIFY_QUEUE = _env("VERIFY_QUEUE", "verify")
# The demo's hosted engine: `manage.py serve_images_api` (make run starts it) speaks the OpenAI Images API.
DEMO_IMAGES_API_URL = _env("DEMO_IMAGES_API_URL", "http://127.0.0.1:8765/v1")
# Jobs of hosted engines (image APIs): run by CPU workers, never by a GPU worker.
HOSTED_QUEUE = _env("HOSTED_QUEUE", "hosted")
VERIFY_MAX_PIXELS = envint("VERIFY_MAX_PIXELS", 40_000_000, 1)


def envseconds(name: str, default: str) -> tuple[float, ...]:
    """'5,300,1800': a non-empty list of delays in seconds."""
    raw = _env(name, default)
    try:
        delays = tuple(float(item) for item in raw.split(","))
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a comma-separated list of seconds") from None
    if any(delay < 0 for delay in delays):
        raise ImproperlyConfigured(f"{name}={raw!r}: delays cannot be negative")
    return delays


def envhosts(name: str) -> tuple[str, ...]:
    """'hooks.internal,10.0.0.0/8,127.0.0.1': hostnames, IP addresses or networks."""
    hosts = tuple(item.strip().lower().strip("[]") for item in os.environ.get(name, "").split(",") if item.strip())
    for host in hosts:
        if "/" in host:
            try:
                ipaddress.ip_network(host, strict=False)
            except ValueError:
                raise ImproperlyConfigured(f"{name}: {host!r} is not a network (like 10.0.0.0/8)") from None
    return hosts


# Webhooks: sent by CPU workers on their own queue (the Procfile's `hosted` process consumes it).
WEBHOOK_QUEUE = _env("WEBHOOK_QUEUE", "webhooks")
WEBHOOK_TIMEOUT_SECONDS = envfloat("WEBHOOK_TIMEOUT_SECONDS", 10.0, 0.1)
# The delay before each retry (Standard Webhooks' recommendation, ≈27.5 h); after the last, a delivery fails.
WEBHOOK_RETRY_SCHEDULE = envseconds("WEBHOOK_RETRY_SCHEDULE", "5,300,1800,7200,18000,36000,36000")
# An endpoint whose deliveries have all failed for this long is disabled.
WEBHOOK_DISABLE_AFTER_SECONDS = envint("WEBHOOK_DISABLE_AFTER_SECONDS", 86400, 1)
# How often beat sends deliveries that are due (retries, and those a lost worker or message left behind).
WEBHOOK_SWEEP_SECONDS = envfloat("WEBHOOK_SWEEP_SECONDS", 5.0, 0.1)
# Private, loopback and link-local addresses are refused unless named here (hostnames, IPs or CIDRs).
WEBHOOK_ALLOWED_HOSTS = envhosts("WEBHOOK_ALLOWED_HOSTS")

# Celery. Jobs are acked late so a worker crash redelivers them; the visibility timeout
# must exceed the longest job, and beat re-dispatches what the database says is stuck.
JOB_TIME_LIMIT = envint("JOB_TIME_LIMIT", 900, 10)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TRACK_STARTED = False
CELERY_TASK_IGNORE_RESULT = True
# Celery closes a worker's database connections around every task unless told to reuse them: on SQLite
# a new connection costs ~3.5 ms a task (PostgreSQL's come from the pool, cheap to hand back and take).
CELERY_DB_REUSE_MAX = None if DATABASE_URL else 100
# false: a worker that cannot reach the broker at start exits (non-zero) for its supervisor to retry.
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = envbool("BROKER_RETRY_ON_STARTUP", True)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": envint("BROKER_VISIBILITY_TIMEOUT", 2 * JOB_TIME_LIMIT, 60),
    # Message priorities per queue (lower runs first): critical 0, standard 3, background 6.
    "priority_steps": [0, 3, 6, 9],
    "sep": ":",
}
CELERY_TASK_DEFAULT_QUEUE = "control"
# Beat's periodic bookkeeping runs on any worker (every process of `make run` consumes this queue),
# so a fleet whose only GPU worker died still marks its jobs lost and requeues them.
HOUSEKEEPING_QUEUE = _env("HOUSEKEEPING_QUEUE", "housekeeping")
CELERY_TASK_ROUTES = {
    "lanes.tasks.reconcile_jobs": {"queue": HOUSEKEEPING_QUEUE},
    "lanes.tasks.release_deferred_jobs": {"queue": HOUSEKEEPING_QUEUE},
    "telemetry.tasks.prune_samples": {"queue": HOUSEKEEPING_QUEUE},
    "experiments.tasks.pump_experiments": {"queue": HOUSEKEEPING_QUEUE},
    "lanes.tasks.check_canaries": {"queue": HOUSEKEEPING_QUEUE},
    "lanes.tasks.check_rollouts": {"queue": HOUSEKEEPING_QUEUE},
    "lanes.tasks.prune_artifacts": {"queue": HOUSEKEEPING_QUEUE},
    "lanes.tasks.verify_artifact": {"queue": VERIFY_QUEUE},
    "webhooks.tasks.deliver": {"queue": WEBHOOK_QUEUE},
    "webhooks.tasks.send_due_deliveries": {"queue": WEBHOOK_QUEUE},
}
CELERY_BEAT_SCHEDULE = {
    "reconcile-jobs": {"task": "lanes.tasks.reconcile_jobs", "schedule": envfloat("RECONCILE_EVERY", 15.0, 1.0)},
    "prune-samples": {"task": "telemetry.tasks.prune_samples", "schedule": 60.0},
    "release-deferred": {"task": "lanes.tasks.release_deferred_jobs", "schedule": envfloat("RELEASE_EVERY", 2.0, 0.1)},
    "pump-experiments": {"task": "experiments.tasks.pump_experiments", "schedule": envfloat("RELEASE_EVERY", 2.0, 0.1)},
    "check-canaries": {"task": "lanes.tasks.check_canaries", "schedule": envfloat("CANARY_CHECK_EVERY", 30.0, 1.0)},
    "check-rollouts": {"task": "lanes.tasks.check_rollouts", "schedule": envfloat("CANARY_CHECK_EVERY", 30.0, 1.0)},
    "prune-artifacts": {"task": "lanes.tasks.prune_artifacts", "schedule": 3600.0},
    "send-due-webhooks": {"task": "webhooks.tasks.send_due_deliveries", "schedule": WEBHOOK_SWEEP_SECONDS},
}

# Admission control (per-lane thresholds live on the lane). Off: every brief is queued FIFO.
ADMISSION_CONTROL = envbool("ADMISSION_CONTROL", True)
# Weighted fair share between teams within a priority class (lanes.fairshare); off: FIFO within a class.
FAIR_SHARE = envbool("FAIR_SHARE", True)
# The sliding window of GPU-seconds a team's share is measured over.
FAIR_SHARE_WINDOW_SECONDS = envint("FAIR_SHARE_WINDOW_SECONDS", 3600, 1)
# GPU memory budget of one worker in MiB (engines + activations). 0: 90% of the card on CUDA,
# unlimited on CPU. On CUDA the process is capped with set_per_process_memory_fraction.
GPU_MEMORY_BUDGET_MB = envint("GPU_MEMORY_BUDGET_MB", 0, 0)
# Step-boundary preemption (lanes.preemption): a running job pauses for a higher class waiting for its
# lane's slot on this GPU; a job paused PREEMPT_MAX_PAUSES times, or PREEMPT_MAX_PAUSED_SECONDS in all,
# is not paused again (and a pause past that time takes the next free slot first).
PREEMPTION = envbool("PREEMPTION", True)
PREEMPT_MAX_PAUSES = envint("PREEMPT_MAX_PAUSES", 3, 0)
PREEMPT_MAX_PAUSED_SECONDS = envfloat("PREEMPT_MAX_PAUSED_SECONDS", 30.0, 0.0)
# A running job also stands still (keeping its slot) while a higher class renders on its GPU, within the
# same PREEMPT_MAX_PAUSED_SECONDS: two renders on one device share its compute.
PREEMPT_STAND_ASIDE = envbool("PREEMPT_STAND_ASIDE", True)

# Telemetry: sampling period of each worker, how long samples are kept, who may scrape /metrics.
TELEMETRY_SAMPLE_SECONDS = envfloat("TELEMETRY_SAMPLE_SECONDS", 1.0, 0.05)
TELEMETRY_RETENTION_SECONDS = envint("TELEMETRY_RETENTION_SECONDS", 24 * 3600, 60)
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "").strip()
# Autoscaling signals (/metrics, `manage.py scale_hint`; the formula is in lanes/scaling.py): rates are
# measured over the last SCALE_WINDOW_SECONDS, desired workers get SCALE_HEADROOM × what Little's law
# asks, and never exceed SCALE_MAX_WORKERS per lane.
SCALE_WINDOW_SECONDS = envint("SCALE_WINDOW_SECONDS", 300, 10)
SCALE_HEADROOM = envfloat("SCALE_HEADROOM", 1.25, 1.0)
SCALE_MAX_WORKERS = envint("SCALE_MAX_WORKERS", 16, 1)
# /healthz: how long the broker may take to accept a connection before it counts as down (the database's
# connect is bounded by DB_CONNECT_TIMEOUT, and a pooled connection's wait by DB_POOL_TIMEOUT).
HEALTHZ_TIMEOUT_SECONDS = envfloat("HEALTHZ_TIMEOUT_SECONDS", 2.0, 0.1)


def envprices(name: str, default: str) -> dict[str, float]:
    """'NVIDIA H100 80GB HBM3=4.5,default=2.0': price per GPU-hour by accelerator model."""
    prices = {}
    for item in _env(name, default).split(","):
        model, sep, price = item.rpartition("=")
        try:
            if not sep or not model.strip():
                raise ValueError
            prices[model.strip()] = float(price)
        except ValueError:
            raise ImproperlyConfigured(f"{name}: {item!r} is not MODEL=PRICE") from None
    prices.setdefault("default", 0.0)
    return prices


# What one GPU-hour costs, by accelerator model ("default" for the rest). CPU time is free unless a
# "CPU" price is given (e.g. "default=2.50,CPU=0.36").
GPU_HOURLY_PRICES = envprices("GPU_HOURLY_PRICES", "default=2.50")

# Workers and jobs.
MODELS_ROOT = envpath("MODELS_ROOT", VAR_DIR / "models")
MEDIA_ROOT = envpath("MEDIA_ROOT", VAR_DIR / "media")
# Rendered images older than this many days are deleted (hourly, by housekeeping), except those of
# experiments, of jobs under review and versions' smoke images; 0 keeps them forever.
ARTIFACT_RETENTION_DAYS = envint("ARTIFACT_RETENTION_DAYS", 0, 0)
# Where `manage.py backup` writes its archives unless told otherwise.
BACKUP_DIR = envpath("BACKUP_DIR", VAR_DIR / "backups")
# Where pg_dump and pg_restore are, when not on PATH (or not the server's major version).
POSTGRES_BIN_DIR = os.environ.get("POSTGRES_BIN_DIR", "").strip()
LANEWAY_DEVICE = envchoice("LANEWAY_DEVICE", "auto", ("auto", "cpu", "cuda"))
WORKER_HEARTBEAT_SECONDS = envfloat("WORKER_HEARTBEAT_SECONDS", 5.0, 0.1)
# A worker that misses this many heartbeats is lost; its running jobs are requeued.
WORKER_LOST_AFTER_BEATS = envint("WORKER_LOST_AFTER_BEATS", 3, 1)
# A queued job whose message has not been picked up for this long is sent again.
REDISPATCH_AFTER_SECONDS = envint("REDISPATCH_AFTER_SECONDS", 300, 1)
# A job is requeued when its worker is lost, until this many workers were lost under it.
JOB_MAX_WORKER_LOSSES = envint("JOB_MAX_WORKER_LOSSES", 6, 1)
PROMPT_MAX_LENGTH = envint("PROMPT_MAX_LENGTH", 1000, 1)
# A/B experiments: at most this many jobs in one, and this many unfinished at a time.
EXPERIMENT_MAX_JOBS = envint("EXPERIMENT_MAX_JOBS", 2000, 1)
EXPERIMENT_MAX_OUTSTANDING = envint("EXPERIMENT_MAX_OUTSTANDING", 8, 1)
EXPECTED_TEXT_MAX_LENGTH = envint("EXPECTED_TEXT_MAX_LENGTH", 200, 1)
# Progress is pushed every step; the database copy (read on reconnect) at most this often.
PROGRESS_DB_EVERY_SECONDS = envfloat("PROGRESS_DB_EVERY_SECONDS", 1.0, 0.0)

# The HTTP API: requests per token, and per user (all their tokens and their session), per window,
# counted in the shared cache.
API_RATE_LIMIT = envint("API_RATE_LIMIT", 600, 1)
API_RATE_LIMIT_PER_USER = envint("API_RATE_LIMIT_PER_USER", 1200, 1)
API_RATE_WINDOW_SECONDS = envint("API_RATE_WINDOW_SECONDS", 60, 1)
# Request bodies past this many bytes are refused (413) before they are parsed.
DATA_UPLOAD_MAX_MEMORY_SIZE = envint("DATA_UPLOAD_MAX_MEMORY_SIZE", 2_621_440, 1024)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Sessions are read from the cache (one Redis round trip), written through to the database, and
# read from the database alone while the cache is down.
SESSION_ENGINE = "console.sessions"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "job-list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = _env("TIME_ZONE", "UTC")
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
# Set STATIC_ROOT (and run collectstatic) to serve compressed, hashed copies in production.
STATIC_ROOT = os.environ.get("STATIC_ROOT", "").strip() or None
STATICFILES_DIRS = [BASE_DIR / "static"]
# Serve straight from the app and static/ folders: `make run` needs no collectstatic step.
WHITENOISE_USE_FINDERS = True

# A model load or the demo build logs one line; tqdm bars (Hugging Face's loading and saving) in a
# worker's log are noise. Set HF_HUB_DISABLE_PROGRESS_BARS=0 to see them.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

# LOG_FORMAT=json writes one JSON object a line (for a log collector); plain is for people.
LOG_FORMAT = envchoice("LOG_FORMAT", "plain", ("plain", "json"))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "json": {"()": "console.logs.JsonFormatter"},
    },
    "filters": {
        "periodic_at_debug": {"()": "console.logs.PeriodicTasksAtDebug"},
        "no_traceback_for_refusals": {"()": "console.logs.NoTracebackForRefusals"},
        "no_empty_fp32_warning": {"()": "console.logs.NoEmptyFp32Warning"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": _env("LOG_LEVEL", "INFO").upper()},
    # httpx logs every hosted-engine request at INFO; retries and failures are logged by lanes.hosted.
    "loggers": {
        "django.channels.server": {"level": "WARNING"},
        "django.request": {"filters": ["no_traceback_for_refusals"]},
        "celery.worker.strategy": {"filters": ["periodic_at_debug"]},
        "celery.app.trace": {"filters": ["periodic_at_debug"]},
        "celery.beat": {"filters": ["periodic_at_debug"]},
        "httpx": {"level": "WARNING"},
        # transformers warns once per class that it uses the PIL image processors because torchvision is
        # not installed: Laneway needs no torchvision (its pipelines' image processors are unused).
        "transformers.utils.import_utils": {"level": "ERROR"},
        "diffusers.models.modeling_utils": {"filters": ["no_empty_fp32_warning"]},
        "axes": {"level": "WARNING"},  # it logs every successful login at INFO
    },
}
