"""Junk traffic must not make the receiver lose evidence: after 100k junk
datagrams, from an unregistered source and from a registered router with random mids, a
genuine new unclaimed stream is listed; every junk datagram is counted somewhere (a
stream's row, its source's aggregate row, or the overflow count), never silently lost.
Through the real receive path: ``manage.py receive``'s serve() on loopback, with the
senders bound to other 127.0.0.x addresses."""

from __future__ import annotations

import random
import socket
import time
from collections import Counter
from pathlib import Path

import pytest
from django.db.models import Sum
from django.test import Client
from django.urls import reverse

from jmirror_web.intercepts.access import Role
from jmirror_web.intercepts.models import AGGREGATE_MID, ReceiverProcess, UnclaimedStream
from receiver import bookkeeping, pipeline
from receiver.metrics import SnapshotCollector
from receiver.traffic import ipv4_udp, jmirror_datagram
from tests.factories import make_case, make_intercept, make_router, make_user
from tests.receiver.test_receive_command import Served, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

JUNK = 100_000
INNER = bytes(ipv4_udp())


def _junk(rng: random.Random, count: int) -> list[bytes]:
    """Half random bytes (most decode as jmirror with an unknown inner packet, some are
    malformed), half a valid jmirror datagram with a random mid and sid."""
    datagrams = []
    for index in range(count):
        if index % 2:
            datagrams.append(rng.randbytes(rng.randrange(1, 120)))
        else:
            mid, sid = rng.getrandbits(32), rng.getrandbits(32)
            datagrams.append(jmirror_datagram(INNER, mid=mid, sid=sid))
    return datagrams


def _send(sock: socket.socket, port: int, datagrams: list[bytes]) -> None:
    # Paced, so that the junk reaches the receiver rather than the kernel's drop count.
    for start in range(0, len(datagrams), 1000):
        for payload in datagrams[start : start + 1000]:
            sock.sendto(payload, ("127.0.0.1", port))
        time.sleep(0.004)


