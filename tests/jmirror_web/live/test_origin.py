"""The websocket's origin check (jmirror_web.live.origin) against the real ASGI
application: only a page of this very site — scheme, host and port — or of a trusted
origin may open the live feed with the user's cookie, and every refusal is audited."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User

from jmirror_web.audit.models import AuditEvent
from jmirror_web.intercepts.access import Role
from tests.factories import make_user
from tests.jmirror_web.live.helpers import FAST_HASHERS, communicator, ensure_role_groups, sign_in

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def analyst(settings: Any) -> tuple[User, str]:
    settings.PASSWORD_HASHERS = FAST_HASHERS
    settings.ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]", "li.example.net"]
    ensure_role_groups()
    user = make_user(Role.ANALYST)
    return user, sign_in(user)[1]


async def handshake(
    cookie: str | None,
    origin: str | None,
    host: str | None,
    *,
    scheme: str | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> bool:
    """Whether the handshake is accepted (a refused one is closed before accept: 403)."""
    socket = communicator(
        cookie,
        origin=origin.encode() if origin is not None else None,
        host=host.encode() if host is not None else None,
    )
    socket.scope["headers"] += headers or []
    socket.scope["client"] = ["198.51.100.20", 50000]
    if scheme is not None:
        socket.scope["scheme"] = scheme
    connected, _ = await socket.connect(timeout=5)
    await socket.disconnect(timeout=5)
    return bool(connected)


def refusals() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action="live.connect_refused").order_by("id"))


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        ("http://localhost", "localhost"),
        ("http://127.0.0.1:8000", "127.0.0.1:8000"),
        ("http://[::1]:8000", "[::1]:8000"),
        # Default ports, written or not, are the same origin.
        ("http://localhost:80", "localhost"),
        ("http://localhost", "localhost:80"),
        ("HTTP://LocalHost:8000", "localhost:8000"),
    ],
)
async def test_the_sites_own_origin_is_accepted(
    analyst: tuple[User, str], origin: str, host: str
) -> None:
    assert await handshake(analyst[1], origin, host)


@pytest.mark.parametrize(
    ("origin", "host", "reason"),
    [
        # Another port of the same host: another service, another origin.
        ("http://127.0.0.1:9999", "127.0.0.1:8000", "foreign_origin"),
        ("http://127.0.0.1:9999", "127.0.0.1", "foreign_origin"),
        ("http://localhost:8001", "localhost:8000", "foreign_origin"),
        # Another scheme of the same host and port.
        ("https://127.0.0.1", "127.0.0.1", "foreign_origin"),
        ("https://localhost:8000", "localhost:8000", "foreign_origin"),
        # Another host.
        ("http://evil.example", "localhost", "foreign_origin"),
        ("http://localhost.evil.example", "localhost", "foreign_origin"),
        # A Host that is not one of ALLOWED_HOSTS (DNS rebinding) is no site origin.
        ("http://rebound.example:8000", "rebound.example:8000", "foreign_origin"),
        # No Origin at all, or an opaque one.
        (None, "localhost", "no_origin"),
        ("null", "localhost", "bad_origin"),
        ("http://localhost/path", "localhost", "bad_origin"),
        ("http://user@localhost", "localhost", "bad_origin"),
        ("ftp://localhost", "localhost", "bad_origin"),
        ("http://localhost:99999", "localhost", "bad_origin"),
        # No Host: nothing to compare with.
        ("http://localhost", None, "foreign_origin"),
    ],
)
async def test_any_other_origin_is_refused_and_audited_with_the_cookies_user(
    analyst: tuple[User, str], origin: str | None, host: str | None, reason: str
) -> None:
    user, cookie = analyst
    assert not await handshake(cookie, origin, host)
    [event] = await sync_to_async(refusals)()
    assert event.actor_id == user.pk
    assert event.source_address == "198.51.100.20"
    assert event.details["reason"] == reason
    assert event.details["origin"] == (origin or "")


async def test_a_refused_origin_is_audited_once_per_window(analyst: tuple[User, str]) -> None:
    _, cookie = analyst
    for _ in range(5):
        assert not await handshake(cookie, "http://127.0.0.1:9999", "127.0.0.1:8000")
    assert len(await sync_to_async(refusals)()) == 1


async def test_a_visitor_without_a_cookie_is_refused_by_address(analyst: tuple[User, str]) -> None:
    assert not await handshake(None, "https://127.0.0.1", "127.0.0.1")
    [event] = await sync_to_async(refusals)()
    assert event.actor_id is None
    assert event.source_address == "198.51.100.20"


async def test_wss_is_the_https_origin(analyst: tuple[User, str]) -> None:
    _, cookie = analyst
    assert await handshake(cookie, "https://localhost", "localhost", scheme="wss")
    assert await handshake(cookie, "https://localhost:443", "localhost", scheme="wss")
    assert not await handshake(cookie, "http://localhost", "localhost", scheme="wss")


async def test_behind_a_proxy_its_forwarded_proto_decides_the_scheme(
    analyst: tuple[User, str], settings: Any
) -> None:
    _, cookie = analyst
    https = [(b"x-forwarded-proto", b"https")]
    # Not behind a proxy: a client's X-Forwarded-Proto is not believed.
    settings.BEHIND_PROXY = False
    assert not await handshake(cookie, "https://li.example.net", "li.example.net", headers=https)
    settings.BEHIND_PROXY = True
    assert await handshake(cookie, "https://li.example.net", "li.example.net", headers=https)
    assert not await handshake(cookie, "http://li.example.net", "li.example.net", headers=https)
    http = [(b"x-forwarded-proto", b"http")]
    assert await handshake(cookie, "http://li.example.net", "li.example.net", headers=http)
    assert not await handshake(cookie, "https://li.example.net", "li.example.net", headers=http)


@pytest.mark.parametrize(
    ("origin", "accepted"),
    [
        ("https://li.example.net", True),
        ("https://li.example.net:443", True),
        ("https://li.example.net:8443", False),
        ("http://li.example.net", False),
        ("https://other.example.net", False),
    ],
)
async def test_a_trusted_origin_is_accepted_by_scheme_host_and_port(
    analyst: tuple[User, str], settings: Any, origin: str, accepted: bool
) -> None:
    # A proxy that rewrites Host: the browser's origin is not the Host Django sees.
    settings.CSRF_TRUSTED_ORIGINS = ["https://li.example.net"]
    assert await handshake(analyst[1], origin, "localhost:8000") is accepted


@pytest.mark.parametrize(
    ("origin", "accepted"),
    [
        ("https://example.net", True),
        ("https://li.example.net", True),
        ("https://a.b.example.net:443", True),
        ("https://li.example.net:8443", False),
        ("http://li.example.net", False),
        ("https://badexample.net", False),
        ("https://example.net.evil.example", False),
    ],
)
async def test_a_wildcard_trusted_origin_covers_the_domain_and_its_subdomains(
    analyst: tuple[User, str], settings: Any, origin: str, accepted: bool
) -> None:
    settings.CSRF_TRUSTED_ORIGINS = ["https://*.example.net"]
    assert await handshake(analyst[1], origin, "localhost:8000") is accepted
