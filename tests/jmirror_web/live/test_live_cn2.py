"""The live view of a CN2 / Contrail session: its summaries (mid CONTRAIL_MID, sid the
analyzer port, rows of inner Ethernet frames) reach the pages that may see them, with the
same rights as jmirror's; the watch registry names it as the receiver keys it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from channels.layers import get_channel_layer

from jmirror_web.intercepts.access import Role
from jmirror_web.intercepts.models import Intercept, Router, Session
from jmirror_web.live.buffer import UpdateBuffer
from jmirror_web.live.protocol import Stream
from jmirror_web.live.watching import keep, load_watch
from receiver import traffic
from receiver.contrail import CONTRAIL_MID, INGRESS_FLAG, decode_contrail
from receiver.live_contract import PacketRow, SessionSummary
from receiver.packet_summary import contrail_packet_row
from tests.factories import assign, make_case, make_intercept, make_router, make_session, make_user
from tests.jmirror_web.live.helpers import (
    FAST_HASHERS,
    ensure_role_groups,
    live,
    publish,
    sign_in,
    subscribe,
    summary,
)

PORT = 8099


def contrail_session() -> Session:
    vrouter = make_router(kind=Router.Kind.CN2, format=Router.Format.CONTRAIL, port=PORT)
    intercept = make_intercept(
        kind=Intercept.Kind.CN2, intercept_id=None, analyzer_port=PORT, routers=[vrouter]
    )
    return make_session(intercept, router=vrouter, mid=CONTRAIL_MID, sid=PORT)


def contrail_rows(count: int, end: int) -> list[PacketRow]:
    """Rows as the receiver's publisher makes them from stored Contrail datagrams."""
    rows = []
    for index in range(count):
        frame = traffic.inner_frame(traffic.ipv4_udp(sport=41000 + index), vlans=(100,))
        payload = traffic.contrail_datagram(
            frame, capture_host="192.0.2.1", flags=0xA0 | INGRESS_FLAG, source_vn="red"
        )
        rows.append(contrail_packet_row(end - count + index, decode_contrail(payload)))
    return rows


def contrail_summary(session: Session, rows: int = 2) -> SessionSummary:
    sent = summary(session, rows=rows)
    sent["recent"] = contrail_rows(rows, sent["time_ns"])
    return sent


@pytest.fixture(autouse=True)
async def empty_channel_layer():
    yield
    await get_channel_layer().flush()


@dataclass
class World:
    session: Session
    summary: SessionSummary
    cookies: dict[str, str]


@pytest.fixture
def world(settings: Any) -> World:
    settings.PASSWORD_HASHERS = FAST_HASHERS
    ensure_role_groups()
    session = contrail_session()
    assert session.intercept is not None
    users = {
        "analyst": make_user(Role.ANALYST),
        "other_analyst": make_user(Role.ANALYST),
        "li_admin": make_user(Role.LI_ADMIN),
    }
    assign(users["analyst"], session.intercept.case)
    assign(users["other_analyst"], make_case())
    cookies = {name: sign_in(user)[1] for name, user in users.items()}
    return World(session, contrail_summary(session), cookies)


@pytest.mark.django_db(transaction=True)
async def test_an_assigned_analyst_gets_the_contrail_sessions_summaries(world: World):
    async with live(world.cookies["analyst"]) as socket:
        reply = await subscribe(socket, "session", world.session.pk)
        assert reply["type"] == "subscribed", reply
        await publish(world.summary)
        message = await socket.receive_json_from(timeout=3)
    [item] = message["items"]
    relayed = item["session"]
    assert (relayed["mid"], relayed["sid"]) == (CONTRAIL_MID, PORT)
    assert [row["inner"] for row in relayed["recent"]] == ["ethernet", "ethernet"]
    assert [row["sport"] for row in relayed["recent"]] == [41000, 41001]
    assert all(row["info"] for row in relayed["recent"])


@pytest.mark.django_db(transaction=True)
async def test_others_are_refused_or_get_no_content_as_for_jmirror(world: World):
    async with live(world.cookies["other_analyst"]) as socket:
        reply = await subscribe(socket, "session", world.session.pk)
    assert (reply["type"], reply.get("code")) == ("error", "forbidden")

    # An LI administrator not assigned to the case: metadata, rows without info.
    async with live(world.cookies["li_admin"]) as socket:
        reply = await subscribe(socket, "session", world.session.pk)
        assert reply["type"] == "subscribed", reply
        await publish(world.summary)
        message = await socket.receive_json_from(timeout=3)
    [item] = message["items"]
    assert all("info" not in row for row in item["session"]["recent"])


@pytest.mark.django_db
def test_the_watch_registry_names_a_contrail_session_as_the_receiver_keys_it():
    session = contrail_session()
    assert session.intercept is not None
    keep("specific.cn2!1", [(Stream.SESSION, session.pk)])
    watch = load_watch()
    assert watch.streams == frozenset({(session.router_id, CONTRAIL_MID, PORT)})
    assert watch.covers(
        session.router_id, CONTRAIL_MID, PORT, session.intercept.pk, session.intercept.case_id
    )
    assert not watch.covers(
        session.router_id, CONTRAIL_MID, PORT + 1, session.intercept.pk, session.intercept.case_id
    )


def test_the_buffer_keeps_a_contrail_and_a_jmirror_session_of_one_router_apart():
    buffer = UpdateBuffer()
    contrail = summary(session_id=1, router_id=5, mid=CONTRAIL_MID, sid=PORT, packets=2)
    jmirror = summary(session_id=2, router_id=5, mid=1, sid=PORT, packets=3)
    contrail["recent"] = contrail_rows(1, contrail["time_ns"])
    buffer.add_session((Stream.CASE, 9), contrail)
    buffer.add_session((Stream.CASE, 9), jmirror)
    items, _dropped = buffer.take(lambda key: True)
    sessions = {(item["session"]["mid"], item["session"]["packets"]) for item in items}
    assert sessions == {(CONTRAIL_MID, 2), (1, 3)}
    [contrail_item] = [item for item in items if item["session"]["mid"] == CONTRAIL_MID]
    assert [row["inner"] for row in contrail_item["session"]["recent"]] == ["ethernet"]
