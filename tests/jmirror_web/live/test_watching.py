"""The registry of what live pages watch: written by the live consumer as
subscriptions are granted and end, read by the receivers as a LiveWatch."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.contrib.auth.models import User
from django.db import DatabaseError
from django.utils import timezone

from jmirror_web.intercepts.access import Role
from jmirror_web.intercepts.models import Case, CaseAssignment, Intercept, Session
from jmirror_web.live import watching
from jmirror_web.live.consumers import LiveConsumer
from jmirror_web.live.models import LiveWatchRow
from jmirror_web.live.protocol import MAX_SUBSCRIPTIONS, Stream
from jmirror_web.live.watching import LIFETIME, WatchLoader, forget, keep, load_watch, prune
from receiver.live import case_counts
from receiver.live_contract import case_group
from receiver.watch import NOBODY, LiveWatch
from tests.factories import assign, make_case, make_intercept, make_session, make_user
from tests.jmirror_web.live.helpers import (
    FAST_HASHERS,
    ensure_role_groups,
    live,
    publish,
    request,
    sign_in,
    subscribe,
    summary,
)

# The registry's own functions -----------------------------------------------------------


@pytest.mark.django_db
def test_load_watch_names_what_the_connections_watch(django_assert_num_queries: Any):
    session = make_session()
    intercept = make_intercept()
    case = make_case()
    keep(
        "specific.a!1",
        [(Stream.SESSION, session.pk), (Stream.INTERCEPT, intercept.pk), (Stream.CASE, case.pk)],
    )
    keep("specific.b!2", [(Stream.CASE, case.pk), (Stream.DASHBOARD, None), (Stream.HEALTH, None)])
    with django_assert_num_queries(2):
        watch = load_watch()
    assert watch == LiveWatch(
        # A session is named as the capture knows it.
        streams=frozenset({(session.router_id, session.mid, session.sid)}),
        intercepts=frozenset({intercept.pk}),
        cases=frozenset({case.pk}),
        dashboard=True,
    )
    # Health has no row: it is sent every round whatever is watched.
    assert LiveWatchRow.objects.count() == 3 + 2


@pytest.mark.django_db
def test_keep_replaces_a_connections_rows_and_forget_deletes_them():
    first, second = make_case(), make_case()
    keep("specific.a!1", [(Stream.CASE, first.pk)])
    keep("specific.b!2", [(Stream.CASE, second.pk)])
    keep("specific.a!1", [(Stream.DASHBOARD, None)])
    assert load_watch() == LiveWatch(cases=frozenset({second.pk}), dashboard=True)
    forget("specific.b!2")
    assert load_watch() == LiveWatch(dashboard=True)
    keep("specific.a!1", [])
    assert load_watch() == NOBODY
    assert not LiveWatchRow.objects.exists()


@pytest.mark.django_db
def test_lapsed_watches_are_ignored_and_pruned():
    stale, fresh = make_case(), make_case()
    now = timezone.now()
    # A web process that died 2 lifetimes ago, its rows never deleted.
    keep("specific.dead!1", [(Stream.CASE, stale.pk)], now=now - 2 * LIFETIME)
    keep("specific.live!1", [(Stream.CASE, fresh.pk)], now=now)
    assert load_watch() == LiveWatch(cases=frozenset({fresh.pk}))
    assert load_watch(now + LIFETIME + timedelta(seconds=1)) == NOBODY
    assert prune() == 1
    assert list(LiveWatchRow.objects.values_list("object_id", flat=True)) == [fresh.pk]


@pytest.mark.django_db
def test_a_watched_session_that_no_longer_exists_names_no_stream():
    keep("specific.a!1", [(Stream.SESSION, 10**12)])
    assert load_watch() == NOBODY


@pytest.mark.django_db
@pytest.mark.parametrize("channel", ["", "x" * 201])
def test_keep_refuses_a_bad_channel_name(channel: str):
    with pytest.raises(ValueError, match="channel"):
        keep(channel, [(Stream.CASE, 1)])
    assert not LiveWatchRow.objects.exists()


@pytest.mark.django_db
def test_keep_refuses_more_rows_than_a_connection_may_hold():
    keys = [(Stream.CASE, number) for number in range(1, MAX_SUBSCRIPTIONS + 2)]
    with pytest.raises(ValueError, match="at most"):
        keep("specific.a!1", keys)
    assert not LiveWatchRow.objects.exists()


# Transactional: the loader closes the broken connection, as the receiver's thread must.
@pytest.mark.django_db(transaction=True)
def test_the_loader_keeps_the_last_watch_while_the_database_fails(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    case = make_case()
    keep("specific.a!1", [(Stream.CASE, case.pk)])
    loader = WatchLoader(interval=0)
    assert loader.watch == NOBODY
    assert loader.refresh() == LiveWatch(cases=frozenset({case.pk}))

    def down(now: Any = None) -> LiveWatch:
        raise DatabaseError("connection refused")

    monkeypatch.setattr(watching, "load_watch", down)
    with caplog.at_level(logging.WARNING, logger="jmirror_web.live.watching"):
        assert loader.refresh() == LiveWatch(cases=frozenset({case.pk}))
        assert loader.refresh() == LiveWatch(cases=frozenset({case.pk}))
    assert len([r for r in caplog.records if "keeping the last" in r.getMessage()]) == 1
    monkeypatch.undo()
    forget("specific.a!1")
    assert loader.refresh() == NOBODY


@pytest.mark.django_db
def test_the_loader_prunes_lapsed_rows_when_due():
    keep("specific.dead!1", [(Stream.CASE, 1)], now=timezone.now() - 2 * LIFETIME)
    loader = WatchLoader(interval=0)
    loader.refresh()
    assert LiveWatchRow.objects.exists()  # not due yet
    loader._next_prune = 0.0
    loader.refresh()
    assert not LiveWatchRow.objects.exists()


@pytest.mark.django_db
def test_the_loader_reads_the_registry_at_most_every_interval(django_assert_num_queries: Any):
    loader = WatchLoader(interval=3600)
    with django_assert_num_queries(2):
        loader.refresh()
    keep("specific.a!1", [(Stream.CASE, 1)])
    with django_assert_num_queries(0):
        assert loader.refresh() == NOBODY  # the thread may call it on every turn


@pytest.mark.django_db
def test_the_loader_hands_the_same_watch_while_the_registry_is_unchanged():
    """The receive loop takes a watch that is not the one it applied for a change (and
    rebinds every session for it): an unchanged registry must not look like one."""
    keep("specific.a!1", [(Stream.CASE, 1)])
    loader = WatchLoader(interval=0)
    first = loader.refresh()
    assert loader.refresh() is first
    keep("specific.a!1", [(Stream.CASE, 2)])
    changed = loader.refresh()
    assert changed is not first
    assert changed.cases == frozenset({2})


# The consumer writes the registry -------------------------------------------------------


@dataclass
class World:
    case: Case
    intercept: Intercept
    session: Session
    other_case: Case
    other_session: Session
    users: dict[str, User]
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
    users = {"analyst": make_user(Role.ANALYST), "sysadmin": make_user(Role.SYSADMIN)}
    assign(users["analyst"], case)
    cookies = {name: sign_in(user)[1] for name, user in users.items()}
    return World(case, intercept, session, other_case, other_session, users, cookies)


@pytest.fixture
async def empty_channel_layer():
    yield
    await get_channel_layer().flush()


def rows() -> set[tuple[str, str, int]]:
    return set(LiveWatchRow.objects.values_list("channel", "kind", "object_id"))


async def watched() -> set[tuple[str, int]]:
    """The (kind, object id) pairs in the registry."""
    return {(kind, object_id) for _channel, kind, object_id in await sync_to_async(rows)()}


transactional = pytest.mark.django_db(transaction=True)


@transactional
async def test_granted_subscriptions_are_watched_until_unsubscribed(
    world: World, empty_channel_layer: None
):
    async with live(world.cookies["analyst"]) as socket:
        assert (await subscribe(socket, "session", world.session.pk))["type"] == "subscribed"
        assert (await subscribe(socket, "intercept", world.intercept.pk))["type"] == "subscribed"
        assert (await subscribe(socket, "case", world.case.pk))["type"] == "subscribed"
        assert (await subscribe(socket, "dashboard"))["type"] == "subscribed"
        assert await watched() == {
            ("session", world.session.pk),
            ("intercept", world.intercept.pk),
            ("case", world.case.pk),
            ("dashboard", 0),
        }
        # All of one connection, under its channel name.
        assert len({channel for channel, _, _ in await sync_to_async(rows)()}) == 1
        assert await sync_to_async(load_watch)() == LiveWatch(
            streams=frozenset({(world.session.router_id, world.session.mid, world.session.sid)}),
            intercepts=frozenset({world.intercept.pk}),
            cases=frozenset({world.case.pk}),
            dashboard=True,
        )
        await socket.send_json_to({"action": "unsubscribe", "stream": "case", "id": world.case.pk})
        await request(socket, action="ping")  # the unsubscription has been handled
        assert ("case", world.case.pk) not in await watched()
        assert ("session", world.session.pk) in await watched()
    # Disconnected: nothing of the connection is left.
    assert await watched() == set()


@transactional
async def test_a_refused_subscription_writes_no_watch(world: World, empty_channel_layer: None):
    async with live(world.cookies["analyst"]) as socket:
        # Another case's, a missing one, and health without the role: all refused.
        reply = await subscribe(socket, "case", world.other_case.pk)
        assert (reply["type"], reply["code"]) == ("error", "forbidden")
        assert (await subscribe(socket, "session", world.other_session.pk))["type"] == "error"
        assert (await subscribe(socket, "intercept", 10**9))["type"] == "error"
        assert (await subscribe(socket, "health"))["type"] == "error"
        assert await watched() == set()


@transactional
async def test_health_subscriptions_are_not_watched(world: World, empty_channel_layer: None):
    async with live(world.cookies["sysadmin"]) as socket:
        assert (await subscribe(socket, "health"))["type"] == "subscribed"
        assert await watched() == set()


@pytest.mark.parametrize(
    "frame",
    [
        {"action": "unsubscribe", "stream": "case", "id": 0},
        {"action": "unsubscribe", "stream": "case", "id": "1"},
        {"action": "unsubscribe", "stream": "case"},
        {"action": "unsubscribe", "stream": "everything", "id": 1},
        {"action": "unsubscribe", "stream": "dashboard", "id": 1},
        {"action": "unsubscribe", "stream": "case", "id": 1, "channel": "specific.x!1"},
        {"action": "subscribe", "stream": "case", "id": 2**63},
    ],
)
@transactional
async def test_bad_requests_change_no_watch(
    world: World, empty_channel_layer: None, frame: dict[str, Any]
):
    async with live(world.cookies["analyst"]) as socket:
        await subscribe(socket, "case", world.case.pk)
        reply = await request(socket, **frame)
        assert (reply["type"], reply["code"]) == ("error", "bad_request")
        assert await watched() == {("case", world.case.pk)}


@transactional
async def test_a_revoked_subscription_is_no_longer_watched(
    world: World, empty_channel_layer: None, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(LiveConsumer, "recheck_interval", 0.2)
    async with live(world.cookies["analyst"]) as socket:
        await subscribe(socket, "case", world.case.pk)
        await subscribe(socket, "dashboard")
        await sync_to_async(
            CaseAssignment.objects.filter(user=world.users["analyst"], case=world.case).delete
        )()
        revoked = await socket.receive_json_from(timeout=3)
        assert (revoked["type"], revoked["id"]) == ("revoked", world.case.pk)
        await request(socket, action="ping")
        assert await watched() == {("dashboard", 0)}


@transactional
async def test_the_watches_are_refreshed_while_the_connection_lives(
    world: World, empty_channel_layer: None, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(LiveConsumer, "watch_interval", 0.1)
    async with live(world.cookies["analyst"]) as socket:
        await subscribe(socket, "case", world.case.pk)
        # As if the last refresh were long ago: the receivers would ignore the row.
        lapsed = timezone.now() - timedelta(seconds=1)
        await sync_to_async(LiveWatchRow.objects.update)(expires_at=lapsed)
        assert await sync_to_async(load_watch)() == NOBODY
        for _ in range(50):  # refreshed every 0.1 s: well within 5 s
            await asyncio.sleep(0.1)
            if await sync_to_async(load_watch)():
                break
        assert await sync_to_async(load_watch)() == LiveWatch(cases=frozenset({world.case.pk}))


@transactional
async def test_watches_deleted_under_a_live_connection_are_written_again(
    world: World, empty_channel_layer: None, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(LiveConsumer, "watch_interval", 0.1)
    async with live(world.cookies["analyst"]) as socket:
        await subscribe(socket, "case", world.case.pk)
        await subscribe(socket, "dashboard")
        # As a receiver's prune does to rows that lapsed while this process was stalled.
        await sync_to_async(LiveWatchRow.objects.filter(kind="case").delete)()
        for _ in range(50):
            await asyncio.sleep(0.1)
            if len(await watched()) == 2:
                break
        assert await watched() == {("case", world.case.pk), ("dashboard", 0)}


@transactional
async def test_two_connections_watching_one_case_keep_it_watched_until_both_end(
    world: World, empty_channel_layer: None
):
    async with live(world.cookies["analyst"]) as first:
        await subscribe(first, "case", world.case.pk)
        async with live(world.cookies["analyst"]) as second:
            await subscribe(second, "case", world.case.pk)
            assert len(await sync_to_async(rows)()) == 2
        assert await sync_to_async(load_watch)() == LiveWatch(cases=frozenset({world.case.pk}))
    assert await sync_to_async(load_watch)() == NOBODY


# The dashboards' case counts --------------------------------------------------------------


@transactional
async def test_case_counts_reach_the_dashboard_of_the_users_cases_only(
    world: World, empty_channel_layer: None
):
    layer = get_channel_layer()
    async with live(world.cookies["analyst"]) as socket:
        await subscribe(socket, "dashboard")
        for case in (world.other_case, world.case):
            counts = case_counts(case.pk, 7, 700, 7, time_ns=2 * 10**18, interval_ns=250_000_000)
            await layer.group_send(case_group(case.pk), dict(counts))
        # A session summary of the same case adds up with them.
        await publish(summary(world.session, packets=3))
        items: list[dict[str, Any]] = []
        while sum(item["case"]["packets"] for item in items) < 7 + 3:
            message: dict[str, Any] = await socket.receive_json_from(timeout=3)
            assert message["type"] == "updates"
            items += message["items"]
            await socket.send_json_to({"action": "ack", "seq": message["seq"]})
        assert await socket.receive_nothing(timeout=0.3)
    assert {(item["stream"], item["id"]) for item in items} == {("dashboard", world.case.pk)}
    assert sum(item["case"]["bytes"] for item in items) == 700 + 300


@transactional
async def test_case_counts_do_not_reach_a_case_page(world: World, empty_channel_layer: None):
    layer = get_channel_layer()
    async with live(world.cookies["analyst"]) as socket:
        await subscribe(socket, "case", world.case.pk)
        counts = case_counts(world.case.pk, 7, 700, 7, time_ns=2 * 10**18, interval_ns=1)
        await layer.group_send(case_group(world.case.pk), dict(counts))
        assert await socket.receive_nothing(timeout=0.5)


@transactional
async def test_malformed_case_counts_are_ignored(world: World, empty_channel_layer: None):
    layer = get_channel_layer()
    async with live(world.cookies["analyst"]) as socket:
        await subscribe(socket, "dashboard")
        group = case_group(world.case.pk)
        await layer.group_send(group, {"type": "live.case", "case_id": "not a number"})
        await layer.group_send(group, {"type": "live.case", "case_id": world.case.pk})
        assert await socket.receive_nothing(timeout=0.5)
        assert await request(socket, action="ping") == {"type": "pong"}
