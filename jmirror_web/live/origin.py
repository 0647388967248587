"""The websocket's origin check: a handshake is accepted only from a page of this site.

A websocket is not covered by the same-origin policy or by CSRF tokens, and the browser
sends the session cookie with it whatever page opened it; the ``Origin`` header is the
only thing that says which page that was. Channels' ``AllowedHostsOriginValidator``
compares host names only, so a page served by any other port or scheme of the same host
(``http://127.0.0.1:9999``, ``https://127.0.0.1``) could read a signed-in user's live
feed. Here the whole origin must match — scheme, host and port, with the default ports
(http 80, https 443) written or not:

- the site's own origin, the one the handshake was made to: the ``Host`` header (which
  must be one of ``ALLOWED_HOSTS``, as Django requires of every request) with the scheme
  of the connection — ``wss`` is https, ``ws`` http, and with ``JMIRROR_BEHIND_PROXY``
  the proxy's ``X-Forwarded-Proto``, read as Django reads it for ``request.is_secure()``;
- or one of ``DJANGO_CSRF_TRUSTED_ORIGINS``, whose ``https://*.example.net`` form
  matches ``example.net`` and its subdomains, as Django's CSRF check does.

A handshake without an ``Origin``, or with ``null`` (sandboxed frames, ``file:`` pages,
redirects across origins), is refused: browsers always send one, so its absence means
a client that is not a browser, and the only reason to accept such a client carrying a
session cookie would be to let a stolen cookie in. Non-browser clients use the API with
a token. A refused handshake is answered 403 before anything of the consumer runs, and
audited as ``live.connect_refused`` (rate-limited, :mod:`jmirror_web.audit.refusals`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from channels.db import database_sync_to_async
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host

from jmirror_web.live import rights

logger = logging.getLogger(__name__)

DEFAULT_PORTS: Final = {"http": 80, "https": 443}
MAX_ORIGIN_AUDITED: Final = 200  # characters of a refused Origin written to the log


@dataclass(frozen=True)
class Origin:
    """A web origin: scheme, lower-case host (IPv6 without brackets) and port, the
    default port filled in."""

    scheme: str
    host: str
    port: int


def parse_origin(text: str) -> Origin | None:
    """``scheme://host[:port]`` as an :class:`Origin`; None for anything else ("null",
    another scheme, a path, user info, a bad port)."""
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    if parts.path or parts.query or parts.fragment or "@" in parts.netloc:
        return None
    return Origin(parts.scheme, parts.hostname.lower(), port or DEFAULT_PORTS[parts.scheme])


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    """The first value of a header, or None. Latin-1, as HTTP headers are."""
    for header, value in scope.get("headers", ()):
        if header.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _scheme(scope: dict[str, Any]) -> str:
    if settings.BEHIND_PROXY:
        forwarded = _header(scope, b"x-forwarded-proto")
        if forwarded is not None:
            # As Django's HttpRequest.scheme with SECURE_PROXY_SSL_HEADER: the first value.
            return "https" if forwarded.split(",", 1)[0].strip() == "https" else "http"
    return "https" if scope.get("scheme") in ("wss", "https") else "http"


def site_origin(scope: dict[str, Any]) -> Origin | None:
    """The origin the handshake was made to, or None when its Host is missing or not
    one of ALLOWED_HOSTS (DNS rebinding: a foreign name pointed at this host)."""
    host = _header(scope, b"host")
    if not host:
        return None
    domain, _ = split_domain_port(host)
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return None
    return parse_origin(f"{_scheme(scope)}://{host}")


def _trusted(origin: Origin, pattern: str) -> bool:
    wildcard = "://*." in pattern
    trusted = parse_origin(pattern.replace("://*.", "://", 1) if wildcard else pattern)
    if trusted is None or (trusted.scheme, trusted.port) != (origin.scheme, origin.port):
        return False
    if wildcard:
        return origin.host == trusted.host or origin.host.endswith("." + trusted.host)
    return origin.host == trusted.host


def refusal(scope: dict[str, Any]) -> str | None:
    """Why the handshake's Origin is refused, or None when it is this site's."""
    text = _header(scope, b"origin")
    if text is None:
        return "no_origin"
    origin = parse_origin(text.strip())
    if origin is None:
        return "bad_origin"  # "null" included
    if origin == site_origin(scope):
        return None
    if any(_trusted(origin, pattern) for pattern in settings.CSRF_TRUSTED_ORIGINS):
        return None
    return "foreign_origin"


class SiteOriginValidator:
    """ASGI middleware for the websocket: refuses (403, audited) a handshake whose Origin
    is not this site's. It runs inside the auth middleware so that the audit event names
    the user whose cookie the foreign page sent."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] != "websocket":
            raise ValueError("SiteOriginValidator only checks websocket handshakes")
        reason = refusal(scope)
        if reason is None:
            return await self.application(scope, receive, send)
        user = scope.get("user")
        actor = user if user is not None and user.is_authenticated else None
        origin = (_header(scope, b"origin") or "")[:MAX_ORIGIN_AUDITED]
        await database_sync_to_async(rights.refuse_connection)(
            actor, rights.client_address(scope), reason, origin=origin
        )
        return await WebsocketDenier()(scope, receive, send)
