"""The one settings module of jmirror-web, read from environment variables.

With no environment at all it runs the embedded default: SQLite and the pcaps in
``JMIRROR_DATA_DIR`` (``./data``), the in-process channel layer, and a secret key
generated once and kept in the data directory. Production sets ``DATABASE_URL``,
``REDIS_URL`` and ``DJANGO_SECRET_KEY`` (or ``DJANGO_SECRET_KEY_FILE``). A bad value
stops the start with a :class:`~jmirror_web.environment.ConfigurationError`.
"""

from __future__ import annotations

import ipaddress
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dj_database_url

from jmirror_web.environment import (
    ConfigurationError,
    env_bool,
    env_choice,
    env_int,
    env_list,
    env_path,
    env_secret,
    env_str,
    parse_listen,
)
from jmirror_web.file_modes import restrict_umask
from jmirror_web.object_store import (
    LockMode,
    StorageConfig,
    StorageUrlError,
    parse_storage_url,
    valid_node_name,
)

BASE_DIR = Path(__file__).resolve().parent.parent

# Before anything is created: whatever a jmirror-web process makes (the SQLite database
# and its WAL, SHM and journal files, which SQLite creates itself; pcaps; exports) is its
# owner's alone. The database holds API tokens, session keys and password hashes, and the
# session folders' names carry LIIDs (jmirror_web.file_modes).
restrict_umask()
# Named here, made at start (jmirror_web.data_directory, from JMirrorConfig.ready): reading
# the settings creates nothing.
DATA_DIR = env_path("JMIRROR_DATA_DIR", BASE_DIR / "data")
# The receiver's pcaps, one folder per session (receiver.store); CaptureFile rows name
# their files relative to it (CaptureFile.on_disk).
SESSIONS_DIR = DATA_DIR / "sessions"

_GIVEN_SECRET_KEY = env_secret("DJANGO_SECRET_KEY", min_length=32)
# Without a key in the environment, the embedded default generates one into this file on
# first start and keeps it there; SECRET_KEY is filled from it at start, before any app
# can use it.
GENERATED_SECRET_KEY_FILE = None if _GIVEN_SECRET_KEY else DATA_DIR / "secret_key"
SECRET_KEY = _GIVEN_SECRET_KEY or ""
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])


