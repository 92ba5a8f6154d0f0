"""Settings of the porterbox portal, read from environment variables only.

Defaults run on one machine with nothing installed: SQLite and Celery's file-system broker
under var/. Production sets DATABASE_URL, CELERY_BROKER_URL, SECRET_KEY (or SECRET_KEY_FILE)
and ALLOWED_HOSTS; see README.md. Any variable FOO may instead be given as FOO_FILE, the path
of a file that holds it (for secrets mounted by the service manager).
"""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env(name: str, default: str = "") -> str:
    if path := os.environ.get(f"{name}_FILE"):
        return Path(path).read_text().strip()
    return os.environ.get(name, default)


def envbool(name: str, default: bool) -> bool:
    value = env(name).strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), not {value!r}")


def envint(name: str, default: int) -> int:
    value = env(name).strip()
    try:
        return int(value) if value else default
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, not {value!r}") from None


def envlist(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env(name, default).split(",") if item.strip()]


VAR_DIR = Path(env("PORTAL_VAR_DIR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = envbool("DJANGO_DEBUG", False)

# Without DJANGO_DEBUG there is no default: Django refuses to sign anything with an empty key,
# `check --deploy` reports it, and the WSGI app and the Celery app refuse to start
# (portal/wsgi.py). Commands that sign nothing (makemigrations) still work.
SECRET_KEY = env("SECRET_KEY") or (
    "insecure-development-key-only-used-with-DJANGO_DEBUG" if DEBUG else ""
)

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "127.0.0.1,localhost" if DEBUG else "")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS")
SITE_NAME = env("SITE_NAME", "Debian porterbox portal")
# The portal's own address, for links in the mails the worker sends (no request to read it from).
SITE_URL = env("SITE_URL", "http://127.0.0.1:8000").rstrip("/")
SITE_ID = 1

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.sites",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "csp",
    "allauth",
    "allauth.account",
    "allauth.mfa",
    "allauth.socialaccount",
    "allauth.socialaccount.providers.gitlab",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files, served from here (no CDN)
    "portal.notifications",
    "portal.accounts",
    "portal.inventory",
    "portal.booking",
    "portal.jobs",
    "portal.packages",
    "portal.clusters",
    "portal.operations",
    "portal.api",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "portal.middleware.RefuseNulMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "portal.accounts.middleware.UserTimezoneMiddleware",
    "portal.accounts.middleware.StaffNeedMFAMiddleware",
    "csp.middleware.CSPMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"

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
                "portal.context_processors.site",
            ],
        },
    },
]

