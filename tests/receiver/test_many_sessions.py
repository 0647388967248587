"""Thousands of concurrent sessions through one receive loop.

Behaviour, not timing (benchmarks/sessions_benchmark.py measures the rates): with more
sessions than the store may keep files open, every datagram is stored and counted once;
the C path's bindings outlive ticks, so a tick does not send every session back through
Python; files whose opens were deferred (a burst of new sessions) hold every packet, in
order; only watched sessions keep a live sample; idle sessions are let go and come back
whole.
"""

from __future__ import annotations

import errno
import socket
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from receiver import receive_loop
from receiver.gate import Gate, RouterRule
from receiver.pcap_reader import iter_frames
from receiver.pipeline import ACTIVE_SECONDS, DatagramPipeline, Snapshot
from receiver.receive_loop import Receiver
from receiver.store import PENDING_FD, PcapStore, SessionKey
from receiver.traffic import ipv4_udp, jmirror_datagram
from receiver.watch import LiveWatch
from tests.receiver.test_handle_batch import _rule

ROUTER = "127.0.0.1"
FOREVER = (0, 2**63)
NO_C = pytest.mark.skipif(
    receive_loop.FastReceiver is None, reason="receiver._fastpath is not built"
)
NATIVE = [
    pytest.param(True, id="c", marks=NO_C),
    pytest.param(False, id="python"),
]


def _gate(sessions: int) -> Gate:
    """One intercept (and case) per mirror id 1..sessions, each claiming all its sids."""
    return Gate(
        [RouterRule(1, ROUTER)], [_rule(mid, mid, FOREVER) for mid in range(1, sessions + 1)]
    )


def _datagram(mid: int, number: int) -> bytes:
    # The source port numbers the packet, so the files show order and completeness.
    return jmirror_datagram(bytes(ipv4_udp(sport=number % 65536, dport=mid)), mid=mid, sid=1)


@contextmanager
def _receiver(store: PcapStore, sessions: int, *, native: bool) -> Iterator[Receiver]:
    snapshots: list[Snapshot] = []
    receiver = Receiver(
        [(ROUTER, 0)],
        _gate(sessions),
        store,
        rcvbuf=16 << 20,
        on_tick=[snapshots.append],
        native=native,
    )
    receiver.snapshots = snapshots  # type: ignore[attr-defined]
    sock = receiver.sockets[0]
    sock.setblocking(False)
    # One drain for the receiver's life: a drainer made anew would be a new C receiver.
    receiver.drain = receiver._drainer(sock)  # type: ignore[attr-defined]
    try:
        yield receiver
    finally:
        receiver.close_sockets()


def _send_and_drain(receiver: Receiver, payloads: list[bytes]) -> None:
    """Send in slices the socket buffer holds, draining after each."""
    drain = receiver.drain  # type: ignore[attr-defined]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.bind((ROUTER, 0))
        for start in range(0, len(payloads), 500):
            for payload in payloads[start : start + 500]:
                sender.sendto(payload, receiver.addresses[0])
            for _ in range(50):
                drain()


def _stored(root: Path) -> dict[int, list[int]]:
    """Per mirror id, the source ports of its stored packets in file order."""
    found: dict[int, list[tuple[str, int]]] = {}
    for path in root.rglob("*.pcap"):
        mid = int(path.parent.name.split("_mid-")[1][:8], 16)
        sequence = path.name.rsplit("-", 1)[1]
        with path.open("rb") as stream:
            for frame in iter_frames(stream):
                found.setdefault(mid, []).append((sequence, int.from_bytes(frame[3][20:22])))
    return {mid: [port for _, port in sorted(each)] for mid, each in found.items()}


