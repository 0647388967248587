"""The live websocket against the real ASGI application (docs/live-protocol.md)."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import Client

from jmirror_web.audit.models import AuditEvent
from jmirror_web.intercepts.access import Role
from jmirror_web.intercepts.models import Case, CaseAssignment, Intercept, Session
from jmirror_web.live.buffer import MAX_ROWS, packet_row
from jmirror_web.live.consumers import LiveConsumer
from jmirror_web.live.protocol import MAX_SUBSCRIPTIONS, MESSAGE_BURST
from tests.factories import assign, make_case, make_intercept, make_session, make_user
from tests.jmirror_web.live.helpers import (
    FAST_HASHERS,
    closed_with,
    communicator,
    ensure_role_groups,
    health,
    live,
    publish,
    publish_health,
    request,
    sign_in,
    subscribe,
    summary,
)

pytestmark = pytest.mark.django_db(transaction=True)


@dataclass
class World:
    case: Case
    intercept: Intercept
    session: Session
    other_case: Case
    other_session: Session
    users: dict[str, User]
    clients: dict[str, Client]
    cookies: dict[str, str]


@pytest.fixture
def world(settings: Any) -> World:
    settings.PASSWORD_HASHERS = FAST_HASHERS
    ensure_role_groups()
    case = make_case()
    intercept = make_intercept(case)
    session = make_session(intercept)
    other_case = make_case()
    other_session = make_session(make_intercept(other_case))
    users = {
        "analyst": make_user(Role.ANALYST),
        "other_analyst": make_user(Role.ANALYST),
        "li_admin": make_user(Role.LI_ADMIN),
        "auditor": make_user(Role.AUDITOR),
        "sysadmin": make_user(Role.SYSADMIN),
    }
    assign(users["analyst"], case)
    assign(users["other_analyst"], other_case)
    # Assigned, yet an auditor and a system administrator see no case data.
    assign(users["auditor"], case)
    assign(users["sysadmin"], case)
    clients, cookies = {}, {}
    for name, user in users.items():
        clients[name], cookies[name] = sign_in(user)
    return World(case, intercept, session, other_case, other_session, users, clients, cookies)


@pytest.fixture(autouse=True)
async def empty_channel_layer():
    yield
    await get_channel_layer().flush()


async def updates(socket: WebsocketCommunicator, timeout: float = 3) -> dict[str, Any]:
    message: dict[str, Any] = await socket.receive_json_from(timeout=timeout)
    assert message["type"] == "updates", message
    return message


async def ack(socket: WebsocketCommunicator, message: dict[str, Any]) -> None:
    await socket.send_json_to({"action": "ack", "seq": message["seq"]})


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


# Connecting ---------------------------------------------------------------------------


async def test_an_anonymous_visitor_is_closed_with_4401():
    socket = communicator(cookie=None)
    connected, _ = await socket.connect(timeout=5)
    assert connected
    assert await closed_with(socket) == 4401
    await socket.disconnect()


async def test_a_forged_session_cookie_is_closed_with_4401(world: World):
    socket = communicator(cookie="not-a-session-key")
    await socket.connect(timeout=5)
    assert await closed_with(socket) == 4401
    await socket.disconnect()


@pytest.mark.parametrize("origin", [b"http://evil.example", b"null", None])
async def test_a_foreign_or_missing_origin_is_refused_at_the_handshake(
    world: World, origin: bytes | None
):
    socket = communicator(world.cookies["analyst"], origin=origin)
    connected, _ = await socket.connect(timeout=5)
    assert not connected


async def test_ping_is_answered(world: World):
    async with live(world.cookies["analyst"]) as socket:
        assert await request(socket, action="ping") == {"type": "pong"}


# Subscribing: per role and case -------------------------------------------------------

ALLOWED = "subscribed"
FORBIDDEN = "forbidden"


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        # (session, intercept, case, other case's session, dashboard, health)
        ("analyst", [ALLOWED, ALLOWED, ALLOWED, FORBIDDEN, ALLOWED, FORBIDDEN]),
        ("other_analyst", [FORBIDDEN, FORBIDDEN, FORBIDDEN, ALLOWED, ALLOWED, FORBIDDEN]),
        ("li_admin", [ALLOWED, ALLOWED, ALLOWED, ALLOWED, ALLOWED, FORBIDDEN]),
        ("auditor", [FORBIDDEN, FORBIDDEN, FORBIDDEN, FORBIDDEN, ALLOWED, FORBIDDEN]),
        ("sysadmin", [FORBIDDEN, FORBIDDEN, FORBIDDEN, FORBIDDEN, ALLOWED, ALLOWED]),
    ],
)
async def test_subscriptions_are_allowed_per_role_and_case(
    world: World, user: str, expected: list[str]
):
    streams: list[tuple[str, int | None]] = [
        ("session", world.session.pk),
        ("intercept", world.intercept.pk),
        ("case", world.case.pk),
        ("session", world.other_session.pk),
        ("dashboard", None),
        ("health", None),
    ]
    answers = []
    async with live(world.cookies[user]) as socket:
        for stream, object_id in streams:
            reply = await subscribe(socket, stream, object_id)
            assert reply["stream"] == stream
            assert reply["id"] == object_id
            answers.append(reply["type"] if reply["type"] == ALLOWED else reply["code"])
    assert answers == expected


async def test_a_missing_object_and_a_forbidden_one_are_refused_alike(world: World):
    async with live(world.cookies["other_analyst"]) as socket:
        forbidden = await subscribe(socket, "case", world.case.pk)
        missing = await subscribe(socket, "case", 10**9)
    assert forbidden.pop("id") == world.case.pk
    assert missing.pop("id") == 10**9
    assert forbidden == missing
    assert forbidden["code"] == "forbidden"


async def test_subscriptions_and_refusals_are_audited(world: World):
    async with live(world.cookies["analyst"]) as socket:
        await subscribe(socket, "session", world.session.pk)
        await subscribe(socket, "case", world.other_case.pk)
        await subscribe(socket, "intercept", 10**9)

    subscribed = await sync_to_async(events)("live.subscribe")
    refused = await sync_to_async(events)("live.subscribe_refused")
    analyst = world.users["analyst"]
    assert [(e.actor_id, e.object_type, e.object_id) for e in subscribed] == [
        (analyst.pk, "intercepts.Session", str(world.session.pk))
    ]
    assert subscribed[0].details == {"stream": "session", "id": world.session.pk, "content": True}
    assert [(e.actor_id, e.object_type, e.object_id, e.details) for e in refused] == [
        (
            analyst.pk,
            "intercepts.Case",
            str(world.other_case.pk),
            {
                "stream": "case",
                "id": world.other_case.pk,
                "reason": "forbidden",
                "where": "live.case",
            },
        ),
        # A missing object is named by the id asked for.
        (
            analyst.pk,
            "intercepts.Intercept",
            str(10**9),
            {"stream": "intercept", "id": 10**9, "reason": "forbidden", "where": "live.intercept"},
        ),
    ]


async def test_unsubscribing_stops_the_feed(world: World):
    async with live(world.cookies["analyst"]) as socket:
        await subscribe(socket, "session", world.session.pk)
        await socket.send_json_to(
            {"action": "unsubscribe", "stream": "session", "id": world.session.pk}
        )
        await request(socket, action="ping")  # the unsubscription has been handled
        await publish(summary(world.session))
        assert await socket.receive_nothing(timeout=0.5)


# Bad client messages ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ('{"action": "ping", "pad": "' + "x" * 5000 + '"}', "too_large"),
        ('{"action": "ping", "pad": "' + "\u00e9" * 2100 + '"}', "too_large"),  # 4200 bytes
        ("{not json", "bad_request"),
        ("[1, 2]", "bad_request"),
        ("[" * 3000 + "]" * 3000, "too_large"),
        ("[" * 2000 + "]" * 2000, "bad_request"),  # deeper than the parser recurses
        ('{"action": "subscribe", "stream": "case", "id": NaN}', "bad_request"),
        ('{"action": "dance"}', "bad_request"),
        ('{"action": "ping", "extra": 1}', "bad_request"),
        ('{"action": "subscribe", "stream": "everything"}', "bad_request"),
        ('{"action": "subscribe", "stream": "case", "id": "5"}', "bad_request"),
        ('{"action": "subscribe", "stream": "case", "id": true}', "bad_request"),
        ('{"action": "subscribe", "stream": "case", "id": 0}', "bad_request"),
        ('{"action": "subscribe", "stream": "case"}', "bad_request"),
        ('{"action": "subscribe", "stream": "health", "id": 3}', "bad_request"),
        ('{"action": "subscribe", "stream": "case", "id": 1, "id": 2}', "bad_request"),
        ('{"action": "ack", "seq": 1}', "bad_request"),  # nothing was sent
    ],
)
async def test_bad_messages_are_answered_with_an_error(world: World, frame: str, code: str):
    async with live(world.cookies["analyst"]) as socket:
        reply = await request_raw(socket, frame)
        assert reply["type"] == "error"
        assert reply["code"] == code
        # The connection goes on.
        assert await request(socket, action="ping") == {"type": "pong"}


async def request_raw(socket: WebsocketCommunicator, frame: str) -> dict[str, Any]:
    await socket.send_to(text_data=frame)
    reply: dict[str, Any] = await socket.receive_json_from(timeout=5)
    return reply


async def test_binary_frames_are_refused(world: World):
    async with live(world.cookies["analyst"]) as socket:
        await socket.send_to(bytes_data=b'{"action": "ping"}')
        reply = await socket.receive_json_from(timeout=5)
        assert (reply["type"], reply["code"]) == ("error", "bad_request")


async def test_the_tenth_bad_message_closes_the_connection_with_4400(world: World):
    async with live(world.cookies["analyst"]) as socket:
        for _ in range(9):
            assert (await request_raw(socket, "nope"))["code"] == "bad_request"
        await socket.send_to(text_data="nope")
        assert (await socket.receive_json_from(timeout=5))["code"] == "bad_request"
        assert await closed_with(socket) == 4400


async def test_more_than_twenty_subscriptions_are_refused(world: World):
    cases = await sync_to_async(lambda: [make_case().pk for _ in range(MAX_SUBSCRIPTIONS + 1)])()
    async with live(world.cookies["li_admin"]) as socket:
        for case_id in cases[:MAX_SUBSCRIPTIONS]:
            assert (await subscribe(socket, "case", case_id))["type"] == "subscribed"
        reply = await subscribe(socket, "case", cases[-1])
        assert (reply["type"], reply["code"]) == ("error", "too_many")
        # Subscribing again to one already held is not one more.
        assert (await subscribe(socket, "case", cases[0]))["type"] == "subscribed"
    refused = await sync_to_async(events)("live.subscribe_refused")
    assert [e.details["reason"] for e in refused] == ["too_many"]


async def test_a_message_flood_is_refused(world: World):
    async with live(world.cookies["analyst"]) as socket:
        for _ in range(MESSAGE_BURST + 5):
            await socket.send_json_to({"action": "ping"})
        replies = [await socket.receive_json_from(timeout=5) for _ in range(MESSAGE_BURST + 5)]
        assert {"type": "error", "code": "too_many", "message": "too many messages; slow down"} in (
            replies
        )


# Updates ------------------------------------------------------------------------------


async def test_a_summary_reaches_the_subscribed_session_as_updates(world: World):
    async with live(world.cookies["analyst"]) as socket:
        await subscribe(socket, "session", world.session.pk)
        sent = summary(world.session, packets=3, rows=2)
        await publish(sent)
        message = await updates(socket)
    assert message["seq"] == 1
    assert message["dropped"] == 0
    [item] = message["items"]
    assert (item["stream"], item["id"]) == ("session", world.session.pk)
    relayed = item["session"]
    assert "type" not in relayed
    assert relayed["packets"] == 3
    assert relayed["bytes"] == 300
    assert relayed["session_id"] == world.session.pk
    assert relayed["case_id"] == world.case.pk
    assert relayed["packets_per_second"] == 12.0
    # The analyst has the content right; the exact time as a string is the server's.
    assert relayed["recent"] == [
        {**row, "time_ns_text": str(row["time_ns"])} for row in sent["recent"]
    ]


async def test_a_case_and_one_of_its_sessions_each_get_the_summary_once(world: World):
    async with live(world.cookies["analyst"]) as socket:
        await subscribe(socket, "case", world.case.pk)
        await subscribe(socket, "session", world.session.pk)
        await subscribe(socket, "dashboard")
        await publish(summary(world.session, packets=5))
        message = await updates(socket)
    by_stream = {item["stream"]: item for item in message["items"]}
    assert len(message["items"]) == 3
    assert by_stream["case"]["id"] == world.case.pk
    assert by_stream["case"]["session"]["packets"] == 5
    assert by_stream["session"]["session"]["packets"] == 5
    dashboard = by_stream["dashboard"]
    assert dashboard["id"] == world.case.pk
    assert dashboard["case"]["case_id"] == world.case.pk
    assert dashboard["case"]["packets"] == 5
    assert "recent" not in dashboard["case"]


async def test_the_dashboard_carries_only_the_users_cases(world: World):
    async with live(world.cookies["analyst"]) as socket:
        await subscribe(socket, "dashboard")
        await publish(summary(world.other_session))
        await publish(summary(world.session, packets=2))
        message = await updates(socket)
        assert [item["id"] for item in message["items"]] == [world.case.pk]
        assert await socket.receive_nothing(timeout=0.3)


async def test_a_burst_is_coalesced_into_a_few_bounded_updates(world: World):
    async with live(world.cookies["analyst"]) as socket:
        await subscribe(socket, "session", world.session.pk)
        for number in range(100):
            await publish(summary(world.session, packets=1, rows=1))
            if number % 10 == 9:
                await asyncio.sleep(0)  # let the consumer drain its channel (capacity 100)
        received: list[dict[str, Any]] = []
        while sum(i["session"]["packets"] for m in received for i in m["items"]) < 100:
            received.append(await updates(socket))
            await ack(socket, received[-1])
    assert len(received) <= 5
    rows = [len(item["session"]["recent"]) for m in received for item in m["items"]]
    assert max(rows) <= MAX_ROWS
    assert sum(rows) + sum(m["dropped"] for m in received) == 100
    assert sum(m["dropped"] for m in received) >= 100 - 2 * MAX_ROWS


async def test_updates_come_at_most_ten_times_a_second(world: World):
    async with live(world.cookies["analyst"]) as socket:
        await subscribe(socket, "session", world.session.pk)
        stamps: list[float] = []
        start = time.monotonic()
        while time.monotonic() - start < 1.0:
            await publish(summary(world.session))
            # Not receive_json_from with a short timeout: a timeout cancels the application.
            while not await socket.receive_nothing(timeout=0.005, interval=0.001):
                message = await updates(socket)
                stamps.append(time.monotonic())
                await ack(socket, message)
    gaps = [later - earlier for earlier, later in itertools.pairwise(stamps)]
    assert 3 <= len(stamps) <= 11
    # The server waits 0.1 s between two; seen from here, polling adds some jitter.
    assert min(gaps) >= 0.05


async def test_a_page_that_does_not_ack_gets_no_more_updates_until_it_does(world: World):
    async with live(world.cookies["analyst"]) as socket:
        await subscribe(socket, "session", world.session.pk)
        window = LiveConsumer.max_unacked
        got = []
        for _ in range(window):
            await publish(summary(world.session, packets=1))
            got.append(await updates(socket))
        # The window is full: what arrives now is held, coalesced.
        for _ in range(30):
            await publish(summary(world.session, packets=1, rows=3))
        assert await socket.receive_nothing(timeout=0.4)
        await ack(socket, got[-1])
        held = await updates(socket)
    assert held["seq"] == window + 1
    [item] = held["items"]
    assert item["session"]["packets"] == 30  # counts are summed, never lost
    assert len(item["session"]["recent"]) == MAX_ROWS
    assert held["dropped"] == 90 - MAX_ROWS


async def test_rows_lose_their_info_for_a_user_without_the_content_right(world: World):
    # An LI administrator not assigned to the case sees its metadata, not its content.
    async with live(world.cookies["li_admin"]) as socket:
        await subscribe(socket, "session", world.session.pk)
        await publish(summary(world.session, rows=2))
        message = await updates(socket)
    [item] = message["items"]
    assert len(item["session"]["recent"]) == 2
    assert all("info" not in each for each in item["session"]["recent"])
    assert "secret content info" not in str(message)
    event = await sync_to_async(lambda: events("live.subscribe")[0])()
    assert event.details["content"] is False


def test_packet_rows_keep_only_known_fields_and_info_only_with_content():
    raw = {"time_ns": 1, "src": "a", "info": "x" * 500, "payload": "de ad be ef"}
    assert "info" not in packet_row(raw, content=False)
    assert "payload" not in packet_row(raw, content=True)
    assert len(packet_row(raw, content=True)["info"]) == 200


def test_packet_rows_carry_their_exact_time_as_a_string_for_javascript():
    """2**53 + 1 is the first integer a JavaScript number cannot hold."""
    row = packet_row({"time_ns": 1_700_000_000_123_456_789}, content=False)
    assert row["time_ns_text"] == "1700000000123456789"
    assert packet_row({"time_ns": 2**53 + 1}, content=True)["time_ns_text"] == "9007199254740993"
    for odd in (None, True, "1700000000123456789", 1.5e18, [1]):
        assert packet_row({"time_ns": odd}, content=True)["time_ns_text"] is None


async def test_a_system_administrator_gets_the_health_summaries(world: World):
    async with live(world.cookies["sysadmin"]) as socket:
        await subscribe(socket, "health")
        await publish_health(health())
        await publish(summary(world.session))
        message = await updates(socket)
        assert await socket.receive_nothing(timeout=0.3)
    [item] = message["items"]
    assert item["stream"] == "health"
    assert item["health"]["datagrams"] == 10
    assert item["health"]["drops"] == {"no_intercept": 2}


# Revocation ---------------------------------------------------------------------------


@pytest.fixture
def quick_recheck(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LiveConsumer, "recheck_interval", 0.2)


async def test_unassigning_the_analyst_revokes_the_feed(world: World, quick_recheck: None):
    async with live(world.cookies["analyst"]) as socket:
        await subscribe(socket, "session", world.session.pk)
        await subscribe(socket, "case", world.case.pk)
        await sync_to_async(
            CaseAssignment.objects.filter(user=world.users["analyst"], case=world.case).delete
        )()
        revoked = [await socket.receive_json_from(timeout=3) for _ in range(2)]
        assert {(m["type"], m["stream"], m["id"]) for m in revoked} == {
            ("revoked", "session", world.session.pk),
            ("revoked", "case", world.case.pk),
        }
        await publish(summary(world.session))
        assert await socket.receive_nothing(timeout=0.5)
    assert len(await sync_to_async(events)("live.revoke")) == 2


async def test_losing_the_content_right_strips_info_without_revoking(world: World, quick_recheck):
    await sync_to_async(assign)(world.users["li_admin"], world.case)
    async with live(world.cookies["li_admin"]) as socket:
        await subscribe(socket, "session", world.session.pk)
        await publish(summary(world.session))
        assert "info" in (await updates(socket))["items"][0]["session"]["recent"][0]
        await sync_to_async(CaseAssignment.objects.filter(user=world.users["li_admin"]).delete)()
        await asyncio.sleep(0.6)
        await publish(summary(world.session))
        message = await socket.receive_json_from(timeout=3)
    assert message["type"] == "updates"
    assert "info" not in message["items"][0]["session"]["recent"][0]


async def test_deactivating_the_user_closes_with_4401(world: World, quick_recheck: None):
    async with live(world.cookies["analyst"]) as socket:
        await subscribe(socket, "session", world.session.pk)
        await sync_to_async(User.objects.filter(pk=world.users["analyst"].pk).update)(
            is_active=False
        )
        assert await closed_with(socket) == 4401
        await publish(summary(world.session))
        assert await socket.receive_nothing(timeout=0.5)


async def test_signing_out_closes_with_4401(world: World, quick_recheck: None):
    async with live(world.cookies["analyst"]) as socket:
        await subscribe(socket, "session", world.session.pk)
        await sync_to_async(world.clients["analyst"].logout)()
        assert await closed_with(socket) == 4401


async def test_a_password_change_elsewhere_closes_with_4401(world: World, quick_recheck: None):
    def change_password() -> None:
        user = User.objects.get(pk=world.users["analyst"].pk)
        user.set_password("another long passphrase")
        user.save()

    async with live(world.cookies["analyst"]) as socket:
        await sync_to_async(change_password)()
        assert await closed_with(socket) == 4401


async def test_a_subscription_after_deactivation_closes_at_once(world: World):
    async with live(world.cookies["analyst"]) as socket:
        await sync_to_async(User.objects.filter(pk=world.users["analyst"].pk).update)(
            is_active=False
        )
        await socket.send_json_to({"action": "subscribe", "stream": "case", "id": world.case.pk})
        assert await closed_with(socket) == 4401


async def test_the_dashboard_follows_new_assignments(world: World, quick_recheck: None):
    async with live(world.cookies["analyst"]) as socket:
        await subscribe(socket, "dashboard")
        await sync_to_async(assign)(world.users["analyst"], world.other_case)
        await asyncio.sleep(0.6)
        await publish(summary(world.other_session))
        message = await updates(socket)
    assert [item["id"] for item in message["items"]] == [world.other_case.pk]
