"""How large a request body may be: decided from the request's head, before its body.

Three caps, by route and by who asks:

- a client that is not signed in: ``JMIRROR_ANONYMOUS_BODY_MAX_BYTES`` (8 KiB), enough
  for the sign-in, admin sign-in and two-factor forms (each under 1 KiB);
- a signed-in user (a live session, two-factor step done; or an API token on the API):
  ``DATA_UPLOAD_MAX_MEMORY_SIZE``, Django's own limit for a form or JSON body;
- a signed-in user's multipart ``POST`` to the verify page: ``JMIRROR_VERIFY_MAX_MB`` (and
  the form's other fields), the one large body the product takes. The server hashes it
  as it streams in (:class:`jmirror_web.exports.verification.StreamedVerifyUpload`).

"Signed in" is looked up in the session store (the cookie must name a live session of an
active user whose password has not changed since, see
:func:`jmirror_web.live.rights.signed_in_user`) or the API's token table, never taken
from the presence of a cookie. The lookup needs the database, so it is done only when a
request could need more than the anonymous cap and carries a credential at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from http.cookies import SimpleCookie
from importlib import import_module
from typing import Any, Final

from django.conf import settings
from django.contrib.auth import SESSION_KEY, get_user_model
from django.urls import reverse

# Room for what the verify form carries besides the file: boundaries, part headers, the
# CSRF token and the SHA-256 field.
MULTIPART_ENVELOPE: Final = 64 * 1024
API_PREFIX: Final = "/api/"
_TOKEN = re.compile(r"^Token\s+(\S{1,128})\s*$")
# A body must bring JMIRROR_BODY_MIN_BYTES_PER_SECOND over each window this long.
RATE_WINDOW_SECONDS: Final = 10.0


class Who(Enum):
    ANONYMOUS = "anonymous"
    SIGNED_IN = "signed in"  # a live session (the pages, and the API)
    API_TOKEN = "API token"  # noqa: S105  # the API only, not a password


@dataclass(frozen=True)
class Head:
    """What a body's cap is decided on: the request line and a few headers."""

    method: str
    path: str
    content_type: str = ""
    cookie: str = ""
    authorization: str = ""

    @property
    def session_key(self) -> str | None:
        if not self.cookie:
            return None
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(self.cookie)
        except Exception:  # http.cookies raises CookieError on malformed input
            return None
        morsel = jar.get(settings.SESSION_COOKIE_NAME)
        if morsel is None or not 0 < len(morsel.value) <= 64:
            return None
        return morsel.value

    @property
    def api_token(self) -> str | None:
        if not self.path.startswith(API_PREFIX):
            return None
        match = _TOKEN.match(self.authorization)
        return match.group(1) if match else None

    @property
    def has_credentials(self) -> bool:
        return self.session_key is not None or self.api_token is not None

    @property
    def is_verify_upload(self) -> bool:
        return (
            self.method == "POST"
            and self.path == verify_path()
            and self.content_type.lower().startswith("multipart/form-data")
        )


@dataclass(frozen=True)
class BodyLimit:
    limit: int  # bytes
    streamed_verify: bool  # hashed while it arrives, never stored
    who: Who


def verify_path() -> str:
    return reverse("exports:verify")


def anonymous_limit() -> int:
    return int(settings.JMIRROR_ANONYMOUS_BODY_MAX_BYTES)


def signed_in_limit() -> int:
    return int(settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 0) or anonymous_limit()


def verify_limit() -> int:
    return int(settings.JMIRROR_VERIFY_MAX_MB) * 1024 * 1024 + MULTIPART_ENVELOPE


def largest_body() -> int:
    """The largest body any request may send (the cap for a server that cannot tell who
    asks before the body)."""
    return max(verify_limit(), signed_in_limit(), anonymous_limit())


def limit_for(head: Head, who: Who) -> BodyLimit:
    if who is Who.SIGNED_IN and head.is_verify_upload:
        return BodyLimit(verify_limit(), True, who)
    if who is not Who.ANONYMOUS:
        return BodyLimit(signed_in_limit(), False, who)
    return BodyLimit(anonymous_limit(), False, who)


def needs_lookup(head: Head, declared: int | None) -> bool:
    """Whether the cap depends on who asks: the body may be over the anonymous cap (or
    has no declared length) and the request carries a credential to look up."""
    if declared is not None and declared <= anonymous_limit():
        return False
    return head.has_credentials


def who_asks(head: Head) -> Who:
    """Looks the request's credentials up (database; call it from a thread)."""
    from jmirror_web.live.rights import signed_in_user

    session_key = head.session_key
    if session_key is not None:
        engine = import_module(settings.SESSION_ENGINE)
        data = engine.SessionStore(session_key).load()  # empty if gone; never creates one
        try:
            user_pk = get_user_model()._meta.pk.to_python(data.get(SESSION_KEY))
        except Exception:  # a session written by something else: not a sign-in
            user_pk = None
        if user_pk is not None and signed_in_user(session_key, user_pk) is not None:
            return Who.SIGNED_IN
    token = head.api_token
    if token is not None:
        from rest_framework.authtoken.models import Token

        if Token.objects.filter(key=token, user__is_active=True).exists():
            return Who.API_TOKEN
    return Who.ANONYMOUS


def head_of(headers: Any, method: str, path: str) -> Head:
    """A :class:`Head` from ``(name, value)`` byte pairs (an ASGI scope's headers)."""
    found: dict[bytes, str] = {}
    for name, value in headers:
        key = bytes(name).lower()
        if key in (b"content-type", b"cookie", b"authorization") and key not in found:
            found[key] = bytes(value).decode("latin-1")
    return Head(
        method=method,
        path=path,
        content_type=found.get(b"content-type", ""),
        cookie=found.get(b"cookie", ""),
        authorization=found.get(b"authorization", ""),
    )


class BodyWatch:
    """Whether a body is too slow: under ``floor`` bytes per second over a window of
    :data:`RATE_WINDOW_SECONDS`, or longer than ``total`` seconds in all."""

    def __init__(self, started: float, floor: int, total: float) -> None:
        self.started = started
        self.floor = floor
        self.total = total
        self.window_started = started
        self.window_bytes = 0

    def progress(self, count: int) -> None:
        self.window_bytes += count

    def verdict(self, now: float) -> str | None:
        if now - self.started > self.total:
            return f"it took longer than {self.total:.0f} s"
        if now - self.window_started >= RATE_WINDOW_SECONDS:
            rate = self.window_bytes / (now - self.window_started)
            if rate < self.floor:
                return f"it arrived at {rate:.0f} bytes/s, under {self.floor}"
            self.window_started = now
            self.window_bytes = 0
        return None