@pytest.mark.parametrize("native", NATIVE)
def test_more_sessions_than_open_files_store_every_datagram_and_count_it_once(
    tmp_path: Path, native: bool
) -> None:
    sessions, rounds = 300, 4
    store = PcapStore(tmp_path, max_open_files=40)
    payloads = [
        _datagram(mid, round_ * sessions + mid)
        for round_ in range(rounds)
        for mid in range(1, sessions + 1)
    ]
    with _receiver(store, sessions, native=native) as receiver:
        for round_ in range(rounds):
            _send_and_drain(receiver, payloads[round_ * sessions : (round_ + 1) * sessions])
            receiver.tick(time.time_ns())
        receiver.finish(time.time_ns())
        snapshots: list[Snapshot] = receiver.snapshots  # type: ignore[attr-defined]
    assert receiver.counters.datagrams == len(payloads)
    assert store.bound_closes > 0
    assert not store.store_errors
    stored = Counter[int]()
    for snapshot in snapshots:
        for (_, mid, _), delta in snapshot.sessions.items():
            stored[mid] += delta.stored
    assert stored == dict.fromkeys(range(1, sessions + 1), rounds)
    assert _stored(tmp_path) == {
        mid: [round_ * sessions + mid for round_ in range(rounds)] for mid in range(1, sessions + 1)
    }


def _count_python_path(receiver: Receiver) -> Counter[int]:
    """Datagrams that reach the Python path from now on, per mirror id (the rest C
    stores on its own)."""
    handled = Counter[int]()
    python_handle = receiver.pipeline.handle

    def counting(payload: bytes, source: str, time_ns: int) -> object:
        handled[int.from_bytes(payload[:4])] += 1
        return python_handle(payload, source, time_ns)

    receiver.pipeline.handle = counting  # type: ignore[method-assign,assignment]
    # A drain made after the patch, so that it hands datagrams to the counting one.
    receiver.drain = receiver._drainer(receiver.sockets[0])  # type: ignore[attr-defined]
    return handled


@NO_C
def test_bindings_outlive_ticks_so_python_sees_each_session_once(tmp_path: Path) -> None:
    """A tick used to clear every binding: each session's next datagram then went through
    Python again, which at thousands of sessions was most of the loop's time."""
    sessions, rounds = 200, 5
    with _receiver(PcapStore(tmp_path), sessions, native=True) as receiver:
        handled = _count_python_path(receiver)
        for round_ in range(rounds):
            # Several datagrams of each session per round, so most can stay in C.
            _send_and_drain(
                receiver,
                [
                    _datagram(mid, round_ * 1000 + repeat)
                    for mid in range(1, sessions + 1)
                    for repeat in range(3)
                ],
            )
            receiver.tick(time.time_ns())
        receiver.finish(time.time_ns())
        snapshots: list[Snapshot] = receiver.snapshots  # type: ignore[attr-defined]
    assert set(handled) == set(range(1, sessions + 1))
    assert max(handled.values()) == 1
    stored = sum(delta.stored for each in snapshots for delta in each.sessions.values())
    assert stored == sessions * rounds * 3
    assert snapshots[0].active_sessions == sessions


@NO_C
def test_a_watch_read_again_unchanged_keeps_the_bindings(tmp_path: Path) -> None:
    """The registry is read twice a second into a new, equal LiveWatch: taken for a
    change, every binding went and every session's next datagram went through Python
    again, which at 10,000 sessions was a large share of the loop's time."""
    sessions, rounds = 50, 4
    with _receiver(PcapStore(tmp_path), sessions, native=True) as receiver:
        handled = _count_python_path(receiver)
        receiver.watch = LiveWatch(cases=frozenset({2}))
        receiver.tick(time.time_ns())  # applied before the first datagram
        for round_ in range(rounds):
            # What the loader hands over each time: equal, never the same object.
            receiver.watch = LiveWatch(cases=frozenset({2}))
            _send_and_drain(
                receiver,
                [
                    _datagram(mid, round_ * 1000 + n)
                    for mid in range(1, sessions + 1)
                    for n in (0, 1)
                ],
            )
            receiver.tick(time.time_ns())
        receiver.finish(time.time_ns())
    assert set(handled) == set(range(1, sessions + 1))
    assert max(handled.values()) == 1