def test_a_new_stream_after_100k_junk_datagrams_is_listed(tmp_path: Path, monkeypatch, caplog):
    # The 10,000-row table filled after about 68k junk datagrams, at one write of 200
    # rows a second; a lower cap reaches the same state in a test's time.
    monkeypatch.setattr(bookkeeping, "UNCLAIMED_ROWS_LIMIT", 400)
    make_router(address="127.0.0.1")
    make_intercept(make_case(), intercept_id=0x300)
    rng = random.Random(13)
    junk = _junk(rng, JUNK)
    genuine = jmirror_datagram(INNER, mid=0x555, sid=9)
    served = Served(tmp_path / "sessions")
    try:
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as unregistered,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as router,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as newcomer,
        ):
            unregistered.bind(("127.0.0.2", 0))
            router.bind(("127.0.0.1", 0))
            newcomer.bind(("127.0.0.3", 0))
            _send(unregistered, served.port, junk[: JUNK // 2])
            _send(router, served.port, junk[JUNK // 2 :])
            # Junk still arriving while the real stream starts, as in an attack.
            _send(unregistered, served.port, _junk(rng, 2000))
            for _ in range(20):
                newcomer.sendto(genuine, ("127.0.0.1", served.port))
        wait_for(
            lambda: UnclaimedStream.objects.filter(source="127.0.0.3", packets=20).exists(),
            timeout=30,
        )
    finally:
        served.finish()

    stream = UnclaimedStream.objects.get(source="127.0.0.3")
    assert (stream.mid, stream.sid, stream.reason, stream.packets) == (
        0x555,
        9,
        "unknown_router",
        20,
    )
    # The junk sources got their per-source rows and one aggregate row each.
    for source in ("127.0.0.1", "127.0.0.2"):
        rows = UnclaimedStream.objects.filter(source=source)
        assert rows.exclude(mid=AGGREGATE_MID).count() <= pipeline.UNCLAIMED_STREAMS_PER_SOURCE
        assert rows.get(mid=AGGREGATE_MID).is_aggregate
    # Nothing dropped silently: every datagram the receiver took is malformed, or counted
    # in a row, or counted as not listed.
    process = ReceiverProcess.objects.get()
    dropped = sum(process.drops.values())
    assert process.datagrams == process.malformed + dropped
    listed = UnclaimedStream.objects.aggregate(total=Sum("packets"))["total"]
    assert listed + process.unclaimed_overflow == dropped
    assert process.datagrams > JUNK * 9 // 10  # the junk did arrive
    # And the caps reached were said, by the capture and by the database writer.
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("counted in a source's aggregate row" in m for m in warnings)
    assert any(m.startswith("unclaimed-stream table") for m in warnings)


def test_the_health_page_says_when_sources_were_aggregated(client: Client):
    UnclaimedStream.objects.create(
        source="127.0.0.2",
        mid=AGGREGATE_MID,
        sid=0,
        reason="unknown_router",
        packets=99_000,
        first_seen="2026-01-01T00:00:00Z",
        last_seen="2026-01-01T00:00:01Z",
    )
    client.force_login(make_user(Role.SYSADMIN))
    page = client.get(reverse("console:health")).content.decode()
    assert "1 source sent more than 64 distinct streams" in page
    assert "1 rows of at most 10,000" in page


def test_an_aggregate_row_is_shown_as_such_and_cannot_be_mapped(client: Client):
    router = make_router(address="127.0.0.2")
    row = UnclaimedStream.objects.create(
        source="127.0.0.2",
        router=router,
        mid=AGGREGATE_MID,
        sid=0,
        reason="no_intercept",
        packets=5,
        first_seen="2026-01-01T00:00:00Z",
        last_seen="2026-01-01T00:00:01Z",
    )
    client.force_login(make_user(Role.LI_ADMIN))
    page = client.get(reverse("console:unclaimed")).content.decode()
    assert "other streams of this source" in page
    assert "create intercept from this" not in page
    case = make_case()
    response = client.post(
        reverse("console:map_unclaimed", args=[row.pk]),
        {f"stream{row.pk}-case": case.pk, f"stream{row.pk}-liid": "X-1"},
    )
    assert response.status_code == 400
    assert "none to map" in response.content.decode()


def test_the_aggregate_mid_is_the_receivers():
    assert AGGREGATE_MID == pipeline.AGGREGATE_MID


def test_admission_keeps_the_busiest_sources_apart_and_room_for_new_ones(monkeypatch):
    monkeypatch.setattr(pipeline, "UNCLAIMED_STREAMS_PER_SOURCE", 3)
    table: dict[pipeline.StreamKey, int] = {}
    per_source: dict[str, int] = {}

    def admit(key: pipeline.StreamKey) -> pipeline.StreamKey | None:
        admitted = pipeline.admit_unclaimed(table, per_source, key, 20)
        if admitted is not None:
            table[admitted] = table.get(admitted, 0) + 1
        return admitted

    junk = [admit(("10.0.0.1", mid, 0)) for mid in range(10)]
    # Three streams of their own, then the source's aggregate row.
    assert junk[:3] == [("10.0.0.1", 0, 0), ("10.0.0.1", 1, 0), ("10.0.0.1", 2, 0)]
    assert set(junk[3:]) == {pipeline.aggregate_key("10.0.0.1")}
    assert table[pipeline.aggregate_key("10.0.0.1")] == 7
    # Many sources fill nine tenths; then only a source's first stream gets a row of
    # its own, and the aggregate rows take the rest, until the table is full.
    for source in range(5):
        for mid in range(3):
            admit((f"10.0.1.{source}", mid, 0))
    # 4 rows of the first source and 14 of these fill nine tenths: the last source's
    # third stream went to its aggregate row.
    assert len(table) == 19
    assert pipeline.aggregate_key("10.0.1.4") in table
    assert admit(("10.0.1.0", 99, 0)) == pipeline.aggregate_key("10.0.1.0")
    assert admit(("10.0.2.1", 1, 0)) is None  # full: the caller counts it as overflow
    assert len(table) == 20
    assert admit(("10.0.0.1", 1, 0)) == ("10.0.0.1", 1, 0)  # a known row still counts


def test_a_new_source_gets_a_row_in_the_reserve():
    table = {("10.0.0.1", mid, 0): 1 for mid in range(18)}
    per_source = {"10.0.0.1": 18}
    assert pipeline.admit_unclaimed(table, per_source, ("10.0.0.9", 5, 5), 20) == (
        "10.0.0.9",
        5,
        5,
    )


def test_the_metrics_count_unclaimed_datagrams_past_a_cap():
    listener = pipeline.ListenerCounters(unclaimed_overflow=3, unclaimed_aggregated=7)
    collector = SnapshotCollector()
    collector.offer(
        pipeline.Snapshot(
            time_ns=1,
            previous_ns=0,
            sessions={},
            closed_files=[],
            open_files=[],
            listener=listener,
            sockets=[],
            unclaimed={},
            store_errors=Counter(),
        )
    )
    [family] = [m for m in collector.collect() if m.name == "jmirror_unclaimed_capped_datagrams"]
    assert {s.labels["outcome"]: s.value for s in family.samples if s.name.endswith("_total")} == {
        "aggregated": 7,
        "not_listed": 3,
    }