def _trusted_origins(origins: list[str]) -> list[str]:
    """CSRF-trusted origins: ``https://host[:port]`` (``https://*.example.net`` for every
    subdomain). Only needed when the browser's Origin differs from the Host that reaches
    Django (a proxy rewriting Host). Plain http:// is refused: these are the sign-in and
    warrant forms of a lawful-intercept host."""
    for origin in origins:
        try:
            parts = urlsplit(origin)
            parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
        except ValueError:
            raise ConfigurationError(
                f"DJANGO_CSRF_TRUSTED_ORIGINS: {origin!r} is not a valid origin"
            ) from None
        if parts.scheme != "https" or not parts.hostname:
            raise ConfigurationError(
                f"DJANGO_CSRF_TRUSTED_ORIGINS: {origin!r} is not an https://host[:port] origin"
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise ConfigurationError(
                f"DJANGO_CSRF_TRUSTED_ORIGINS: {origin!r} has more than scheme, host and port"
            )
    return [origin.rstrip("/") for origin in origins]


CSRF_TRUSTED_ORIGINS = _trusted_origins(env_list("DJANGO_CSRF_TRUSTED_ORIGINS", []))

# HTTPS is the deployment's to declare, not something to guess from DEBUG: the embedded
# default serves plain http://127.0.0.1, where secure cookies would never be sent back and
# an SSL redirect would lock the user out. Production behind TLS says JMIRROR_HTTPS=true.
HTTPS = env_bool("JMIRROR_HTTPS", False)
# Behind a reverse proxy that terminates TLS, Django sees plain HTTP; the proxy's
# X-Forwarded-Proto says what the browser used. Trusted only when the deployment says a
# proxy is there (and sets that header itself), or any client could claim HTTPS.
BEHIND_PROXY = env_bool("JMIRROR_BEHIND_PROXY", False)
if BEHIND_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_SSL_REDIRECT = HTTPS
# The container health check asks for http://localhost:8000/healthz, past the proxy.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SECURE_HSTS_SECONDS = 365 * 24 * 3600 if HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
# Preload is a commitment for the whole registrable domain, made by submitting it to the
# browsers' lists; that is the operator's decision, never a default of the software. So
# it stays off, and the deploy check's reminder about it (W021) is silenced.
SECURE_HSTS_PRELOAD = False
SILENCED_SYSTEM_CHECKS = ["security.W021"]
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# Sessions end after JMIRROR_SESSION_IDLE_MINUTES without a request and when the browser
# closes: an unattended screen must not stay signed in to intercepted traffic. The
# expiry is moved on by jmirror_web.security.sessions.IdleSessionMiddleware at most once
# a minute, rather than by SESSION_SAVE_EVERY_REQUEST's database write on every request.
SESSION_IDLE_MINUTES = env_int("JMIRROR_SESSION_IDLE_MINUTES", 30, minimum=1, maximum=24 * 60)
SESSION_COOKIE_AGE = SESSION_IDLE_MINUTES * 60
SESSION_SAVE_EVERY_REQUEST = False
SESSION_EXPIRE_AT_BROWSER_CLOSE = True
SESSION_COOKIE_HTTPONLY = True
# Strict: no cross-site request, not even a top-level link, carries the session; a link
# from a ticket system lands on the sign-in page instead.
SESSION_COOKIE_SAMESITE = "Strict"
CSRF_COOKIE_SAMESITE = "Strict"

INSTALLED_APPS = [
    "daphne",
    # First after Daphne: its ready() makes the data directory and the secret key.
    "jmirror_web.apps.JMirrorConfig",
    "jmirror_web.apps.JMirrorAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "channels",
    "axes",
    "csp",
    "rest_framework",
    "rest_framework.authtoken",
    "jmirror_web.intercepts",
    "jmirror_web.audit",
    "jmirror_web.api",
    "jmirror_web.live",
    "jmirror_web.console",
    "jmirror_web.exports",
    "jmirror_web.conversations",
    "jmirror_web.server",
    "receiver",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "jmirror_web.security",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "jmirror_web.plain_text.RefuseNulMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "jmirror_web.security.sessions.IdleSessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "jmirror_web.audit.log.AuditContextMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "jmirror_web.security.two_factor.TwoFactorMiddleware",
    "jmirror_web.security.first_password.FirstPasswordMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    # Last, as django-axes asks: it turns a locked-out sign-in into the lockout page.
    "axes.middleware.AxesMiddleware",
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
                "jmirror_web.console.context.navigation",
            ],
        },
    },
]


def _url_scheme(name: str, url: str, allowed: tuple[str, ...]) -> str:
    """The scheme of ``url``, which must be one of ``allowed``. Errors name the variable
    and the scheme but never repeat the URL, which may hold a password."""
    try:
        scheme = urlsplit(url).scheme
    except ValueError:
        raise ConfigurationError(f"{name} is not a valid URL") from None
    if scheme not in allowed:
        wanted = ", ".join(f"{each}://" for each in allowed[:-1]) + f" or {allowed[-1]}://"
        found = f", not {scheme}://" if scheme else ""
        raise ConfigurationError(f"{name} must be a {wanted} URL{found}")
    return scheme