@pytest.mark.parametrize("native", NATIVE)
def test_only_watched_sessions_keep_a_live_sample_and_a_new_watch_applies(
    tmp_path: Path, native: bool
) -> None:
    with _receiver(PcapStore(tmp_path), 3, native=native) as receiver:
        receiver.watch = LiveWatch(cases=frozenset({2}))
        batch = [_datagram(mid, number) for number in range(5) for mid in (1, 2, 3)]
        _send_and_drain(receiver, batch)
        receiver.tick(time.time_ns())
        receiver.watch = LiveWatch(intercepts=frozenset({3}))
        receiver.tick(time.time_ns())  # a new watch applies from the next tick on
        _send_and_drain(receiver, batch)
        receiver.tick(time.time_ns())
        receiver.finish(time.time_ns())
        first, _, second = receiver.snapshots[:3]  # type: ignore[attr-defined]
    samples = [
        {mid: len(delta.recent) for (_, mid, _), delta in each.sessions.items()}
        for each in (first, second)
    ]
    assert samples == [{1: 0, 2: 5, 3: 0}, {1: 0, 2: 0, 3: 5}]


@pytest.mark.parametrize("native", NATIVE)
def test_idle_sessions_are_let_go_and_come_back_whole(tmp_path: Path, native: bool) -> None:
    with _receiver(PcapStore(tmp_path), 2, native=native) as receiver:
        _send_and_drain(receiver, [_datagram(1, n) for n in range(4)] + [_datagram(2, 9)])
        receiver.tick(time.time_ns())
        later = time.time_ns() + (ACTIVE_SECONDS + 1) * 1_000_000_000
        receiver.tick(later)  # both idle past ACTIVE_SECONDS: let go
        _send_and_drain(receiver, [_datagram(1, n) for n in range(4, 10)])
        receiver.tick(later + 1)
        receiver.finish(later + 2)
        snapshots: list[Snapshot] = receiver.snapshots  # type: ignore[attr-defined]
    assert [each.active_sessions for each in snapshots[:3]] == [2, 0, 1]
    stored = Counter[int]()
    for snapshot in snapshots:
        for (_, mid, _), delta in snapshot.sessions.items():
            stored[mid] += delta.stored
    assert stored == {1: 10, 2: 1}
    assert _stored(tmp_path)[1] == list(range(10))


def test_deferred_opens_keep_every_packet_in_order(tmp_path: Path) -> None:
    store = PcapStore(tmp_path)
    store.open_budget_ns = 0  # every open over budget: all deferred
    keys = [SessionKey(f"L{index}", ROUTER, index, 1) for index in range(20)]
    for number in range(3):
        for key in keys:
            assert store.write(key, 1_000 + number, number.to_bytes(2) * 10, 101)
    assert store.pending_opens == 20
    assert not list(tmp_path.rglob("*.part"))  # nothing created yet
    store.flush()  # nowhere to write yet: kept in memory
    store.open_pending(None)
    assert store.pending_opens == 0
    assert len(list(tmp_path.rglob("*.pcap.part"))) == 20
    store.open_budget_ns = 0
    store.write(SessionKey("late", ROUTER, 99, 1), 2_000, b"\x07" * 20, 101)
    closed = store.close_all()  # the last deferred one is opened to be closed
    assert sorted(file.packets for file in closed) == [1] + [3] * 20
    for path in tmp_path.rglob("*.pcap"):
        if "late" in str(path):
            continue
        with path.open("rb") as stream:
            assert [frame[3][:2] for frame in iter_frames(stream)] == [
                number.to_bytes(2) for number in range(3)
            ]


def test_a_deferred_open_that_fails_counts_its_packets_as_not_stored(tmp_path: Path) -> None:
    root = tmp_path / "sessions"
    store = PcapStore(root)
    store.open_budget_ns = 0
    key = SessionKey("L", ROUTER, 1, 1)
    for number in range(4):
        assert store.write(key, 1_000 + number, b"x" * 20, 101)
    root.parent.chmod(0o700)
    root.write_bytes(b"")  # the root is a file now: no directory can be made under it
    store.open_pending(None)
    assert store.store_errors == {errno.errorcode[errno.ENOTDIR]: 4}
    assert store.pending_opens == 0
    assert store.open_files() == []
    # The session's next packet tries again (and fails the same, counted as one).
    store.open_budget_ns = None
    assert not store.write(key, 2_000, b"y" * 20, 101)
    assert store.store_errors == {errno.errorcode[errno.ENOTDIR]: 5}


