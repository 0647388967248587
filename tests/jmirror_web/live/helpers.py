"""Driving the live websocket in tests: sign in, connect to the real ASGI application
(origin check and auth middleware included) and publish summaries as the receiver does."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.test import Client

from jmirror_web.asgi import application
from jmirror_web.intercepts.access import Role
from jmirror_web.intercepts.models import Session
from receiver.live_contract import (
    HEALTH_GROUP,
    HealthSummary,
    PacketRow,
    SessionSummary,
    case_group,
    intercept_group,
    session_group,
)

ORIGIN = b"http://localhost"
HOST = b"localhost"
"""The Host a browser on ``ORIGIN`` sends: the origin check compares the two."""
LIVE_PATH = "/ws/live/"


FAST_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
"""Tests that make many users in a transactional test: the real hasher takes a second a
user. Set with pytest-django's ``settings`` fixture."""


def ensure_role_groups() -> None:
    """The role groups come from a data migration, which a transactional test's flush
    removes for the tests after it."""
    for role in Role:
        Group.objects.get_or_create(name=role.value)


def sign_in(user: User) -> tuple[Client, str]:
    """A client signed in as the user (a session as the sign-in page makes it), and its
    session cookie's value."""
    client = Client()
    client.force_login(user)
    return client, client.cookies[settings.SESSION_COOKIE_NAME].value


def communicator(
    cookie: str | None, origin: bytes | None = ORIGIN, host: bytes | None = HOST
) -> WebsocketCommunicator:
    headers = []
    if host is not None:
        headers.append((b"host", host))
    if origin is not None:
        headers.append((b"origin", origin))
    if cookie is not None:
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode()))
    return WebsocketCommunicator(application, LIVE_PATH, headers=headers)


@asynccontextmanager
async def live(cookie: str | None) -> AsyncIterator[WebsocketCommunicator]:
    """A connected websocket, disconnected at the end."""
    socket = communicator(cookie)
    connected, _ = await socket.connect(timeout=5)
    assert connected
    try:
        yield socket
    finally:
        await socket.disconnect(timeout=5)


async def request(socket: WebsocketCommunicator, **message: Any) -> dict[str, Any]:
    await socket.send_json_to(message)
    reply: dict[str, Any] = await socket.receive_json_from(timeout=5)
    return reply


async def subscribe(
    socket: WebsocketCommunicator, stream: str, object_id: int | None = None
) -> dict[str, Any]:
    message: dict[str, Any] = {"action": "subscribe", "stream": stream}
    if object_id is not None:
        message["id"] = object_id
    return await request(socket, **message)


async def closed_with(socket: WebsocketCommunicator, timeout: float = 5) -> int | None:
    """The close code the server sent next (skipping any data frame before it)."""
    deadline = time.monotonic() + timeout
    while True:
        output = await socket.receive_output(max(deadline - time.monotonic(), 0.01))
        if output["type"] == "websocket.close":
            code: int | None = output.get("code")
            return code


def row(time_ns: int, info: str = "secret content info") -> PacketRow:
    return PacketRow(
        time_ns=time_ns,
        src="198.51.100.7",
        dst="203.0.113.9",
        sport=40000,
        dport=53,
        protocol="DNS",
        length=80,
        inner="ipv4",
        info=info,
    )


_clock = iter(range(1, 10**9))


def summary(
    session: Session | None = None,
    *,
    session_id: int | None = None,
    router_id: int = 1,
    mid: int = 1,
    sid: int = 1,
    intercept_id: int = 1,
    case_id: int = 1,
    packets: int = 1,
    rows: int = 1,
) -> SessionSummary:
    """A summary of one 250 ms interval; each call is a later interval."""
    if session is not None:
        assert session.intercept is not None
        session_id, router_id, mid, sid = session.pk, session.router_id, session.mid, session.sid
        intercept_id, case_id = session.intercept.pk, session.intercept.case_id
    end = 1_700_000_000_000_000_000 + next(_clock) * 250_000_000
    return SessionSummary(
        type="live.session",
        time_ns=end,
        interval_ns=250_000_000,
        session_id=session_id,
        router_id=router_id,
        mid=mid,
        sid=sid,
        intercept_id=intercept_id,
        case_id=case_id,
        liid="LIID",
        packets=packets,
        bytes=100 * packets,
        stored=packets,
        packets_per_second=packets * 4.0,
        bytes_per_second=400.0 * packets,
        first_ns=end - 200_000_000,
        last_ns=end - 1,
        recent=[row(end - rows + n) for n in range(rows)],
    )


async def publish(message: SessionSummary) -> None:
    """Sends the summary to its session, intercept and case groups, as the receiver's
    publisher does."""
    layer = get_channel_layer()
    if message["session_id"] is not None:
        await layer.group_send(session_group(message["session_id"]), dict(message))
    await layer.group_send(intercept_group(message["intercept_id"]), dict(message))
    await layer.group_send(case_group(message["case_id"]), dict(message))


def health() -> HealthSummary:
    return HealthSummary(
        type="live.health",
        time_ns=1_700_000_000_000_000_000,
        interval_ns=250_000_000,
        receiver="host:1",
        datagrams=10,
        bytes=1000,
        datagrams_per_second=40.0,
        bytes_per_second=4000.0,
        malformed=0,
        unstorable=0,
        internal_errors=0,
        drops={"no_intercept": 2},
        store_errors={},
        open_files=1,
        active_sessions=1,
        listeners=[
            {
                "address": "0.0.0.0:30030",
                "datagrams": 10,
                "bytes": 1000,
                "kernel_drops": 0,
                "rcvbuf": 1 << 20,
            }
        ],
        live_dropped=0,
    )


async def publish_health(message: HealthSummary) -> None:
    await get_channel_layer().group_send(HEALTH_GROUP, dict(message))