def _database(url: str) -> dict[str, Any]:
    scheme = _url_scheme("DATABASE_URL", url, ("postgres", "postgresql", "sqlite"))
    try:
        # CONN_MAX_AGE stays at dj-database-url's 0: Django's docs say persistent
        # connections should be disabled under ASGI.
        config: dict[str, Any] = dict(dj_database_url.parse(url))
    except ValueError:
        raise ConfigurationError(
            "DATABASE_URL is not a valid URL; is the port a number, and are special characters"
            " in the password percent-encoded?"
        ) from None
    if scheme == "sqlite" and config["NAME"] == ":memory:":
        raise ConfigurationError(
            "DATABASE_URL=sqlite:// is an in-memory database, empty in every process; "
            "name a file: sqlite:////path/to/jmirror.sqlite3"
        )
    if not config["NAME"]:
        raise ConfigurationError("DATABASE_URL names no database")
    if scheme == "sqlite":
        # Writers take SQLite's one write lock when their transaction starts, so two
        # processes appending to the audit chain cannot both link to the same event.
        options = config.setdefault("OPTIONS", {})
        options["transaction_mode"] = "IMMEDIATE"
        # The embedded receiver writes counters while pages read: WAL lets readers go on
        # during a write, and a writer waits for the lock instead of failing at once.
        options["init_command"] = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
        options["timeout"] = 20
    else:
        # libpq's own defaults wait forever on a database host that vanished from the
        # network: the receiver's counter writes (and a page) would hang rather than fail
        # and be retried. Options given in the URL's query string win.
        options = config.setdefault("OPTIONS", {})
        for name, value in POSTGRES_TIMEOUTS.items():
            options.setdefault(name, value)
    return config


# Seconds to connect; TCP keepalives after 30 s idle, every 10 s, 3 missed = gone; and
# unacknowledged data for 30 s (in ms) breaks the connection.
POSTGRES_TIMEOUTS: dict[str, int] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}


DATABASES = {
    "default": _database(env_str("DATABASE_URL", f"sqlite:///{DATA_DIR / 'jmirror.sqlite3'}"))
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def _channel_layers(url: str) -> dict[str, Any]:
    if not url:
        # Embedded default: the receiver runs inside the web process, so an in-process
        # layer is enough.
        return {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    _url_scheme("REDIS_URL", url, ("redis", "rediss", "unix"))
    # The pub/sub layer: group_send measured ~0.2 ms against ~1.0 ms for the core layer,
    # and no per-channel capacity that silently drops messages (docs/architecture.md,
    # Measured constraints).
    return {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [url]},
        }
    }


# Where routers send their mirror: shown in the provisioning snippets (RADIUS
# attributes, DTCP ADD) on each intercept's page. Empty address: the snippets show a
# placeholder to fill in.
MEDIATION_ADDRESS = env_str("JMIRROR_MEDIATION_ADDRESS", "").strip()
if MEDIATION_ADDRESS:
    # RADIUS ERX-Med-Ip-Address and DTCP's X-JTap-Cdest-Dest-Address hold IPv4 only.
    try:
        ipaddress.IPv4Address(MEDIATION_ADDRESS)
    except ValueError:
        raise ConfigurationError(
            f"JMIRROR_MEDIATION_ADDRESS={MEDIATION_ADDRESS!r} is not an IPv4 address "
            "(routers mirror to IPv4 only)"
        ) from None
MEDIATION_PORT = env_int("JMIRROR_MEDIATION_PORT", 30030, minimum=1, maximum=65535)


def _listen(addresses: list[str]) -> list[tuple[str, int]]:
    if not addresses:
        raise ConfigurationError("JMIRROR_LISTEN is empty: give at least one HOST:PORT")
    listen = []
    for text in addresses:
        try:
            listen.append(parse_listen(text))
        except ValueError as error:
            raise ConfigurationError(f"JMIRROR_LISTEN: {error}") from None
    return listen


# Where `manage.py receive` listens for mirror streams unless --listen says otherwise:
# comma-separated HOST:PORT, IPv6 in brackets. 30030 is only Wireshark's default port.
JMIRROR_LISTEN = _listen(env_list("JMIRROR_LISTEN", ["127.0.0.1:30030"]))
# The receiver's Prometheus endpoint, HOST:PORT; empty (the default): none.
JMIRROR_METRICS_LISTEN = env_str("JMIRROR_METRICS_LISTEN", "").strip()
if JMIRROR_METRICS_LISTEN:
    try:
        parse_listen(JMIRROR_METRICS_LISTEN)
    except ValueError as error:
        raise ConfigurationError(f"JMIRROR_METRICS_LISTEN: {error}") from None

# At most this many pcap files open at once in a receiver; past it, the least recently
# written file is closed (its session goes on in a new file). 0 (the default): the
# open-file limit (raised to the hard limit at start) minus a reserve of a quarter of it,
# at most 256, for sockets, the database and the web server.
JMIRROR_MAX_OPEN_FILES = env_int("JMIRROR_MAX_OPEN_FILES", 0, minimum=0, maximum=10_000_000)

