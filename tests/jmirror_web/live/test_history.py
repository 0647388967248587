"""A session page's recent history (jmirror_web/live/history.py): the latest stored
packets and the last five minutes' counts, read from the end of the capture files, sent
once when the page subscribes, with the subscription's rights."""

from __future__ import annotations

import io
import random
import time
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from jmirror_web.intercepts.access import Role
from jmirror_web.live.history import HISTORY_ROWS, session_history, tail_blocks, tail_records
from receiver import traffic
from receiver.pcap import RECORD_HEADER, file_header
from receiver.store import LINKTYPE_RAW
from tests.factories import assign, make_user
from tests.jmirror_web.exports.evidence import SECOND, stored_session
from tests.jmirror_web.live.helpers import FAST_HASHERS, live, sign_in, subscribe


def pcap(records: list[tuple[int, bytes]]) -> bytes:
    out = file_header(LINKTYPE_RAW)
    for time_ns, data in records:
        seconds, nanoseconds = divmod(time_ns, SECOND)
        out += RECORD_HEADER.pack(seconds, nanoseconds, len(data), len(data)) + data
    return out


T0 = 1_800_000_000 * SECOND
# Payloads holding what looks like a record header (a plausible time and equal lengths)
# where a read from the middle of the file might take it for one.
DECOYS = [
    bytes(20) + RECORD_HEADER.pack(1_800_000_000, 5, 4, 4) + bytes(4) + bytes([i]) * (30 + i)
    for i in range(200)
]
RECORDS = [(T0 + i * SECOND // 10, data) for i, data in enumerate(DECOYS)]


def test_the_tail_of_a_file_is_its_last_whole_records_from_a_true_boundary() -> None:
    data = pcap(RECORDS)
    high = T0 + 100 * SECOND
    for budget in (300, 1000, 4000):
        found, whole = tail_records(io.BytesIO(data), len(data), budget, T0, high)
        assert not whole
        assert found
        assert found == RECORDS[-len(found) :]
        assert sum(16 + len(each) for _, each in found) <= budget
    every, whole = tail_records(io.BytesIO(data), len(data), len(data), T0, high)
    assert (every, whole) == (RECORDS, True)


def test_a_record_being_written_is_left_out_and_a_damaged_end_gives_nothing() -> None:
    data = pcap(RECORDS)
    growing = data + RECORD_HEADER.pack(1_800_000_100, 0, 500, 500) + bytes(100)
    found, _ = tail_records(io.BytesIO(growing), len(growing), 2000, T0, T0 + 100 * SECOND)
    assert found == RECORDS[-len(found) :]
    damaged = data + b"\xff" * 40
    assert tail_records(io.BytesIO(damaged), len(damaged), 2000, T0, T0 + 100 * SECOND) == (
        [],
        False,
    )
    # Times before the file's first packet are not records of it.
    later, _ = tail_records(io.BytesIO(data), len(data), 9000, T0 + 19 * SECOND, T0 + 20 * SECOND)
    assert later == RECORDS[190:]


@pytest.fixture
def data_dir(settings: Any, tmp_path: Path) -> Path:
    settings.DATA_DIR = tmp_path
    settings.SESSIONS_DIR = tmp_path / "sessions"
    settings.PASSWORD_HASHERS = FAST_HASHERS
    return tmp_path


@pytest.mark.django_db
def test_the_history_holds_the_latest_rows_and_the_last_five_minutes_counts(
    data_dir: Path,
) -> None:
    now_ns = time.time_ns()
    start = (now_ns // SECOND - 70) * SECOND  # 70 packets, one a second, to a second ago
    payloads = [bytes(traffic.ipv4_udp(src="203.0.113.8", dport=53).packet)] * 70
    stored = stored_session(
        data_dir, count=70, rotate_seconds=30, start_ns=start, payloads=payloads
    )
    assert len(stored.files) == 3
    message = session_history(stored.session.pk, content=True, now_ns=now_ns)
    assert message is not None
    rows = message["rows"]
    assert len(rows) == HISTORY_ROWS
    assert [row["time_ns"] for row in rows] == [t for t, _ in stored.frames[-HISTORY_ROWS:]]
    assert rows[-1]["time_ns_text"] == str(stored.frames[-1][0])
    assert (rows[-1]["src"], rows[-1]["dport"], rows[-1]["protocol"]) == ("203.0.113.8", 53, "DNS")
    assert "info" in rows[-1]
    assert message["seconds"] == [[t // SECOND, 1, 8 + len(data)] for t, data in stored.frames]
    metadata = session_history(stored.session.pk, content=False, now_ns=now_ns)
    assert metadata is not None
    assert all("info" not in row for row in metadata["rows"])


@pytest.mark.django_db
def test_an_hour_old_session_fills_the_list_but_not_the_chart(data_dir: Path) -> None:
    stored = stored_session(data_dir, count=12)
    message = session_history(stored.session.pk, content=True, now_ns=time.time_ns())
    assert message is not None
    assert len(message["rows"]) == 12
    assert message["seconds"] == []


@pytest.mark.django_db
def test_a_session_with_nothing_stored_has_no_history(data_dir: Path) -> None:
    stored = stored_session(data_dir, count=3)
    for capture in stored.files:
        capture.on_disk().unlink()
    assert session_history(stored.session.pk, content=True, now_ns=time.time_ns()) is None


@pytest.mark.django_db(transaction=True)
async def test_the_websocket_sends_the_history_after_subscribed_with_the_users_rights(
    data_dir: Path,
) -> None:
    stored = await sync_to_async(stored_session)(data_dir, count=5)
    analyst = await sync_to_async(make_user)(Role.ANALYST)
    await sync_to_async(assign)(analyst, stored.case)
    li_admin = await sync_to_async(make_user)(Role.LI_ADMIN)
    for user, content in ((analyst, True), (li_admin, False)):
        _client, cookie = await sync_to_async(sign_in)(user)
        async with live(cookie) as socket:
            reply = await subscribe(socket, "session", stored.session.pk)
            assert reply["type"] == "subscribed"
            history = await socket.receive_json_from(timeout=5)
        assert (history["type"], history["stream"], history["id"]) == (
            "history",
            "session",
            stored.session.pk,
        )
        assert [row["time_ns"] for row in history["rows"]] == [t for t, _ in stored.frames]
        assert all(("info" in row) is content for row in history["rows"])


def test_looking_for_the_first_record_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    data = pcap(RECORDS)
    high = T0 + 100 * SECOND
    monkeypatch.setattr("jmirror_web.live.history.MAX_CHECKS", 5)
    assert tail_records(io.BytesIO(data), len(data), 4000, T0, high) == ([], False)
    monkeypatch.undo()
    noise = file_header(LINKTYPE_RAW) + random.Random(7).randbytes(2 * 1024 * 1024)
    began = time.monotonic()
    assert tail_records(io.BytesIO(noise), len(noise), len(noise), T0, high) == ([], True)
    assert tail_records(io.BytesIO(noise), len(noise), 1024 * 1024, T0, high) == ([], False)
    assert time.monotonic() - began < 2


@pytest.mark.django_db
def test_a_contrail_session_gets_its_frames_with_their_juniper_headers(data_dir: Path) -> None:
    from tests.jmirror_web.exports.test_contrail_export import stored_cn2

    now_ns = time.time_ns()
    start = (now_ns // SECOND - 20) * SECOND
    cn2 = stored_cn2(data_dir, count=10, start_ns=start)
    message = session_history(cn2.session.pk, content=True, now_ns=now_ns)
    assert message is not None
    rows = message["rows"]
    assert [row["time_ns"] for row in rows] == [t for t, _ in cn2.stored.frames]
    assert {row["inner"] for row in rows} == {"ethernet"}
    # The direction comes from the Juniper header put back before each frame.
    assert rows[0]["info"].startswith(("ingress", "egress")), rows[0]["info"]
    assert rows[0]["src"] == "10.1.0.5"
    assert message["seconds"] == [
        [t // SECOND, 1, len(header) + len(frame)]
        for (t, frame), header in zip(cn2.stored.frames, cn2.headers, strict=True)
    ]


def test_a_pcapng_file_being_written_is_read_back_from_its_last_whole_block() -> None:
    from receiver.pcap import (
        enhanced_packet_block,
        pcapng_interface_description,
        pcapng_section_header,
    )

    blocks = [enhanced_packet_block(0, T0 + i * SECOND, bytes([i]) * (60 + i)) for i in range(30)]
    data = pcapng_section_header("test") + pcapng_interface_description(1) + b"".join(blocks)
    high = T0 + 100 * SECOND
    every, whole = tail_blocks(io.BytesIO(data), len(data), len(data), T0, high)
    assert whole
    assert [(t, payload) for t, payload in every] == [
        (T0 + i * SECOND, bytes([i]) * (60 + i)) for i in range(30)
    ]
    growing = data + blocks[0][:50]
    last, whole = tail_blocks(io.BytesIO(growing), len(growing), 1000, T0, high)
    assert not whole
    assert 0 < len(last) < 30
    assert last == every[-len(last) :]


@pytest.mark.django_db
def test_a_file_larger_than_the_budget_is_read_through_its_index_whatever_its_payloads(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Payloads that look like records cannot misplace a row: where each record starts
    comes from the file's packet index, not from a guess at the file's end."""
    from jmirror_web.live import history

    monkeypatch.setattr(history, "HISTORY_BYTES", 3000)  # far less than the file
    now_ns = time.time_ns()
    start = (now_ns // SECOND - 300) * SECOND
    stored = stored_session(data_dir, count=200, start_ns=start, payloads=DECOYS)
    message = session_history(stored.session.pk, content=False, now_ns=now_ns)
    assert message is not None
    rows = message["rows"]
    assert rows
    stored_times = [t for t, _ in stored.frames]
    assert [row["time_ns"] for row in rows] == stored_times[-len(rows) :]
    assert [row["length"] for row in rows] == [len(d) for _, d in stored.frames[-len(rows) :]]