# Connections persist (60 s) outside DEBUG: a new PostgreSQL connection per request cost
# about half of job submission's rate (bench/README.md). The health check pings a reused
# connection once per request, so a restarted database is a reconnect, not a 500.
DATABASES = {
    "default": dj_database_url.parse(
        env("DATABASE_URL", f"sqlite:///{VAR_DIR / 'portal.sqlite3'}"),
        conn_max_age=envint("DATABASE_CONN_MAX_AGE", 0 if DEBUG else 60),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Writers take SQLite's write lock at BEGIN, so check-then-insert services are
    # serialized (docs/architecture.md, "The booking invariant").
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # Tests use a file, not shared-cache memory: concurrency tests need SQLite's real locking.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

_cache_url = env("CACHE_URL", f"file://{VAR_DIR / 'cache'}")
if _cache_url.startswith(("redis://", "rediss://")):
    _cache = {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": _cache_url}
elif _cache_url.startswith("locmem://"):
    _cache = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
elif _cache_url.startswith("file://"):
    # Shared by every process of one machine: allauth's login rate limits need that.
    _cache = {
        "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
        "LOCATION": _cache_url.removeprefix("file://"),
    }
else:
    raise ImproperlyConfigured(
        "CACHE_URL must start with redis://, rediss://, file:// or locmem://"
    )
CACHES = {"default": _cache}

AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "home"

# django-allauth: local accounts (partners) need a verified e-mail address; Debian members
# usually log in through salsa.debian.org (GitLab). Failed logins are rate limited.
ACCOUNT_LOGIN_METHODS = {"username", "email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "username*", "password1*", "password2*"]
ACCOUNT_EMAIL_VERIFICATION = "mandatory"
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
ACCOUNT_RATE_LIMITS = {
    "login": "30/m/ip",
    "login_failed": "10/m/ip,5/5m/key",
    "signup": "20/h/ip",
    "confirm_email": "1/3m/key",
    "reset_password": "20/m/ip,5/m/key",
}
ACCOUNT_EMAIL_SUBJECT_PREFIX = f"[{SITE_NAME}] "
ACCOUNT_DEFAULT_HTTP_PROTOCOL = "http" if DEBUG else "https"
# Security keys and passkeys beside authenticator apps; staff must have one of the two
# (portal.accounts.middleware.StaffNeedMFAMiddleware). Plain http is allowed for WebAuthn only
# in development (make run on 127.0.0.1).
MFA_SUPPORTED_TYPES = ["totp", "webauthn", "recovery_codes"]
MFA_WEBAUTHN_ALLOW_INSECURE_ORIGIN = DEBUG
MFA_TOTP_ISSUER = SITE_NAME

SALSA_URL = env("SALSA_URL", "https://salsa.debian.org")
# Membership of one of these salsa groups makes a user a Debian member (may book).
SALSA_DEBIAN_GROUPS = envlist("SALSA_DEBIAN_GROUPS", "debian")
SOCIALACCOUNT_EMAIL_AUTHENTICATION = False
SOCIALACCOUNT_PROVIDERS = {
    "gitlab": {
        # openid adds the "groups" claim to salsa's userinfo (see accounts/salsa.py).
        "SCOPE": ["read_user", "openid"],
        "APPS": [
            {
                "client_id": env("SALSA_CLIENT_ID"),
                "secret": env("SALSA_CLIENT_SECRET"),
                "settings": {"gitlab_url": SALSA_URL},
            }
        ]
        if env("SALSA_CLIENT_ID")
        else [],
    }
}

EMAIL_BACKEND = env(
    "EMAIL_BACKEND",
    "django.core.mail.backends.console.EmailBackend"
    if DEBUG
    else "django.core.mail.backends.smtp.EmailBackend",
)
EMAIL_HOST = env("EMAIL_HOST", "localhost")
EMAIL_PORT = envint("EMAIL_PORT", 25)
EMAIL_HOST_USER = env("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = envbool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = envbool("EMAIL_USE_SSL", False)
EMAIL_FILE_PATH = env("EMAIL_FILE_PATH", str(VAR_DIR / "mail"))  # the file backend's folder
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", "porterbox@localhost")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
ADMINS = [("Admins", a) for a in envlist("ADMINS")]
# Notifications (portal/notifications): sent by their own task every NOTIFY_SECONDS, each
# mail or webhook call given NOTIFY_TIMEOUT_SECONDS, tried NOTIFY_MAX_ATTEMPTS times (backoff
# from 30 s to an hour) before it shows as failed. Webhooks go to public https URLs only,
# unless NOTIFY_WEBHOOK_ALLOW_PRIVATE (a bridge on the portal's own network; tests).
NOTIFY_SECONDS = envint("NOTIFY_SECONDS", 5)
NOTIFY_TIMEOUT_SECONDS = envint("NOTIFY_TIMEOUT_SECONDS", 10)
NOTIFY_MAX_ATTEMPTS = envint("NOTIFY_MAX_ATTEMPTS", 10)
NOTIFY_WEBHOOK_ALLOW_PRIVATE = envbool("NOTIFY_WEBHOOK_ALLOW_PRIVATE", False)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"  # storage is always aware UTC; each user sees their own zone
USE_I18N = True
USE_TZ = True

# Job input archives (uploaded, then sent to the host by the reconcile loop); never served.
MEDIA_ROOT = Path(env("MEDIA_ROOT", str(VAR_DIR / "media")))

STATIC_URL = "static/"
STATIC_ROOT = Path(env("STATIC_ROOT", str(VAR_DIR / "static")))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        # Hashed names need `collectstatic` first; development and tests serve files as they are.
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if envbool("STATIC_MANIFEST", not DEBUG)
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "portal.api.schema.PortalAutoSchema",
    "EXCEPTION_HANDLER": "portal.api.errors.exception_handler",
    "DEFAULT_PARSER_CLASSES": [
        "portal.api.limits.BoundedJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "portal.api.limits.Pagination",
    "PAGE_SIZE": 100,
    # Per user for token and session clients, per address for anonymous ones (the address the
    # proxy saw, see BEHIND_PROXY below); counters live in CACHE_URL's cache.
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": env("API_RATE_ANON", "120/min"),
        "user": env("API_RATE_USER", "600/min"),
    },
}
SPECTACULAR_SETTINGS = {
    "TITLE": SITE_NAME,
    "DESCRIPTION": "Reserve accelerator hosts, manage SSH keys, run training jobs and package "
    "tests. Authenticate with the API token from your profile: Authorization: Token <token>.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # A job's state appears in two answers (a job; a submission's job with its array's ids).
    "ENUM_NAME_OVERRIDES": {"JobStateEnum": "portal.jobs.models.Job.State"},
    # /api/docs/: Swagger UI from drf-spectacular-sidecar's static files, its set-up script a
    # file of its own (the split view), so the page keeps the CSP's "no inline script".
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

CELERY_BROKER_URL = env("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL == "filesystem://":
    _broker_dir = VAR_DIR / "celery" / "broker"
    for _sub in ("out", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "out"),
        "data_folder_out": str(_broker_dir / "out"),
        "processed_folder": str(_broker_dir / "processed"),
        "store_processed": False,
        "control_folder": str(_broker_dir / "control"),
        # This transport hands out one message per poll: at kombu's default of one poll a
        # second, beat's ticks and the per-host passes they fan out would pile up and expire.
        "polling_interval": 0.1,
    }
CELERY_TASK_DEFAULT_QUEUE = env("CELERY_QUEUE", "celery")
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = 120
CELERY_TASK_TIME_LIMIT = 180
CELERY_TASK_ALWAYS_EAGER = envbool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# Provisioning (docs/agent.md): the portal's private SSH key, whose public half is in the
# agent account's authorized_keys on every host behind restrict,command="...".
PORTAL_SSH_KEY_FILE = env("PORTAL_SSH_KEY_FILE", str(VAR_DIR / "ssh" / "id_ed25519"))
PORTAL_SSH_TIMEOUTS = {
    "connect_timeout": envint("PORTAL_SSH_CONNECT_TIMEOUT", 10),
    "banner_timeout": envint("PORTAL_SSH_BANNER_TIMEOUT", 10),
    "auth_timeout": envint("PORTAL_SSH_AUTH_TIMEOUT", 10),
    "command_timeout": envint("PORTAL_SSH_COMMAND_TIMEOUT", 60),
    "retries": envint("PORTAL_SSH_RETRIES", 2),
}
# Single-machine mode: the agent on this machine, for hosts whose connection is "local".
PORTAL_LOCAL_AGENT = envlist(
    "PORTAL_LOCAL_AGENT", "sudo,-n,/usr/local/sbin/porterbox-hostctl,--ssh"
)
PORTAL_RECONCILE_SECONDS = envint("PORTAL_RECONCILE_SECONDS", 5)
# How long a worker may hold a host; one that dies loses it after this.
PORTAL_LEASE_SECONDS = envint("PORTAL_LEASE_SECONDS", 120)
if PORTAL_LEASE_SECONDS < 30:
    raise ImproperlyConfigured("PORTAL_LEASE_SECONDS must be at least 30")

# Telemetry and health (portal/operations/telemetry.py, health.py, activity.py): how often
# the loop reads the devices, how long readings and their hourly rollups are kept, how long a
# user is warned before an idle reservation is ended, and the token Prometheus scrapes
# /metrics with (empty: staff sessions only).
PORTAL_TELEMETRY_SECONDS = envint("PORTAL_TELEMETRY_SECONDS", 60)
PORTAL_TELEMETRY_RAW_HOURS = envint("PORTAL_TELEMETRY_RAW_HOURS", 48)
PORTAL_TELEMETRY_HOURLY_DAYS = envint("PORTAL_TELEMETRY_HOURLY_DAYS", 90)
PORTAL_IDLE_WARNING_MINUTES = envint("PORTAL_IDLE_WARNING_MINUTES", 15)
PORTAL_METRICS_TOKEN = env("PORTAL_METRICS_TOKEN", "")
# Device health checks (portal/operations/checks.py): every this many hours, one free device
# of each vendor on each host runs the host's own check; 0: never.
PORTAL_HEALTH_CHECK_HOURS = envint("PORTAL_HEALTH_CHECK_HOURS", 24)
if PORTAL_HEALTH_CHECK_HOURS < 0:
    raise ImproperlyConfigured("PORTAL_HEALTH_CHECK_HOURS must be 0 (never) or more")

# Training jobs (portal/jobs/scheduler.py): how fast past usage fades from the fair share, and
# how long a job gets between SIGTERM and SIGKILL at its walltime (its devices stay held).
JOBS_USAGE_HALF_LIFE_HOURS = envint("JOBS_USAGE_HALF_LIFE_HOURS", 7 * 24)
JOBS_STOP_GRACE_SECONDS = envint("JOBS_STOP_GRACE_SECONDS", 120)
JOBS_MAX_ARCHIVE_MB = envint("JOBS_MAX_ARCHIVE_MB", 64)  # an uploaded input archive
JOBS_MAX_LOG_KB = envint("JOBS_MAX_LOG_KB", 1024)  # of a job's log kept in the portal
JOBS_MAX_OUTPUT_MB = envint("JOBS_MAX_OUTPUT_MB", 64)  # of a job's output kept, compressed
JOBS_MAX_REQUEUES = envint("JOBS_MAX_REQUEUES", 3)  # after a host failure, then it fails
# A host unreachable this long has failed: its jobs go back to the queue.
JOBS_HOST_FAILURE_SECONDS = envint("JOBS_HOST_FAILURE_SECONDS", 300)
JOBS_SCHEDULE_SECONDS = envint("JOBS_SCHEDULE_SECONDS", 15)
# How often the first waiting jobs' start estimates (/jobs/) are made again when no pass asked
# for them sooner: a reservation booked or ended moves them too (portal/jobs/estimates.py).
JOBS_ESTIMATE_SECONDS = envint("JOBS_ESTIMATE_SECONDS", 60)

# Package tests (portal/packages, issue 17): the partner project whose share Debian's own test
# runs take in the fair-share queue (created when first needed), a run's walltime, how often
# the archive watcher reads the configured archives' Sources, and the largest .dsc upload.
TESTS_PROJECT = env("TESTS_PROJECT", "debian-ci")
TESTS_WALLTIME_MINUTES = envint("TESTS_WALLTIME_MINUTES", 60)
TESTS_WATCH_SECONDS = envint("TESTS_WATCH_SECONDS", 3600)
TESTS_MAX_UPLOAD_MB = envint("TESTS_MAX_UPLOAD_MB", 200)
TESTS_MAX_RETRIES = envint("TESTS_MAX_RETRIES", 2)  # of a run that ended in tmpfail

# Slurm clusters (portal/clusters): how often each cluster is asked about its jobs.
CLUSTERS_PASS_SECONDS = envint("CLUSTERS_PASS_SECONDS", 15)

# One place for the periodic tasks, with readable names (docs/architecture.md).
CELERY_BEAT_SCHEDULE = {
    "reconcile hosts": {
        "task": "portal.operations.tasks.reconcile",
        "schedule": PORTAL_RECONCILE_SECONDS,
        # Long enough for a busy worker or a polling broker (the file-system one polls once a
        # second) to take it; a pass that runs late is harmless (the per-host lease).
        "options": {"expires": max(10, 3 * PORTAL_RECONCILE_SECONDS)},
    },
    "telemetry retention": {
        "task": "portal.operations.tasks.telemetry_retention",
        "schedule": 3600,
        "options": {"expires": 600},
    },
    "watch package archives": {
        "task": "portal.packages.tasks.watch",
        "schedule": TESTS_WATCH_SECONDS,
        "options": {"expires": max(60, TESTS_WATCH_SECONDS // 2)},
    },
    "record test results": {
        "task": "portal.packages.runs_tasks.record",
        "schedule": 60,
        "options": {"expires": 120},
    },
    "send notifications": {
        "task": "portal.notifications.tasks.send_notifications",
        "schedule": NOTIFY_SECONDS,
        "options": {"expires": max(10, 3 * NOTIFY_SECONDS)},
    },
    "schedule training jobs": {
        "task": "portal.jobs.tasks.schedule",
        "schedule": JOBS_SCHEDULE_SECONDS,
        "options": {"expires": max(10, 3 * JOBS_SCHEDULE_SECONDS)},
    },
    "estimate job starts": {
        "task": "portal.jobs.tasks.estimate_job_starts",
        "schedule": JOBS_ESTIMATE_SECONDS,
        "options": {"expires": max(10, 3 * JOBS_ESTIMATE_SECONDS)},
    },
    # Slurm clusters (portal/clusters, docs/slurm.md): submit, follow and cancel their jobs;
    # mirror the bookings of hosts that are Slurm nodes as Slurm reservations.
    "slurm clusters": {
        "task": "portal.clusters.tasks.clusters_pass",
        "schedule": CLUSTERS_PASS_SECONDS,
        "options": {"expires": max(10, 3 * CLUSTERS_PASS_SECONDS)},
    },
    "slurm reservations": {
        "task": "portal.clusters.tasks.mirror_bookings",
        "schedule": CLUSTERS_PASS_SECONDS,
        "options": {"expires": max(10, 3 * CLUSTERS_PASS_SECONDS)},
    },
}
if PORTAL_HEALTH_CHECK_HOURS:
    CELERY_BEAT_SCHEDULE["device health checks"] = {
        "task": "portal.operations.tasks.health_checks",
        "schedule": PORTAL_HEALTH_CHECK_HOURS * 3600,
        # A run not started within the hour is dropped; the next one comes in time.
        "options": {"expires": 3600},
    }

# Production hardening; every line here is something `check --deploy` looks for.
# Trust X-Forwarded-Proto only when a TLS-terminating proxy that sets it stands in front.
# Then the client's address for the audit log is the last X-Forwarded-For hop, the one our
# proxy appended (earlier hops are whatever the client claimed).
BEHIND_PROXY = envbool("BEHIND_PROXY", False)
if BEHIND_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Rate limits key on that same hop: allauth's (logins, sign-ups, resets) and DRF's (the API).
# Without it every client shares the proxy's address, and one bucket locks out the site.
ALLAUTH_TRUSTED_PROXY_COUNT = 1 if BEHIND_PROXY else 0
REST_FRAMEWORK["NUM_PROXIES"] = 1 if BEHIND_PROXY else 0  # 0: REMOTE_ADDR, never XFF
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", not DEBUG)
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", not DEBUG)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# Content-Security-Policy (django-csp): scripts, styles and images from this site only, no
# inline script anywhere (the pages have none; tests/browser/test_csp.py looks for violations).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "frame-ancestors": ["'none'"],
        # A login with salsa posts here, then goes on to salsa's authorization page.
        "form-action": ["'self'", SALSA_URL],
    }
}
SESSION_COOKIE_HTTPONLY = True

# The reconcile loop's records carry host, reservation and job (portal/operations/logs.py);
# the Context filter shows them as " host=... reservation=..." and nothing for other records.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "portal.operations.logs.Context"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s"}
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "filters": ["context"],
            "formatter": "plain",
        }
    },
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO")},
}