# Whether the receiver writes each capture file's packet index beside it (receiver.
# packet_index): the stored packet list pages from it. Off, the web builds an index from
# the file the first time it lists it (seconds for a large file); for measuring its cost.
JMIRROR_PACKET_INDEX = env_bool("JMIRROR_PACKET_INDEX", True)

# Whether the receiver runs the summariser of conversations and names (manage.py
# summarise) as its child process. Off, run manage.py summarise on another host, or none.
JMIRROR_SUMMARISE = env_bool("JMIRROR_SUMMARISE", True)

# The dashboard warns about an intercept in force that has received nothing for this long.
JMIRROR_ALERT_SILENCE_MINUTES = env_int(
    "JMIRROR_ALERT_SILENCE_MINUTES", 15, minimum=1, maximum=7 * 24 * 60
)

# Days after its warrant ends that a new case's files are kept before they are purged
# (each case can say otherwise; legal hold keeps them all). 36500 is the model's maximum.
JMIRROR_RETENTION_DAYS = env_int("JMIRROR_RETENTION_DAYS", 365, minimum=0, maximum=36500)

# This host's name among the capture hosts (rows record which node captured what, object
# keys start with it, the health page lists nodes): default the host name.
NODE_NAME = env_str("JMIRROR_NODE_NAME", "").strip() or socket.gethostname().split(".")[0]
if not valid_node_name(NODE_NAME):
    raise ConfigurationError(
        f"JMIRROR_NODE_NAME={NODE_NAME!r} is not a node name: 1-63 letters, digits, '.', "
        "'-' or '_', starting with a letter or digit"
    )


# Where closed capture files go (jmirror_web.object_store): empty, local files under the
# data directory only; s3://BUCKET[/PREFIX], an S3-compatible store, with the endpoint of
# a non-AWS one and the region here and the credentials in the standard AWS variables or
# a credentials file (never in the URL). Parsed here; reached when a receiver or `serve`
# starts (a store out of reach then stops the start with one line).
def _storage() -> StorageConfig | None:
    try:
        where = parse_storage_url(env_str("JMIRROR_STORAGE_URL", ""))
    except StorageUrlError as error:
        raise ConfigurationError(f"JMIRROR_STORAGE_URL: {error}") from None
    endpoint = env_str("JMIRROR_S3_ENDPOINT", "").strip() or None
    if endpoint is not None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
            raise ConfigurationError(
                f"JMIRROR_S3_ENDPOINT={endpoint!r} is not http(s)://HOST[:PORT] "
                "(credentials go in the AWS variables, not here)"
            )
    mode = LockMode(env_choice("JMIRROR_S3_LOCK_MODE", "COMPLIANCE", list(LockMode)))
    region = env_str("JMIRROR_S3_REGION", "").strip() or None
    if where is None:
        return None
    bucket, prefix = where
    return StorageConfig(bucket, prefix, endpoint=endpoint, region=region, lock_mode=mode)


STORAGE = _storage()
# Hours a capture file's local copy is kept after the store confirmed its upload (then
# removed; never before). Web processes read it locally while it is there.
JMIRROR_LOCAL_KEEP_HOURS = env_int("JMIRROR_LOCAL_KEEP_HOURS", 24, minimum=0, maximum=24 * 3650)
# A session's file closes (and is hashed, then uploaded) after this many seconds without
# a packet: what a web process on another host cannot read of an active session is at
# most this last stretch.
JMIRROR_SESSION_QUIET_SECONDS = env_int(
    "JMIRROR_SESSION_QUIET_SECONDS", 60, minimum=1, maximum=24 * 3600
)
# A capture file closes once its packets span this many seconds (or it reaches 256 MB),
# whatever the traffic. With several capture hosts it bounds what a web process on
# another host cannot read of a session that never goes quiet: that session's current
# file. Shorter means more files (each opened, hashed, uploaded and read on its own).
JMIRROR_ROTATE_SECONDS = env_int("JMIRROR_ROTATE_SECONDS", 3600, minimum=10, maximum=24 * 3600)

