"""Open pcap files are bounded, and a packet whose file cannot be
opened is counted as a store error, never as stored."""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import pytest

from receiver.gate import Gate
from receiver.pipeline import DatagramPipeline, Snapshot
from receiver.store import LINKTYPE_RAW, PcapStore, SessionKey
from receiver.traffic import ipv4_udp, jmirror_datagram
from tests.receiver.test_receive_loop import NOW, rule
from tests.receiver.test_receive_loop import ROUTER as ROUTER_RULE
from tests.receiver.test_store import ipv4, pcap_records

T0 = 1_700_000_000_000_000_000


def session(sid: int) -> SessionKey:
    return SessionKey(liid="LIID-1", router="192.0.2.1", mid=0x300, sid=sid)


def stored_by_session(root: Path) -> dict[str, list[bytes]]:
    found: dict[str, list[bytes]] = {}
    for path in sorted(root.glob("*/*.pcap")):
        found.setdefault(path.parent.name, []).extend(data for _, data in pcap_records(path)[1])
    return found


def test_past_the_bound_the_least_recently_written_file_closes_and_reopens_later(tmp_path, caplog):
    store = PcapStore(tmp_path, max_open_files=3)
    sent: dict[int, list[bytes]] = {}
    caplog.set_level(logging.WARNING, logger="receiver.store")
    for round_ in range(4):
        for sid in range(8):
            data = ipv4(payload=bytes([round_, sid]))
            assert store.write(session(sid), T0 + (round_ * 8 + sid) * 1000, data, LINKTYPE_RAW)
            sent.setdefault(sid, []).append(data)
            assert len(store._files) <= 3
    # Round robin over 8 sessions with 3 files: every new file closed the oldest.
    assert store.bound_closes == 4 * 8 - 3
    closed_early = store.take_closed()
    assert len(closed_early) == store.bound_closes
    assert all(each.sha256 and each.packets == 1 for each in closed_early)
    assert "open-file bound of 3 reached" in caplog.text
    closed = closed_early + store.close_all()
    assert not list(tmp_path.glob("*/*.part"))
    on_disk = stored_by_session(tmp_path)
    assert on_disk == {
        tmp_path.joinpath(each.path).parent.name: sent[each.session.sid]
        for each in closed
        if each.session is not None
    }
    assert sum(each.packets for each in closed) == 32


def test_the_file_written_most_recently_stays_open(tmp_path):
    store = PcapStore(tmp_path, max_open_files=2)
    store.write(session(1), T0, ipv4(), LINKTYPE_RAW)
    store.write(session(2), T0 + 1, ipv4(), LINKTYPE_RAW)
    store.write(session(1), T0 + 2, ipv4(), LINKTYPE_RAW)  # 1 is now the more recent
    store.write(session(3), T0 + 3, ipv4(), LINKTYPE_RAW)
    [closed] = store.take_closed()
    assert closed.session == session(2)
    assert {key[0].sid for key in store._files} == {1, 3}


def test_a_file_that_cannot_be_opened_is_a_store_error_and_write_says_not_stored(
    tmp_path, monkeypatch, caplog
):
    store = PcapStore(tmp_path)

    def no_descriptor(*args: object) -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(store, "_create", no_descriptor)
    caplog.set_level(logging.ERROR, logger="receiver.store")
    assert store.write(session(1), T0, ipv4(), LINKTYPE_RAW) is False
    assert store.write(session(1), T0 + 1, ipv4(), LINKTYPE_RAW) is False
    assert store.store_errors == {"EMFILE": 2}
    assert "cannot open a pcap file" in caplog.text
    assert store.close_all() == []


@pytest.mark.parametrize("batch", [False, True])
def test_a_datagram_whose_file_cannot_be_opened_is_not_counted_as_stored(
    tmp_path, monkeypatch, batch
):
    snapshots: list[Snapshot] = []
    store = PcapStore(tmp_path)
    capture = DatagramPipeline(
        Gate([ROUTER_RULE], [rule(0x300)]), store, on_tick=[snapshots.append]
    )
    real_open = store._create
    failing = {"on": True}

    def sometimes(*args):  # type: ignore[no-untyped-def]
        if failing["on"]:
            raise OSError(errno.ENFILE, "Too many open files in system")
        return real_open(*args)

    monkeypatch.setattr(store, "_create", sometimes)
    datagram = jmirror_datagram(bytes(ipv4_udp()), mid=0x300, sid=7)
    if batch:
        capture.handle_batch([datagram] * 3, ["127.0.0.1"] * 3, [NOW, NOW + 1, NOW + 2])
    else:
        for offset in range(3):
            capture.handle(datagram, "127.0.0.1", NOW + offset)
    failing["on"] = False
    capture.handle(datagram, "127.0.0.1", NOW + 3)
    capture.tick(NOW + 4)
    [delta] = snapshots[-1].sessions.values()
    assert (delta.packets, delta.stored) == (4, 1)
    assert snapshots[-1].store_errors == {"ENFILE": 3}
    [closed] = store.close_all()
    assert closed.packets == 1
