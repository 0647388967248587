"""The one settings module of jmirror-web, read from environment variables.

With no environment at all it runs the embedded default: SQLite and the pcaps in
``JMIRROR_DATA_DIR`` (``./data``), the in-process channel layer, and a secret key
generated once and kept in the data directory. Production sets ``DATABASE_URL``,
``REDIS_URL`` and ``DJANGO_SECRET_KEY`` (or ``DJANGO_SECRET_KEY_FILE``). A bad value
stops the start with a :class:`~jmirror_web.environment.ConfigurationError`.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dj_database_url

from jmirror_web.environment import (
    ConfigurationError,
    env_bool,
    env_list,
    env_path,
    env_secret,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parent.parent

DATA_DIR = env_path("JMIRROR_DATA_DIR", BASE_DIR / "data")
try:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
except OSError as error:
    raise ConfigurationError(
        f"JMIRROR_DATA_DIR={str(DATA_DIR)!r} cannot be created: {error.strerror}"
    ) from None


def _secret_key() -> str:
    configured = env_secret("DJANGO_SECRET_KEY")
    if configured is not None:
        if len(configured) < 32:
            raise ConfigurationError("DJANGO_SECRET_KEY must be at least 32 characters long")
        return configured
    # Embedded default: one random key per data directory, so sessions survive restarts
    # without the operator having to invent a secret.
    key_file = DATA_DIR / "secret_key"
    if not key_file.exists():
        key_file.touch(mode=0o600)
        key_file.write_text(secrets.token_urlsafe(50), encoding="utf-8")
    return key_file.read_text(encoding="utf-8").strip()


SECRET_KEY = _secret_key()
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "receiver",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "jmirror_web.urls"
ASGI_APPLICATION = "jmirror_web.asgi.application"

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


def _database(url: str) -> dict[str, Any]:
    try:
        config: dict[str, Any] = dict(dj_database_url.parse(url, conn_max_age=60))
    except ValueError as error:
        raise ConfigurationError(f"DATABASE_URL is not usable: {error}") from None
    if config.get("ENGINE") not in (
        "django.db.backends.postgresql",
        "django.db.backends.sqlite3",
    ):
        raise ConfigurationError(
            "DATABASE_URL must be a postgres:// or sqlite:// URL, "
            f"not {urlsplit(url).scheme or url!r}"
        )
    return config


DATABASES = {
    "default": _database(env_str("DATABASE_URL", f"sqlite:///{DATA_DIR / 'jmirror.sqlite3'}"))
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def _channel_layers(url: str) -> dict[str, Any]:
    if not url:
        # Embedded default: the receiver runs inside the web process, so an in-process
        # layer is enough.
        return {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    scheme = urlsplit(url).scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigurationError(
            f"REDIS_URL must be a redis://, rediss:// or unix:// URL, not {scheme or url!r}"
        )
    return {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [url]},
        }
    }


REDIS_URL = env_str("REDIS_URL", "").strip()
CHANNEL_LAYERS = _channel_layers(REDIS_URL)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
# Evidence timestamps are UTC everywhere; the browser shows local time on hover only.
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("JMIRROR_LOG_LEVEL", "INFO").upper()},
}