# The Ed25519 key that signs the audit log's checkpoints (jmirror_web.audit.checkpoints),
# made with mode 0600 on first use. Outside the database on purpose: whoever can rewrite
# the database must not be able to sign a checkpoint of the rewritten log.
JMIRROR_AUDIT_KEY_FILE = env_path("JMIRROR_AUDIT_KEY_FILE", DATA_DIR / "audit_signing_key")
# `manage.py serve` signs a checkpoint this often when the log has grown; 0: never (a
# timer running `manage.py audit checkpoint` does it instead).
JMIRROR_AUDIT_CHECKPOINT_MINUTES = env_int(
    "JMIRROR_AUDIT_CHECKPOINT_MINUTES", 60, minimum=0, maximum=7 * 24 * 60
)

# The largest file the verify page accepts to hash (an export or a capture file), MiB.
JMIRROR_VERIFY_MAX_MB = env_int("JMIRROR_VERIFY_MAX_MB", 4096, minimum=1, maximum=1024 * 1024)

# A refused request for a case object is audited once per user (or visitor address),
# object and page in this many seconds; the repeats are counted into the next event
# (jmirror_web.audit.refusals).
JMIRROR_REFUSAL_AUDIT_SECONDS = env_int(
    "JMIRROR_REFUSAL_AUDIT_SECONDS", 600, minimum=1, maximum=24 * 3600
)

# Request bodies under `manage.py serve` (jmirror_web.server.bounded_requests), decided from a
# request's head before its body is read: a client that is not signed in may send this
# many bytes (the sign-in forms take under 1 KiB); a signed-in one
# DATA_UPLOAD_MAX_MEMORY_SIZE, or on the verify page JMIRROR_VERIFY_MAX_MB.
JMIRROR_ANONYMOUS_BODY_MAX_BYTES = env_int(
    "JMIRROR_ANONYMOUS_BODY_MAX_BYTES", 8192, minimum=1024, maximum=1024 * 1024
)
# A body that arrives slower than this, over any 10 s, is cut (408) and logged...
JMIRROR_BODY_MIN_BYTES_PER_SECOND = env_int(
    "JMIRROR_BODY_MIN_BYTES_PER_SECOND", 1024, minimum=0, maximum=1024 * 1024 * 1024
)
# ... and so is one that takes longer than this in all, or for a verify upload the second.
JMIRROR_BODY_TIMEOUT_SECONDS = env_int(
    "JMIRROR_BODY_TIMEOUT_SECONDS", 60, minimum=1, maximum=24 * 3600
)
JMIRROR_VERIFY_UPLOAD_TIMEOUT_SECONDS = env_int(
    "JMIRROR_VERIFY_UPLOAD_TIMEOUT_SECONDS", 3600, minimum=1, maximum=7 * 24 * 3600
)

REDIS_URL = env_str("REDIS_URL", "").strip()
CHANNEL_LAYERS = _channel_layers(REDIS_URL)
# `manage.py serve` (what ./run starts) runs the receiver inside the web process, so the
# in-process channel layer carries its live summaries: the default without Redis. With
# Redis, the receiver runs as its own process (`manage.py receive`), one or several.
EMBEDDED_RECEIVER = env_bool("JMIRROR_EMBEDDED_RECEIVER", not REDIS_URL)

# Sign-in throttling (django-axes): its backend comes first and refuses a locked-out
# sign-in before any password is checked; ModelBackend then does the real work. It needs
# the request, so every sign-in path (console, admin, DRF) passes one; a call without one
# is an error rather than an unthrottled sign-in.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("JMIRROR_LOGIN_FAILURE_LIMIT", 5, minimum=1, maximum=100)
AXES_COOLOFF_TIME = timedelta(
    minutes=env_int("JMIRROR_LOGIN_COOLOFF_MINUTES", 15, minimum=1, maximum=7 * 24 * 60)
)
# By the pair (username, address): guessing at one account from one place is stopped,
# while one mistyping colleague behind the same NAT does not lock out the others, and
# nobody can lock a user out from everywhere by failing on their name.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
# A failure during the lockout starts the cool-off again (axes' default, stated).
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = True
AXES_LOCKOUT_CALLABLE = "jmirror_web.security.lockout_response"
# Successful sign-ins are already in the audit log; axes need not keep a second record.
AXES_DISABLE_ACCESS_LOG = True
AXES_SENSITIVE_PARAMETERS = ["password", "csrfmiddlewaretoken"]
# No banner on every start (manage.py's output is read by scripts); lockouts are still
# logged as warnings, and audited.
AXES_VERBOSE = False

