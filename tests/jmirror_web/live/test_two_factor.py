"""The live websocket and two-factor sign-in: no Django middleware runs for a websocket,
so the consumer itself refuses a session that owes a code, and audits the refusal."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.plugins.otp_totp.models import TOTPDevice

from jmirror_web.audit.models import AuditEvent
from jmirror_web.intercepts.access import Role
from jmirror_web.live.consumers import LiveConsumer
from tests.factories import make_user
from tests.jmirror_web.live.helpers import (
    FAST_HASHERS,
    closed_with,
    communicator,
    ensure_role_groups,
    live,
    request,
    sign_in,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def roles(settings: Any) -> None:
    settings.PASSWORD_HASHERS = FAST_HASHERS
    ensure_role_groups()


def enrolled(user: User) -> TOTPDevice:
    device: TOTPDevice = TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
    return device


def verified_cookie(user: User, device: TOTPDevice) -> str:
    """A session as the sign-in page makes it after a right code."""
    client, cookie = sign_in(user)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = device.persistent_id
    session.save()
    return cookie


def refusals() -> list[dict[str, Any]]:
    return [
        {"actor": event.actor_name, **event.details}
        for event in AuditEvent.objects.filter(action="live.connect_refused").order_by("id")
    ]


async def refused(cookie: str) -> None:
    socket = communicator(cookie)
    connected, _ = await socket.connect(timeout=5)
    assert connected  # accepted, then closed with a code the page understands
    assert await closed_with(socket) == 4401
    await socket.disconnect()


async def test_a_session_not_signed_in_with_the_code_is_refused_and_audited():
    user = await sync_to_async(make_user)(Role.ANALYST, username="ana")
    await sync_to_async(enrolled)(user)
    _, cookie = await sync_to_async(sign_in)(user)  # no code given in this session

    await refused(cookie)

    assert await sync_to_async(refusals)() == [
        {
            "actor": "ana",
            "reason": "two_factor_sign_in_again",
            "where": "live.connect.two_factor_sign_in_again",
        }
    ]


async def test_a_session_signed_in_with_the_code_is_accepted():
    user = await sync_to_async(make_user)(Role.ANALYST)
    device = await sync_to_async(enrolled)(user)
    cookie = await sync_to_async(verified_cookie)(user, device)

    async with live(cookie) as socket:
        assert await request(socket, action="ping") == {"type": "pong"}
    assert await sync_to_async(refusals)() == []


async def test_a_session_verified_by_another_users_device_is_refused():
    user = await sync_to_async(make_user)(Role.ANALYST)
    await sync_to_async(enrolled)(user)
    someone_else = await sync_to_async(enrolled)(await sync_to_async(make_user)(Role.ANALYST))
    cookie = await sync_to_async(verified_cookie)(user, someone_else)

    await refused(cookie)


async def test_required_two_factor_refuses_a_user_in_scope_without_a_device(settings: Any):
    settings.JMIRROR_REQUIRE_2FA = "staff"
    admin = await sync_to_async(make_user)(Role.LI_ADMIN, username="ana")
    analyst = await sync_to_async(make_user)(Role.ANALYST)
    _, admin_cookie = await sync_to_async(sign_in)(admin)
    _, analyst_cookie = await sync_to_async(sign_in)(analyst)

    await refused(admin_cookie)
    async with live(analyst_cookie) as socket:
        assert await request(socket, action="ping") == {"type": "pong"}

    assert await sync_to_async(refusals)() == [
        {"actor": "ana", "reason": "two_factor_enrol", "where": "live.connect.two_factor_enrol"}
    ]


async def test_a_device_set_up_elsewhere_closes_an_open_unverified_connection(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setattr(LiveConsumer, "recheck_interval", 0.2)
    user = await sync_to_async(make_user)(Role.ANALYST)
    _, cookie = await sync_to_async(sign_in)(user)

    async with live(cookie) as socket:
        assert await request(socket, action="ping") == {"type": "pong"}
        await sync_to_async(enrolled)(user)
        assert await closed_with(socket) == 4401
