"""Vapor settings.

Everything an operator may change comes from the environment (see
``vaporsite/env.py`` and the README's configuration table). Bad values do not
crash the import: they fall back to the default and are reported by the
system checks in ``vaporsite/checks.py``, which name the variable.
"""

from __future__ import annotations

from pathlib import Path

from vaporsite import env

BASE_DIR = Path(__file__).resolve().parent.parent

VAPOR = env.load()

SECRET_KEY = VAPOR.secret_key
DEBUG = VAPOR.debug
ALLOWED_HOSTS = VAPOR.allowed_hosts

INSTALLED_APPS = [
    # Before django.contrib.admin: its templates/admin/index.html replaces the admin's index.
    "dashboard.apps.DashboardConfig",
    # Issue 13, point 1: django.contrib.admin with Vapor's site (VMs first in the app list, "View site" = the dashboard).
    "dashboard.apps.VaporAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    # Before staticfiles: its `runserver` (refusing DEBUG beyond loopback) replaces theirs.
    "vaporsite.apps.VaporSiteConfig",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    # Issue 13, point 6: Swagger UI and ReDoc from the app's own static files (no CDN).
    "drf_spectacular_sidecar",
    "django_q",
    "isos.apps.IsosConfig",
    "projects.apps.ProjectsConfig",
    "vms.apps.VmsConfig",
]

# Django's own permissions, plus what a user's project roles grant (projects/backends.py).
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "projects.backends.ProjectRoleBackend",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "vaporsite.urls"

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

WSGI_APPLICATION = "vaporsite.wsgi.application"

DATABASES = {"default": VAPOR.database}

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

# Issue 13, point 2 (vmpage): times to the second with the time zone everywhere in the admin
# ("2026-12-02 16:14:08 UTC"): Django's English formats replaced by vaporsite/formats/en/formats.py.
FORMAT_MODULE_PATH = ["vaporsite.formats"]

STATIC_URL = "static/"
# `manage.py collectstatic` (scripts/setup.sh runs it) copies every app's static files here, with
# gzip variants beside them; the ASGI application serves them (vaporsite/staticfiles.py, whitenoise).
STATIC_ROOT = VAPOR.data_dir / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# The ASGI application (vaporsite/asgi.py) hands websockets under /ws/ to this one, imported on the
# first websocket, so that HTTP never depends on it.
VAPOR_WEBSOCKET_APPLICATION = "vms.consoles.websocket.application"

# The console pages' browser libraries, installed by scripts/setup.sh from
# frontend/package-lock.json (npm ci): only the subtrees a page loads, under
# vendor/. noVNC's ES modules import each other and ../vendor/pako relatively,
# so its core/ and vendor/ stay side by side; the .map files come along
# because collectstatic's manifest follows sourceMappingURL comments.
NODE_MODULES = BASE_DIR / "frontend" / "node_modules"
STATICFILES_DIRS = [
    ("vendor/novnc/core", NODE_MODULES / "@novnc" / "novnc" / "core"),
    ("vendor/novnc/vendor", NODE_MODULES / "@novnc" / "novnc" / "vendor"),
    ("vendor/xterm/lib", NODE_MODULES / "@xterm" / "xterm" / "lib"),
    ("vendor/xterm/css", NODE_MODULES / "@xterm" / "xterm" / "css"),
    ("vendor/xterm-addon-fit/lib", NODE_MODULES / "@xterm" / "addon-fit" / "lib"),
]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Production hardening switches on with DEBUG off; `check --deploy` is clean
# once VAPOR_SECRET_KEY and VAPOR_ALLOWED_HOSTS are set (README).
if not DEBUG:
    SECURE_CONTENT_TYPE_NOSNIFF = True
    SESSION_COOKIE_SECURE = VAPOR.secure_cookies
    CSRF_COOKIE_SECURE = VAPOR.secure_cookies
    SECURE_SSL_REDIRECT = VAPOR.ssl_redirect
    SECURE_HSTS_SECONDS = VAPOR.hsts_seconds
    SECURE_HSTS_INCLUDE_SUBDOMAINS = VAPOR.hsts_seconds > 0
    SECURE_HSTS_PRELOAD = VAPOR.hsts_seconds > 0