# Two-factor sign-in (TOTP, django-otp; jmirror_web.security.two_factor): optional for
# everyone; JMIRROR_REQUIRE_2FA=staff makes it compulsory for superusers and the li-admin,
# auditor and sysadmin roles, =all for every user.
JMIRROR_REQUIRE_2FA = env_choice("JMIRROR_REQUIRE_2FA", "off", ("off", "staff", "all"))
# The name authenticator apps show next to the user name.
OTP_TOTP_ISSUER = "jmirror-web"
# django-otp's default, stated: after n wrong codes a device takes none for 2**(n-1) s.
OTP_TOTP_THROTTLE_FACTOR = 1

# Content-Security-Policy (django-csp 4): no inline script or style anywhere, nothing
# from other origins, no framing. Browsers that implement CSP3 let 'self' cover ws:/wss:
# to the same host; the explicit sources below are for those that do not (older Safari).
# A CSP host-source cannot be an IPv6 literal (Chromium reports "ws://[::1]:*" as invalid
# on every page), so those hosts are left to 'self'.
_SOCKET_SCHEME = "wss" if HTTPS else "ws"
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "connect-src": [
            "'self'",
            *(
                f"{_SOCKET_SCHEME}://{'*' if host.startswith('.') else ''}{host}:*"
                for host in ALLOWED_HOSTS
                if host != "*" and not host.startswith("[")
            ),
        ],
        "frame-ancestors": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "object-src": ["'none'"],
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# The JSON API (jmirror_web.api). Token or session sign-in, never HTTP basic; JSON in
# and out only. Throttle counts live in the default cache, so they are per process.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first: an anonymous request is answered 401 with "WWW-Authenticate: Token".
        "rest_framework.authentication.TokenAuthentication",
        # Django's session, refused while it owes a two-factor code (tokens never do).
        "jmirror_web.security.two_factor.VerifiedSessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_PAGINATION_CLASS": "jmirror_web.api.pagination.RecordPagination",
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {"anon": "30/minute", "user": "600/minute"},
    "EXCEPTION_HANDLER": "jmirror_web.api.views.exception_handler",
}
# Django's default (2.5 MB), stated because it also bounds the API's JSON bodies: DRF
# (3.17.2 and later) parses them from request.body, which enforces it.
DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
# Form fields and files in one request. The admin's bulk actions post one field per
# selected row; nothing here takes more than a few files at once.
DATA_UPLOAD_MAX_NUMBER_FIELDS = 1000
DATA_UPLOAD_MAX_NUMBER_FILES = 10
# Uploaded files above this go to a temporary file instead of memory. This is not a cap on
# an upload's size: each page that takes a file bounds it itself.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440

LANGUAGE_CODE = "en-us"
# Evidence timestamps are UTC everywhere; the browser shows local time on hover only.
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
# Dates as the console writes them (2026-12-06 17:04:05 UTC), in the admin too.
FORMAT_MODULE_PATH = ["jmirror_web.formats"]

LOGIN_URL = "console:login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "console:login"

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

_LOG_LEVEL = env_choice(
    "JMIRROR_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "filters": {"refusals": {"()": "jmirror_web.log_filters.ExpectedRefusalsOnOneLine"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["refusals"],
        }
    },
    "root": {"handlers": ["console"], "level": _LOG_LEVEL},
    # The S3 client's own INFO lines ("Found credentials in environment variables" at
    # each start) say nothing the product does not; its warnings and DEBUG still show.
    "loggers": {
        name: {"level": "WARNING" if _LOG_LEVEL != "DEBUG" else "DEBUG"}
        for name in ("botocore", "boto3", "s3transfer")
    },
}