def test_a_file_closed_by_age_while_its_open_was_deferred_is_opened_then_closed(
    tmp_path: Path,
) -> None:
    store = PcapStore(tmp_path, rotate_seconds=1)
    store.open_budget_ns = 0
    key = SessionKey("L", ROUTER, 1, 1)
    store.write(key, 1_000, b"x" * 20, 101)
    (file,) = store._files.values()
    assert file.fd == PENDING_FD
    store.close_expired(1_000 + 2 * 10**9)
    (closed,) = store.take_closed()
    assert (closed.packets, closed.sha256 != "") == (1, True)
    assert (tmp_path / closed.path).exists()


def test_capture_without_a_receiver_keeps_its_sessions_apart_between_ticks(
    tmp_path: Path,
) -> None:
    """The offline path (import_pcap) hands sessions on per tick like the live one."""
    snapshots: list[Snapshot] = []
    capture = DatagramPipeline(
        _gate(2), PcapStore(tmp_path), on_tick=[snapshots.append], start_ns=0
    )
    for number in range(3):
        capture.handle(_datagram(1, number), ROUTER, 1_000 + number)
    capture.tick(10_000)
    capture.handle(_datagram(2, 7), ROUTER, 20_000)
    capture.tick(30_000)
    capture.finish(40_000)
    assert [
        {mid: delta.packets for (_, mid, _), delta in each.sessions.items()} for each in snapshots
    ] == [{1: 3}, {2: 1}, {}]


@pytest.mark.parametrize("native", NATIVE)
def test_a_session_handed_on_is_not_let_go_in_the_same_tick(tmp_path: Path, native: bool) -> None:
    """A tick long after a session's packets (an import's capture times, a stalled loop)
    hands its delta on; letting the successor go in the same tick would leave the C path
    bound to a delta nobody hands on, and its next packets uncounted."""
    with _receiver(PcapStore(tmp_path), 1, native=native) as receiver:
        _send_and_drain(receiver, [_datagram(1, n) for n in range(3)])
        later = time.time_ns() + (ACTIVE_SECONDS + 1) * 1_000_000_000
        receiver.tick(later)
        _send_and_drain(receiver, [_datagram(1, n) for n in range(3, 8)])
        receiver.tick(later + 1)
        receiver.finish(later + 2)
        snapshots: list[Snapshot] = receiver.snapshots  # type: ignore[attr-defined]
    assert sum(delta.stored for each in snapshots for delta in each.sessions.values()) == 8


def test_counts_wait_while_their_files_wait_to_be_opened(tmp_path: Path) -> None:
    """Packets of a deferred file are in memory only: counted (handed on) once the file
    exists and they are written, never before (the counters never run ahead of files)."""
    snapshots: list[Snapshot] = []
    store = PcapStore(tmp_path)
    capture = DatagramPipeline(_gate(3), store, on_tick=[snapshots.append], start_ns=0)
    capture.handle(_datagram(3, 0), ROUTER, 500)  # session 3's file opens at once
    store.open_budget_ns = 0
    for number in range(1, 5):
        for mid in (1, 2, 3):
            capture.handle(_datagram(mid, number), ROUTER, 1_000 + number)
    capture.tick(10_000)
    # Sessions 1 and 2 wait for their files; session 3 (its file exists) is counted.
    assert {mid: delta.stored for (_, mid, _), delta in snapshots[-1].sessions.items()} == {3: 5}
    assert len(list(tmp_path.rglob("*.part"))) == 1
    store.open_pending(None)
    capture.tick(20_000)
    assert {mid: delta.stored for (_, mid, _), delta in snapshots[-1].sessions.items()} == {
        1: 4,
        2: 4,
    }
    assert sorted(file.packets for file in snapshots[-1].open_files) == [4, 4, 5]