# No SECURE_PROXY_SSL_HEADER: Django would believe X-Forwarded-Proto from whoever sends it. The
# server (`manage.py serve`) believes it only from VAPOR_FORWARDED_ALLOW_IPS and sets the request's
# scheme, which is what request.is_secure() reads.
X_FRAME_OPTIONS = "DENY"

# A request body (API JSON, admin form) may be this large; README, "Limits".
DATA_UPLOAD_MAX_MEMORY_SIZE = VAPOR.max_body_bytes

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["vaporsite.permissions.ModelPermissions"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "vaporsite.api.exception_handler",
    # Every parser holds the body to DATA_UPLOAD_MAX_MEMORY_SIZE (DRF would read JSON of any size).
    "DEFAULT_PARSER_CLASSES": [
        "vaporsite.parsers.BoundedJSONParser",
        "vaporsite.parsers.BoundedFormParser",
        "vaporsite.parsers.BoundedMultiPartParser",
    ],
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Vapor API",
    "DESCRIPTION": "Virtual machines on libvirt/QEMU hosts and an ISO library.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "OsTypeEnum": "guestos.choices.OsType",
        "ArchitectureEnum": "isos.choices.Architecture",
        "IsoStatusEnum": "isos.choices.IsoStatus",
        "BootTypeEnum": "isos.choices.BootType",
        "VmStatusEnum": "vms.choices.VmStatus",
        "NicTypeEnum": "vms.choices.NicType",
        "GraphicsTypeEnum": "vms.choices.GraphicsType",
        "DiskSourceEnum": "vms.choices.DiskSource",
        "DiskFormatEnum": "vms.choices.DiskFormat",
        "DiskBusEnum": "vms.choices.DiskBus",
        "NicModelEnum": "vms.choices.NicModel",
        "EventStatusEnum": "vms.choices.EventStatus",
        "ConsoleTypeEnum": "vms.choices.ConsoleType",
        "CdromSlotEnum": "vms.choices.CdromSlot",
    },
    # Issue 13, point 6: the API docs work on a host without internet. Swagger UI and ReDoc come from
    # drf-spectacular-sidecar's static files; no validator badge (it would call out); the ReDoc page is
    # Vapor's own template (drf-spectacular's loads web fonts from elsewhere).
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
}

# django-q2. `retry` must exceed `timeout` (and the longest task), or the ORM
# broker hands a running task out again; failures are kept for the admin.
# django-q2 counts only deliveries that finish; Vapor's jobs count those that
# start too (VirtualMachine/IsoImage.attempts) and give up past this many.
TASK_MAX_ATTEMPTS = 3
# Downloads have a queue and a cluster of their own (started with Q_CLUSTER_NAME=vapor-downloads,
# as scripts/run.sh does): a slow server holds one of its workers, never one that hashing or
# provisioning waits for. Both clusters share the broker, the timeouts and the signing name.
DOWNLOAD_QUEUE = "vapor-downloads"
# The broker (VAPOR_Q_BROKER): the ORM one keeps the queue in the database; Redis lets the clusters
# of several machines share one queue (README, "Running several portal machines"). Either way the
# schedules and the task results live in the database, which all machines must then share.
Q_BROKER: dict[str, str] = {"orm": "default"} if VAPOR.q_broker == "orm" else {"redis": VAPOR.redis_url}
Q_CLUSTER = {
    "name": "vapor",
    **Q_BROKER,
    "workers": VAPOR.q_workers,
    "timeout": VAPOR.q_timeout,
    "retry": VAPOR.q_retry,
    "max_attempts": TASK_MAX_ATTEMPTS,
    "ack_failures": True,
    "save_limit": 1000,
    "catch_up": False,
    "sync": VAPOR.q_sync,
    "label": "Tasks",
    "ALT_CLUSTERS": {DOWNLOAD_QUEUE: {"workers": VAPOR.download_workers}},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "vapor": {"handlers": ["console"], "level": VAPOR.log_level},
        "django_q": {"handlers": ["console"], "level": "WARNING"},
    },
}
