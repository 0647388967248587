"""The receiver's counters reach the database in batches, equal what was
received and stored, and the last of them are written at shutdown.

Runs on the test database (SQLite, or PostgreSQL with DATABASE_URL): the batched
statements (INSERT ... ON CONFLICT, RETURNING, arrays on PostgreSQL) are the part that
differs between the two.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.db import DatabaseError, connection
from django.test.utils import CaptureQueriesContext

from jmirror_web.intercepts.models import (
    CaptureFile,
    FileCounts,
    ReceiverProcess,
    Router,
    Session,
    SessionCounts,
    TrafficMinute,
)
from receiver import bookkeeping, service
from receiver.bookkeeping import Bookkeeper, moment
from receiver.gate_loader import GateWatcher
from receiver.metrics import BookkeepingBacklog, SnapshotCollector
from receiver.pipeline import DatagramPipeline, ListenerCounters, SessionDelta, Snapshot
from receiver.receive_loop import Receiver
from receiver.service import serve
from receiver.store import LINKTYPE_RAW, FileFacts, PcapStore, SessionKey
from receiver.traffic import jmirror_datagram
from tests.factories import make_case, make_intercept, make_router, make_session
from tests.receiver.test_store import ipv4, pcap_records

ROUTER = "192.0.2.1"
MID = 0x300
SECOND = 1_000_000_000


def delta(router: Router, intercept_pk: int, sid: int, first_ns: int, last_ns: int, packets: int):
    made = SessionDelta(
        router.pk, intercept_pk, 1, "LIID", first_ns, SessionKey("LIID", ROUTER, MID, sid)
    )
    made.last_ns = last_ns
    made.packets, made.bytes, made.stored = packets, packets * 100, packets
    return made


def snapshot(
    time_ns: int,
    deltas: list[SessionDelta],
    *,
    open_files: list[FileFacts] = (),  # type: ignore[assignment]
    closed: list[FileFacts] = (),  # type: ignore[assignment]
    final: bool = False,
) -> Snapshot:
    return Snapshot(
        time_ns=time_ns,
        previous_ns=time_ns - SECOND,
        sessions={(ROUTER, MID, each.store_key.sid): each for each in deltas},
        closed_files=list(closed),
        open_files=list(open_files),
        listener=ListenerCounters(),
        sockets=[],
        unclaimed={},
        store_errors=Counter(),
        final=final,
    )


def open_file(sid: int, first_ns: int, last_ns: int, packets: int) -> FileFacts:
    return FileFacts(
        Path(f"LIID_{ROUTER}_sid-{sid}") / "1.pcap.part",
        SessionKey("LIID", ROUTER, MID, sid),
        LINKTYPE_RAW,
        first_ns,
        last_ns,
        packets,
        packets * 100,
        "",
    )


def by_sid() -> dict[int, Session]:
    return {row.sid: row for row in Session.objects.all()}


@pytest.mark.django_db
def test_counters_written_in_batches_equal_what_was_absorbed(tmp_path):
    router = make_router(address=ROUTER)
    intercept = make_intercept(make_case(), intercept_id=MID, routers=[router])
    t0 = time.time_ns() - 3600 * SECOND
    # A session written by an earlier run, whose extent reaches past what comes now.
    earlier = make_session(
        intercept,
        router=router,
        mid=MID,
        sid=99,
        first_seen=moment(t0 - 100 * SECOND),
        last_seen=moment(t0 + 100 * SECOND),
        packets=10,
        bytes=1000,
        stored_packets=10,
    )
    keeper = Bookkeeper(tmp_path)
    keeper.register()
    # Round 1: two snapshots merged before one write; session 99 gets an import of an
    # older capture (inside its extent: the extent must not move inwards).
    keeper.absorb(
        snapshot(
            t0 + 1 * SECOND,
            [
                delta(router, intercept.pk, 1, t0, t0 + SECOND, 3),
                delta(router, intercept.pk, 99, t0 + 10 * SECOND, t0 + 20 * SECOND, 5),
            ],
        )
    )
    keeper.absorb(
        snapshot(
            t0 + 2 * SECOND,
            [
                delta(router, intercept.pk, 1, t0 + SECOND, t0 + 2 * SECOND, 4),
                delta(router, intercept.pk, 2, t0 + 2 * SECOND, t0 + 2 * SECOND, 1),
            ],
        )
    )
    assert keeper.backlog().rows == 3
    assert keeper.write()
    assert keeper.backlog() == BookkeepingBacklog(0, 0.0)
    rows = by_sid()
    assert (rows[1].packets, rows[1].bytes, rows[1].stored_packets) == (7, 700, 7)
    assert (rows[1].first_seen, rows[1].last_seen) == (moment(t0), moment(t0 + 2 * SECOND))
    assert rows[2].packets == 1
    assert (rows[99].packets, rows[99].stored_packets) == (15, 15)
    assert (rows[99].first_seen, rows[99].last_seen) == (earlier.first_seen, earlier.last_seen)
    # Round 2: a new session among existing ones; an old capture reaching before session
    # 1's start moves its start outwards only.
    keeper.absorb(
        snapshot(
            t0 + 3 * SECOND,
            [
                delta(router, intercept.pk, 1, t0 - 5 * SECOND, t0 + 3 * SECOND, 1),
                delta(router, intercept.pk, 3, t0 + 3 * SECOND, t0 + 3 * SECOND, 2),
            ],
        )
    )
    assert keeper.write()
    rows = by_sid()
    assert rows[1].packets == 8
    assert (rows[1].first_seen, rows[1].last_seen) == (
        moment(t0 - 5 * SECOND),
        moment(t0 + 3 * SECOND),
    )
    assert (rows[2].packets, rows[3].packets) == (1, 2)
    assert keeper.session_ids == {(router.pk, MID, sid): rows[sid].pk for sid in (1, 2, 3, 99)}
    # A write with nothing new changes nothing.
    assert keeper.write()
    assert by_sid()[1].packets == 8


@pytest.mark.django_db
def test_each_write_adds_its_counts_to_the_minute_of_its_latest_packet(tmp_path):
    router = make_router(address=ROUTER)
    intercept = make_intercept(make_case(), intercept_id=MID, routers=[router])
    minute = (time.time_ns() - 3600 * SECOND) // (60 * SECOND) * 60 * SECOND
    keeper = Bookkeeper(tmp_path)
    keeper.register()
    writes = [
        [(1, minute + 5 * SECOND, 3), (2, minute + 59 * SECOND, 1)],
        [(1, minute + 30 * SECOND, 2)],  # the same minute again: added
        [(1, minute + 61 * SECOND, 4)],  # the next minute
    ]
    for number, deltas in enumerate(writes):
        keeper.absorb(
            snapshot(
                minute + number * SECOND,
                [delta(router, intercept.pk, sid, at, at, packets) for sid, at, packets in deltas],
            )
        )
        assert keeper.write()
    found = {
        (row.session.sid, row.minute): (row.packets, row.bytes)
        for row in TrafficMinute.objects.select_related("session")
    }
    assert found == {
        (1, moment(minute)): (5, 500),
        (2, moment(minute)): (1, 100),
        (1, moment(minute + 60 * SECOND)): (4, 400),
    }
    # They add up to the sessions' own counters.
    assert sum(packets for packets, _ in found.values()) == sum(
        Session.objects.values_list("packets", flat=True)
    )


@pytest.mark.django_db
def test_a_write_of_many_sessions_and_files_is_a_few_statements(tmp_path):
    router = make_router(address=ROUTER)
    intercept = make_intercept(make_case(), intercept_id=MID, routers=[router])
    t0 = time.time_ns() - 3600 * SECOND
    keeper = Bookkeeper(tmp_path)
    keeper.register()

    def write(sessions: int, packets: int) -> int:
        keeper.absorb(
            snapshot(
                t0 + packets * SECOND,
                [delta(router, intercept.pk, sid, t0, t0, 1) for sid in range(sessions)],
                open_files=[open_file(sid, t0, t0 + packets, packets) for sid in range(sessions)],
            )
        )
        with CaptureQueriesContext(connection) as queries:
            assert keeper.write()
        return len(queries)

    few = write(10, 1)
    many = write(1_500, 2)
    # One statement per chunk of rows, not one (or three) per session and file.
    assert many < few + 30
    assert Session.objects.count() == 1_500
    assert CaptureFile.objects.filter(closed=False).count() == 1_500
    assert sum(CaptureFile.objects.values_list("packets", flat=True)) == 1_500 * 2
    # Only files whose packets moved are written again: a row edited behind the
    # receiver's back stays as it is while its file does not change.
    CaptureFile.objects.filter(path__endswith="sid-0/1.pcap.part").update(packets=12345)
    keeper.absorb(
        snapshot(
            t0 + 10 * SECOND,
            [],
            open_files=[open_file(sid, t0, t0 + 2, 3 if sid == 1 else 2) for sid in range(1_500)],
        )
    )
    assert keeper.write()
    packets = dict(CaptureFile.objects.values_list("path", "packets"))
    assert packets[file_row_path(tmp_path, 0)] == 12345
    assert packets[file_row_path(tmp_path, 1)] == 3
    # Closing completes the same row, with its hash; a late open-file row never reopens it.
    closed = open_file(1, t0, t0 + 2, 4)
    keeper.absorb(
        snapshot(
            t0 + 11 * SECOND,
            [],
            closed=[
                FileFacts(closed.path, closed.session, LINKTYPE_RAW, t0, t0 + 2, 4, 400, "ab" * 32)
            ],
        )
    )
    assert keeper.write()
    row = CaptureFile.objects.get(path=file_row_path(tmp_path, 1))
    assert (row.closed, row.packets, row.sha256) == (True, 4, "ab" * 32)
    CaptureFile.objects.record(
        [FileCounts(row.path, row.session_id, moment(t0), moment(t0 + 5), 9, 900, "", False)]
    )
    row.refresh_from_db()
    assert (row.closed, row.packets) == (True, 4)


def file_row_path(root: Path, sid: int) -> str:
    return bookkeeping.file_path(root, open_file(sid, 0, 0, 0).path)


@pytest.mark.django_db
def test_rows_for_one_session_under_two_source_forms_are_added_together():
    router = make_router(address=ROUTER)
    now = datetime.now(UTC)
    row = SessionCounts(router.pk, MID, 7, None, now, now, 2, 200, 2)
    later = row._replace(last_seen=now + timedelta(seconds=1), packets=3, stored_packets=3)
    ids = Session.objects.add_counts([row, later])
    session = Session.objects.get()
    assert ids == {(router.pk, MID, 7): session.pk}
    assert (session.packets, session.stored_packets, session.last_seen) == (5, 5, later.last_seen)


# Transactional: a failed write closes the connection (as it must after a real failure).
@pytest.mark.django_db(transaction=True)
def test_a_failed_write_keeps_the_counters_for_the_next(tmp_path, monkeypatch):
    router = make_router(address=ROUTER)
    intercept = make_intercept(make_case(), intercept_id=MID, routers=[router])
    t0 = time.time_ns() - 3600 * SECOND
    keeper = Bookkeeper(tmp_path)
    keeper.register()
    keeper.absorb(snapshot(t0, [delta(router, intercept.pk, 1, t0, t0, 2)]))
    real = type(Session.objects).add_counts

    def refuse(self, rows):
        raise DatabaseError("database is locked")

    monkeypatch.setattr(type(Session.objects), "add_counts", refuse)
    assert not keeper.write()
    assert keeper.backlog().rows == 1
    keeper.absorb(snapshot(t0 + SECOND, [delta(router, intercept.pk, 1, t0, t0 + 1, 3)]))
    monkeypatch.setattr(type(Session.objects), "add_counts", real)
    assert keeper.write()
    assert Session.objects.get().packets == 5
    assert keeper.backlog().rows == 0


@pytest.mark.django_db
def test_counters_equal_the_files_after_thousands_of_sessions(tmp_path):
    """3,000 sessions through the capture with 256 files open at most (so files close
    early and reopen), written in a few writes: each session's stored count equals the
    records in its files, and its file rows say the same."""
    router = make_router(address=ROUTER)
    make_intercept(make_case(), intercept_id=MID, routers=[router])
    root = tmp_path / "sessions"
    keeper = Bookkeeper(root)
    keeper.register()
    capture = DatagramPipeline(
        GateWatcher().gate, PcapStore(root, max_open_files=256), on_tick=[keeper.absorb]
    )
    sessions = 3_000
    now = time.time_ns()
    sent: Counter[int] = Counter()
    for round_ in range(4):
        for sid in range(sessions):
            if (sid + round_) % 3 == 0:
                continue  # not every session in every round
            capture.handle(jmirror_datagram(ipv4(), mid=MID, sid=sid), ROUTER, now)
            sent[sid] += 1
            now += 1000
        capture.tick(now)
        if round_ % 2:
            assert keeper.write()
    capture.finish(now)
    assert keeper.write()
    assert capture.store.bound_closes > 0
    rows = by_sid()
    assert len(rows) == sessions
    assert {sid: row.packets for sid, row in rows.items()} == dict(sent)
    in_files: Counter[int] = Counter()
    rows_say: Counter[int] = Counter()
    sid_of = {row.pk: sid for sid, row in rows.items()}
    for file_row in CaptureFile.objects.all():
        assert file_row.closed
        assert file_row.sha256
        path = Path(file_row.path)
        records = pcap_records(path if path.is_absolute() else tmp_path / path)[1]
        in_files[sid_of[file_row.session_id]] += len(records)
        rows_say[sid_of[file_row.session_id]] += file_row.packets
    assert {sid: row.stored_packets for sid, row in rows.items()} == dict(in_files)
    assert rows_say == in_files == sent


@pytest.mark.django_db(transaction=True)
def test_shutdown_writes_the_last_counters_of_many_sessions(tmp_path, monkeypatch, caplog):
    """Nothing is written while traffic flows (the write interval is made an hour): at
    stop every counter of 2,000 sessions is pending, and the database gets all of them."""
    make_router(address="127.0.0.1")
    make_intercept(make_case(), intercept_id=MID)
    monkeypatch.setattr(service, "WRITE_INTERVAL", 3600.0)
    caplog.set_level(logging.INFO, logger="receiver")
    stop = threading.Event()
    ready = threading.Event()
    served: list[Receiver] = []

    def on_ready(receiver: Receiver) -> None:
        served.append(receiver)
        ready.set()

    def run() -> None:
        try:
            serve([("127.0.0.1", 0)], root=tmp_path / "sessions", stop=stop, ready=on_ready)
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    receiver = served[0]
    port = receiver.addresses[0][1]
    sessions = 2_000
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for sid in range(sessions):
            sender.sendto(jmirror_datagram(ipv4(), mid=MID, sid=sid), ("127.0.0.1", port))
            sent += 1
            if sent % 200 == 0:  # paced: the socket buffer must not overflow
                deadline = time.monotonic() + 5
                while receiver.counters.datagrams < sent and time.monotonic() < deadline:
                    time.sleep(0.005)
    deadline = time.monotonic() + 5
    while receiver.counters.datagrams < sent and time.monotonic() < deadline:
        time.sleep(0.01)
    assert receiver.counters.datagrams == sent
    stop.set()
    thread.join(timeout=40)
    assert not thread.is_alive()
    assert "not written" not in caplog.text
    assert "could not be written" not in caplog.text
    assert Session.objects.count() == sessions
    assert sum(Session.objects.values_list("packets", flat=True)) == sent
    assert sum(Session.objects.values_list("stored_packets", flat=True)) == sent
    assert sum(CaptureFile.objects.filter(closed=True).values_list("packets", flat=True)) == sent
    process = ReceiverProcess.objects.get()
    assert process.stopped_at is not None
    assert process.datagrams == sent
    assert process.bookkeeping_backlog == sessions  # the final write carried them all


def test_metrics_show_active_sessions_round_time_and_backlog():
    collector = SnapshotCollector(backlog=lambda: BookkeepingBacklog(4321, 2.5))
    collector.offer(
        Snapshot(
            time_ns=SECOND,
            previous_ns=0,
            sessions={},
            closed_files=[],
            open_files=[],
            listener=ListenerCounters(),
            sockets=[],
            unclaimed={},
            store_errors=Counter(),
            bound_closes=7,
            active_sessions=1234,
            round_ns=12_500_000,
        )
    )
    values = {
        sample.name: sample.value for family in collector.collect() for sample in family.samples
    }
    assert values["jmirror_active_sessions"] == 1234
    assert values["jmirror_receive_round_seconds"] == 0.0125
    assert values["jmirror_bookkeeping_backlog"] == 4321
    assert values["jmirror_bookkeeping_lag_seconds"] == 2.5
    assert values["jmirror_open_file_bound_closes_total"] == 7
