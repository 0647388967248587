"""receiver._fastpath (the receive loop's C part) against DatagramPipeline.handle (the definition),
through real loopback sockets: any traffic, cut into any rounds with ticks between them,
gives the same counters, session deltas, unclaimed streams and stored files; and so do
the datagrams C drops itself (malformed, unknown router, unclaimed intercept id, refused
stream), with the unclaimed streams' per-source limits and aggregate rows."""

from __future__ import annotations

import dataclasses
import hashlib
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver import pipeline, receive_loop
from receiver.gate import Gate, RouterRule
from receiver.jmirror import DecodeError, classify_datagram
from receiver.pcap_reader import iter_frames
from receiver.pipeline import DatagramPipeline, SessionDelta, Snapshot
from receiver.receive_loop import Receiver
from receiver.store import PcapStore, SessionKey
from receiver.traffic import (
    every_mirrored_kind,
    ipv4_udp,
    jmirror_datagram,
)
from tests.receiver.test_handle_batch import INNER, _rule

pytestmark = pytest.mark.skipif(
    receive_loop.FastReceiver is None, reason="receiver._fastpath is not built (see setup.py)"
)

# Open to the end of time: the gate's spans then end at 2**63, one past C's largest time.
FOREVER = (0, 2**63)
ROUTERS = [RouterRule(1, "127.0.0.1"), RouterRule(2, "127.0.0.2")]
SOURCES = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]  # the last is no registered router


# Mirror id 1: stored; 2: metadata only; 4: its warrant ended long ago; 3: nobody's; 5:
# only its session 7 (sid 8 is no_intercept, a refused stream of a claimed id).
RULES = [
    _rule(1, 1, FOREVER),
    _rule(2, 2, FOREVER, keep=False),
    _rule(4, 4, (0, 1_000_000_000)),
    dataclasses.replace(_rule(5, 5, FOREVER), sid=7),
]
# Every inner kind the decoder knows (IPv6 extension headers, fragments, PPP with a
# compressed protocol...), as bytes: cut or with a byte changed, they are the edge cases
# of C's malformed check.
MIRRORED = [bytes(each.packet) for each in every_mirrored_kind()]


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    inner = bytearray(draw(st.sampled_from(MIRRORED)))
    if draw(st.booleans()):
        del inner[draw(st.integers(0, len(inner))) :]
    if inner and draw(st.booleans()):
        inner[draw(st.integers(0, len(inner) - 1))] = draw(st.integers(0, 255))
    return bytes(inner)


@st.composite
def datagram(draw: st.DrawFn) -> tuple[bytes, str]:
    source = draw(st.sampled_from(SOURCES))
    kind = draw(st.integers(0, 12))
    if kind == 9:  # junk, or a valid datagram cut short
        return draw(st.binary(max_size=60)), source
    if kind == 10:  # a random mid, as junk decodes: a new unclaimed stream each
        mid = draw(st.integers(0, 2**32 - 1))
        return jmirror_datagram(INNER[0], mid=mid, sid=draw(st.integers(0, 3))), source
    mid = draw(st.sampled_from([1, 1, 1, 1, 2, 3, 4, 5, 5]))
    sid = draw(st.sampled_from([7, 7, 8]))
    if kind == 11:  # a damaged inner packet: malformed or not, as the decoder says
        return jmirror_datagram(draw(damaged()), mid=mid, sid=sid), source
    inner = INNER[kind % len(INNER)]
    return jmirror_datagram(inner, mid=mid, sid=sid), source


@st.composite
def rounds(draw: st.DrawFn) -> list[list[tuple[bytes, str]]]:
    """Rounds of datagrams (each drained, then a tick); runs of one stream, as routers
    send them, so streams bind and stay in C."""
    result = []
    for _ in range(draw(st.integers(1, 4))):
        runs = draw(st.lists(st.tuples(datagram(), st.integers(1, 20)), max_size=8))
        result.append([item for item, length in runs for _ in range(length)])
    return result


@contextmanager
def senders() -> Iterator[dict[str, socket.socket]]:
    with ExitStack() as stack:
        sockets = {}
        for address in SOURCES:
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            sock.bind((address, 0))
            sockets[address] = sock
        yield sockets


def _store(root: Path) -> PcapStore:
    # Small files and buffers: rotations and flushes fall inside C's runs too.
    return PcapStore(root, rotate_bytes=1500, rotate_seconds=3600, buffer_bytes=400)


def _files(root: Path) -> dict[str, list[list[bytes]]]:
    """Each session directory's files in order (by their sequence number), as the
    packets they hold."""
    files: dict[str, list[list[bytes]]] = {}
    for path in sorted(root.rglob("*.pcap"), key=lambda p: (p.parent.name, p.name[-11:])):
        with path.open("rb") as stream:
            files.setdefault(path.parent.name, []).append(
                [frame[3] for frame in iter_frames(stream)]
            )
    return files


def _deltas(snapshots: list[Snapshot]) -> list[dict[Any, Any]]:
    def summary(delta: SessionDelta) -> tuple[Any, ...]:
        return (
            delta.intercept_pk,
            delta.packets,
            delta.bytes,
            delta.stored,
            [data for _, data in delta.recent],
        )

    return [
        {key: summary(delta) for key, delta in snapshot.sessions.items()} for snapshot in snapshots
    ]


def _unclaimed(snapshots: list[Snapshot]) -> list[dict[Any, Any]]:
    return [
        {key: (entry.reason, entry.count) for key, entry in snapshot.unclaimed.items()}
        for snapshot in snapshots
    ]


def _counters(capture: DatagramPipeline) -> tuple[Any, ...]:
    c = capture.counters
    return (
        c.datagrams,
        c.bytes,
        c.malformed,
        c.unstorable,
        c.internal_error,
        dict(c.drops),
        c.unclaimed_overflow,
        c.unclaimed_aggregated,
    )


def _through_c(traffic: list[list[tuple[bytes, str]]], root: Path) -> tuple[Any, ...]:
    snapshots: list[Snapshot] = []
    receiver = Receiver(
        [("127.0.0.1", 0)], Gate(ROUTERS, RULES), _store(root), on_tick=[snapshots.append]
    )
    assert receiver.native
    sock = receiver.sockets[0]
    sock.setblocking(False)
    # The loop's own drain function, driven by hand so that ticks fall where the test says.
    drain = receiver._drainer(sock)
    port = receiver.addresses[0][1]
    started = time.time_ns()
    offset = started - time.monotonic_ns()
    with senders() as by_source:
        for batch in traffic:
            for payload, source in batch:
                by_source[source].sendto(payload, ("127.0.0.1", port))
            for _ in range(len(batch) // 64 + 2):
                drain()
            receiver.tick(time.time_ns())
    drops = receive_loop.kernel_drops(sock)
    receiver.finish(time.time_ns())
    ended = time.time_ns()
    receiver.close_sockets()
    assert drops == 0, "the kernel dropped datagrams: the comparison would be meaningless"
    assert receiver.counters.internal_error == 0
    # Every record carries a kernel receive time from during the run (unless a time sync
    # stepped the wall clock meanwhile, as this VM's does now and then: then it can't tell).
    clock_stepped = abs(ended - time.monotonic_ns() - offset) > 1_000_000
    for path in [] if clock_stepped else root.rglob("*.pcap"):
        with path.open("rb") as stream:
            assert all(started <= frame[1] <= ended for frame in iter_frames(stream))
    return (
        _counters(receiver),
        _deltas(snapshots),
        _unclaimed(snapshots),
        _files(root),
        receiver.socket_counters()[0].datagrams,
    )


def _through_python(traffic: list[list[tuple[bytes, str]]], root: Path) -> tuple[Any, ...]:
    snapshots: list[Snapshot] = []
    capture = DatagramPipeline(Gate(ROUTERS, RULES), _store(root), on_tick=[snapshots.append])
    for batch in traffic:
        for payload, source in batch:
            capture.handle(payload, source, time.time_ns())
        capture.tick(time.time_ns())
    capture.finish(time.time_ns())
    total = sum(len(batch) for batch in traffic)
    return (
        _counters(capture),
        _deltas(snapshots),
        _unclaimed(snapshots),
        _files(root),
        total,
    )


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(rounds())
def test_the_c_path_gives_what_handling_each_datagram_gives(traffic):
    # Small unclaimed limits, so that the per-source aggregate, the room kept for new
    # sources and the overflow are reached within a few rounds.
    with (
        mock.patch.multiple(pipeline, UNCLAIMED_STREAMS_PER_SOURCE=3, UNCLAIMED_PER_TICK=12),
        mock.patch.object(receive_loop, "UNCLAIMED_STREAMS_PER_SOURCE", 3),
        tempfile.TemporaryDirectory() as native,
        tempfile.TemporaryDirectory() as python,
    ):
        assert _through_c(traffic, Path(native)) == _through_python(traffic, Path(python))


def test_a_stream_python_lists_apart_is_not_folded_into_the_aggregate_by_c():
    """Found by the property test above: an unregistered source's first stream is decided
    by Python (its own row); its next streams are counted by C, and once they reach the
    per-source limit C puts its new streams in the source's aggregate row, but not the
    first stream's later datagrams, since Python's table lists that stream apart."""
    # Then a datagram Python decides (C hands its aggregate row over), and another stream
    # for the aggregate: counted as aggregated too, though the row is there already.
    traffic = [
        [
            (jmirror_datagram(INNER[0], mid=mid, sid=sid), source)
            for source, mid, sid in [
                ("127.0.0.3", 1, 7),
                ("127.0.0.3", 1, 8),
                ("127.0.0.3", 2, 7),
                ("127.0.0.3", 3, 7),
                ("127.0.0.3", 1, 7),
                ("127.0.0.1", 9, 7),
                ("127.0.0.3", 4, 7),
            ]
        ]
    ]
    with (
        mock.patch.multiple(pipeline, UNCLAIMED_STREAMS_PER_SOURCE=3, UNCLAIMED_PER_TICK=12),
        mock.patch.object(receive_loop, "UNCLAIMED_STREAMS_PER_SOURCE", 3),
        tempfile.TemporaryDirectory() as native,
        tempfile.TemporaryDirectory() as python,
    ):
        through_c = _through_c(traffic, Path(native))
        assert through_c == _through_python(traffic, Path(python))
    assert through_c[2][0] == {
        ("127.0.0.3", 1, 7): ("unknown_router", 2),
        ("127.0.0.3", 1, 8): ("unknown_router", 1),
        ("127.0.0.3", 2, 7): ("unknown_router", 1),
        ("127.0.0.3", pipeline.AGGREGATE_MID, 0): ("unknown_router", 2),
        ("127.0.0.1", 9, 7): ("no_intercept", 1),
    }
    assert through_c[0][7] == 2  # unclaimed_aggregated


def test_a_new_gate_reaches_c_even_when_clearing_the_old_bindings_failed():
    """clear() can fail (handing the live sample on: no memory) after forgetting every
    binding and verdict; the new gate's intercept ids must still reach C, or C drops a
    stream the new gate claims as no_intercept by the old gate's ids."""
    failures = [0]

    class FailingClear:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._native = real(*args, **kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._native, name)

        def clear(self, *args: bool) -> None:
            self._native.clear(*args)
            if failures[0]:
                failures[0] -= 1
                raise MemoryError

    real = receive_loop.FastReceiver
    claimed = jmirror_datagram(INNER[0], mid=3, sid=1)
    with (
        mock.patch.object(receive_loop, "FastReceiver", FailingClear),
        tempfile.TemporaryDirectory() as directory,
        senders() as by_source,
    ):
        receiver = Receiver([("127.0.0.1", 0)], Gate(ROUTERS, RULES), _store(Path(directory)))
        sock = receiver.sockets[0]
        sock.setblocking(False)
        drain = receiver._drainer(sock)
        by_source["127.0.0.2"].sendto(claimed, receiver.addresses[0])
        drain()  # nobody's mirror id 3: no_intercept
        receiver.gate = Gate(ROUTERS, [*RULES, _rule(6, 3, FOREVER)])
        failures[0] = 1
        for payload in [jmirror_datagram(INNER[0], mid=9, sid=1), claimed, claimed]:
            by_source["127.0.0.2"].sendto(payload, receiver.addresses[0])
        drain()  # mid 9: no_intercept, decided by Python; mid 3 now claimed: stored
        receiver.finish(time.time_ns())
        receiver.close_sockets()
    assert failures[0] == 0
    assert receiver.counters.internal_error == 1
    assert dict(receiver.counters.drops) == {"no_intercept": 2}


def test_a_busy_stream_is_stored_by_c_and_its_live_packets_are_the_latest():
    """The comparison above is not vacuous: C does store a bound stream, rotating and
    flushing through Python, and the live view gets the latest packets as bytes."""
    payloads = [
        jmirror_datagram(bytes(ipv4_udp(sport=1000 + index)), mid=1, sid=7) for index in range(50)
    ]
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        snapshots: list[Snapshot] = []
        store = _store(root)
        receiver = Receiver(
            [("127.0.0.1", 0)], Gate(ROUTERS, RULES), store, on_tick=[snapshots.append]
        )
        sock = receiver.sockets[0]
        sock.setblocking(False)
        drain = receiver._drainer(sock)
        with senders() as by_source:
            for payload in payloads:
                by_source["127.0.0.1"].sendto(payload, receiver.addresses[0])
        generation = store.generation
        errors = receiver.counters.internal_error
        drain()
        # Fewer files opened than packets stored: most went through C.
        assert 0 < store.generation - generation < 25
        assert receiver.counters.internal_error == errors
        receiver.tick(time.time_ns())
        receiver.finish(time.time_ns())
        receiver.close_sockets()
        (delta,) = snapshots[0].sessions.values()
        assert (delta.packets, delta.stored) == (50, 50)
        recent = list(delta.recent)
        assert [data for _, data in recent] == payloads[-16:]
        assert all(type(data) is bytes for _, data in recent)
        stored = [
            packet
            for file in _files(root)["LIID1_127.0.0.1_mid-00000001_sid-00000007"]
            for packet in file
        ]
        assert stored == [payload[8:] for payload in payloads]


def _fast_receiver(sock: socket.socket, **overrides: int) -> Any:
    options = {
        "batch": 8,
        "max_datagram": 2048,
        "rotate_bytes": 1 << 20,
        "buffer_bytes": 1 << 16,
    }
    options.update(overrides)
    return receive_loop.FastReceiver(sock.fileno(), sock.family, **options)


@pytest.fixture
def receiving() -> Iterator[tuple[socket.socket, socket.socket]]:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as source,
    ):
        sink.bind(("127.0.0.1", 0))
        sink.setblocking(False)
        source.connect(sink.getsockname())
        yield sink, source


def test_nothing_waiting_is_zero_and_the_counts_start_empty(receiving):
    sink, _ = receiving
    fast = _fast_receiver(sink)
    assert fast.receive() == 0
    assert fast.store(0) == 0
    assert fast.take_counts() == (0, 0, 0, 0)


def test_an_unbound_stream_goes_to_python_with_its_source_and_time(receiving):
    sink, source = receiving
    fast = _fast_receiver(sink)
    payload = jmirror_datagram(bytes(ipv4_udp()), mid=1, sid=7)
    before = time.time_ns()
    source.send(payload)
    assert fast.receive() == 1
    assert fast.store(0) == 0  # nothing bound: the datagram is Python's
    data, key, time_ns = fast.datagram(0)
    assert data == payload
    assert type(data) is bytes  # a copy: Python may keep it past the next receive()
    assert socket.inet_ntoa(key.to_bytes(4, sys.byteorder)) == "127.0.0.1"
    assert before - 10**9 <= time_ns <= time.time_ns()
    assert fast.take_counts() == (1, len(payload), 0, 0)


def test_a_bound_stream_stops_at_its_span_and_at_the_flush_threshold(receiving):
    sink, source = receiving
    store = PcapStore(Path(tempfile.mkdtemp()), buffer_bytes=200)
    fast = _fast_receiver(sink, buffer_bytes=200)
    key = SessionKey("L", "127.0.0.1", 1, 7)
    payload = jmirror_datagram(bytes(ipv4_udp()), mid=1, sid=7)
    store.write(key, time.time_ns(), payload[8:], 101)  # opens the file
    file = store.open_file(key, 101)
    delta = SessionDelta(1, 1, 1, "L", 0, key)
    for _ in range(4):
        source.send(payload)
    assert fast.receive() == 4
    fast.bind(0, 101, 0, 1, delta, file)  # a span long past: C must not take it
    assert fast.store(0) == 0
    fast.bind(0, 101, 0, 2**62, delta, file)
    record = 16 + len(payload) - 8
    held = len(file.buffer)
    # As many records as fit below the flush threshold, then Python's turn (which
    # appends and flushes).
    expected = 0
    while held + (expected + 1) * record < 200 and expected < 4:
        expected += 1
    assert 1 <= expected < 4
    assert fast.store(0) == expected
    assert (delta.packets, delta.stored) == (expected, expected)
    assert len(file.buffer) == held + expected * record
    assert file.packets == 1 + expected
    store.close_all()


def test_a_truncated_datagram_is_counted_and_skipped(receiving):
    sink, source = receiving
    fast = _fast_receiver(sink, max_datagram=100)
    source.send(b"\x00" * 200)
    source.send(b"\x01" * 50)
    assert fast.receive() == 2
    assert fast.truncated == 1
    assert fast.store(0) == 1  # the truncated one is passed over, the next is Python's
    with pytest.raises(ValueError, match="truncated"):
        fast.datagram(0)
    assert fast.datagram(1)[0] == b"\x01" * 50
    assert fast.take_counts() == (1, 50, 0, 0)


def test_ipv6_sources_keep_their_address_and_scope(receiving):
    with (
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sink,
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as source,
    ):
        sink.bind(("::1", 0))
        sink.setblocking(False)
        source.sendto(b"jmirror?", sink.getsockname()[:2])
        fast = _fast_receiver(sink)
        assert fast.receive() == 1
        _, key, _ = fast.datagram(0)
        assert key == socket.inet_pton(socket.AF_INET6, "::1") + bytes(4)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch": 0}, "batch"),
        ({"batch": 1025}, "batch"),
        ({"max_datagram": 0}, "max_datagram"),
        ({"max_datagram": 70_000}, "max_datagram"),
        ({"rotate_bytes": 0}, "positive"),
    ],
)
def test_bad_settings_are_refused(receiving, options, message):
    sink, _ = receiving
    with pytest.raises(ValueError, match=message):
        _fast_receiver(sink, **options)


def test_bad_indexes_and_bindings_are_refused(receiving):
    sink, source = receiving
    fast = _fast_receiver(sink)
    source.send(jmirror_datagram(bytes(ipv4_udp()), mid=1, sid=7))
    assert fast.receive() == 1
    with pytest.raises(IndexError):
        fast.store(2)
    with pytest.raises(IndexError):
        fast.datagram(1)
    with pytest.raises(IndexError):
        fast.bind(5, 101, 0, 1, object(), object())
    with pytest.raises(ValueError, match="linktype"):
        fast.bind(0, 1, 0, 1, object(), object())


def test_a_file_without_a_bytearray_buffer_is_an_error_not_a_crash(receiving):
    sink, source = receiving
    fast = _fast_receiver(sink)
    payload = jmirror_datagram(bytes(ipv4_udp()), mid=1, sid=7)
    source.send(payload)
    source.send(payload)
    assert fast.receive() == 2

    class NotAFile:
        fd = 3
        size = 0
        deadline_ns = 2**62
        buffer = b"immutable"

    fast.bind(
        0, 101, 0, 2**62, SessionDelta(1, 1, 1, "L", 0, SessionKey("L", "x", 1, 7)), NotAFile()
    )
    with pytest.raises(TypeError, match="bytearray"):
        fast.store(0)
    assert fast.failed_at == 0  # nothing stored: Python takes it from there


def test_a_closed_socket_raises(receiving):
    sink, _ = receiving
    fast = _fast_receiver(sink)
    sink.close()
    with pytest.raises(OSError, match="Bad file descriptor"):
        fast.receive()


def test_a_stream_from_an_ipv6_router_is_stored_by_c_too():
    payloads = [jmirror_datagram(bytes(ipv4_udp(sport=index)), mid=1, sid=9) for index in range(30)]
    with tempfile.TemporaryDirectory() as directory:
        store = _store(Path(directory))
        receiver = Receiver(
            [("::1", 0)], Gate([RouterRule(3, "::1")], RULES), store, on_tick=[lambda _: None]
        )
        sock = receiver.sockets[0]
        sock.setblocking(False)
        drain = receiver._drainer(sock)
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sender:
            for payload in payloads:
                sender.sendto(payload, receiver.addresses[0])
        generation = store.generation
        drain()
        assert 0 < store.generation - generation < 15  # most went through C
        closed = receiver.finish(time.time_ns())
        receiver.close_sockets()
        assert sum(file.packets for file in closed) == 30
        assert {file.session.router for file in closed if file.session} == {"::1"}
        stored = _files(Path(directory))["LIID1_--1_mid-00000001_sid-00000009"]
        assert [packet for file in stored for packet in file] == [p[8:] for p in payloads]


def test_dropped_datagrams_are_decided_in_c_after_the_first_of_each_source():
    """The comparison above is not vacuous for drops: Python decides the first datagram
    of an unregistered source, of a registered router's unclaimed intercept id and of a
    refused stream; C drops the rest, counts them and lists their streams as Python
    would have."""
    junk = [
        ("127.0.0.3", jmirror_datagram(INNER[0], mid=9, sid=1)),  # unknown router
        ("127.0.0.3", jmirror_datagram(INNER[0], mid=1, sid=7)),
        ("127.0.0.2", jmirror_datagram(INNER[0], mid=3, sid=1)),  # no intercept
        ("127.0.0.2", jmirror_datagram(INNER[0], mid=5, sid=8)),  # refused stream
        ("127.0.0.2", b"\x00\x00\x00\x01\x00\x00\x00\x07\x45"),  # malformed
    ]
    with tempfile.TemporaryDirectory() as directory:
        snapshots: list[Snapshot] = []
        receiver = Receiver(
            [("127.0.0.1", 0)],
            Gate(ROUTERS, RULES),
            _store(Path(directory)),
            on_tick=[snapshots.append],
        )
        handled: list[bytes] = []
        handle = receiver.pipeline.handle

        def counting_handle(payload: bytes, source: str, time_ns: int) -> Any:
            handled.append(payload)
            return handle(payload, source, time_ns)

        receiver.pipeline.handle = counting_handle  # type: ignore[method-assign]
        sock = receiver.sockets[0]
        sock.setblocking(False)
        drain = receiver._drainer(sock)
        with senders() as by_source:
            for _ in range(20):
                for source, payload in junk:
                    by_source[source].sendto(payload, receiver.addresses[0])
        for _ in range(4):
            drain()
        receiver.tick(time.time_ns())
        receiver.finish(time.time_ns())
        receiver.close_sockets()
    # The first of each source (and of the refused stream) went to Python, not the rest.
    assert len(handled) <= 4
    counters = receiver.counters
    assert counters.datagrams == 100
    assert counters.malformed == 20
    assert dict(counters.drops) == {"unknown_router": 40, "no_intercept": 40}
    assert {key: (each.reason, each.count) for key, each in snapshots[0].unclaimed.items()} == {
        ("127.0.0.3", 9, 1): ("unknown_router", 20),
        ("127.0.0.3", 1, 7): ("unknown_router", 20),
        ("127.0.0.2", 3, 1): ("no_intercept", 20),
        ("127.0.0.2", 5, 8): ("no_intercept", 20),
    }


def _valid_by_c(payloads: list[bytes]) -> list[int]:
    """The datagrams C's malformed check (jmirror_valid) lets through: C passes over the
    ones it finds malformed and stops at the others."""
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as source,
    ):
        sink.bind(("127.0.0.1", 0))
        sink.setblocking(False)
        source.connect(sink.getsockname())
        fast = _fast_receiver(sink, batch=64)
        fast.set_gate([], 1)
        for payload in payloads:
            source.send(payload)
        assert fast.receive() == len(payloads)
        valid = []
        index = fast.store(0)
        while index < len(payloads):
            valid.append(index)
            index = fast.store(index + 1)
        assert fast.take_dropped()[0] == len(payloads) - len(valid)
    return valid


def _valid_by_the_decoder(payloads: list[bytes]) -> list[int]:
    valid = []
    for index, payload in enumerate(payloads):
        try:
            classify_datagram(payload)
        except DecodeError:
            continue
        valid.append(index)
    return valid


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(damaged(), st.binary(max_size=80)), min_size=1, max_size=8))
def test_c_calls_malformed_exactly_what_the_decoder_refuses(inners):
    payloads = [jmirror_datagram(inner, mid=3, sid=1) for inner in inners]
    payloads += [inner for inner in inners if len(inner) < 12]  # too short for a header
    assert _valid_by_c(payloads) == _valid_by_the_decoder(payloads)


def _ipv6(next_header: int, after: bytes) -> bytes:
    header = bytes([0x60, 0, 0, 0]) + len(after).to_bytes(2, "big") + bytes([next_header, 64])
    return header + bytes(32) + after


# The edges of the decoder's checks that random damage seldom reaches.
EDGE_INNERS = [
    b"",  # nothing after the header
    b"\x4f\x00\x00\x1c" + bytes(24),  # IPv4 header length 60 in a 28-byte packet
    b"\x45\x00\x00\x14" + bytes(16),  # IPv4 header alone: valid
    b"\x46\x00\x00\x14" + bytes(16),  # header length 24 > 20
    b"\x44\x00\x00\x14" + bytes(16),  # header length 16
    _ipv6(0, bytes([59, 0]) + bytes(6)),  # hop-by-hop filling the packet exactly: valid
    _ipv6(0, bytes([59, 1]) + bytes(6)),  # a 16-byte extension header in 8 bytes
    _ipv6(0, bytes([44, 0]) + bytes(6) + bytes([59, 0]) + bytes(6)),  # then a fragment
    _ipv6(51, bytes([59, 0]) + bytes(6)),  # authentication: (0 + 2) * 4 = 8 bytes
    _ipv6(51, bytes([59, 1]) + bytes(6)),  # 12 bytes in 8
    _ipv6(51, bytes([59, 2]) + bytes(14)),  # (2 + 2) * 4 = 16 bytes, exactly: valid
    _ipv6(60, bytes(4)),  # an extension header cut short
    _ipv6(17, b""),  # IPv6 header alone: valid
    b"\xff\x03",  # PPP without protocol
    b"\xff\x03\x00",  # PPP with half a protocol
    b"\xff\x03\x21" + b"\x45\x00\x00\x14" + bytes(16),  # compressed IPv4: valid
    b"\xff\x03\x00\x21" + b"\x45\x00\x00\x15" + bytes(16),  # IPv4 length off by one
    b"\xff\x03\x00\x57" + _ipv6(59, b"") + b"x",  # IPv6 in PPP with a byte too many
    b"\xff\x03\xc0\x21\x01",  # LCP: not IP, valid
    b"\xff\x04",  # not PPP framing: an unknown inner, valid
]


def test_c_calls_malformed_what_the_decoder_refuses_at_the_edges():
    payloads = [jmirror_datagram(inner, mid=3, sid=1) for inner in EDGE_INNERS]
    payloads += [b"", b"\x00" * 7, b"\x00" * 8]
    valid = _valid_by_the_decoder(payloads)
    assert 0 < len(valid) < len(payloads)
    assert _valid_by_c(payloads) == valid


def test_c_drop_tables_refuse_bad_input(receiving):
    sink, source = receiving
    fast = _fast_receiver(sink)
    source.send(jmirror_datagram(INNER[0], mid=3, sid=1))
    assert fast.receive() == 1
    with pytest.raises(ValueError, match="positive"):
        fast.set_gate([1], 0)
    with pytest.raises(ValueError, match="30 bits"):
        fast.set_gate([2**30], 1)
    with pytest.raises(TypeError):
        fast.set_gate(None, 1)
    fast.set_gate([5, 1], 1)
    with pytest.raises(IndexError):
        fast.refuse(1, 1, 0, 1)
    with pytest.raises(ValueError, match="reason"):
        fast.refuse(0, 4, 0, 1)
    fast.refuse(0, 1, 0, 2**62)  # its source is no router: C drops the rest
    assert fast.store(0) == 1
    assert fast.take_dropped() == (
        0,
        1,
        0,
        0,
        [(fast.datagram(0)[1], 3, 1, 0, 1, 1, *[fast.datagram(0)[2]] * 2)],
    )
    # A gate C could not take leaves C deciding nothing, rather than by the old gate.
    with pytest.raises(ValueError, match="30 bits"):
        fast.set_gate([2**30], 1)
    assert fast.store(0) == 0
    assert fast.take_dropped() == (0, 0, 0, 0, [])


def test_a_file_closed_for_quiet_while_c_has_its_stream_bound_goes_on_in_the_next_file():
    """Idle close takes the path rotation by age takes: Python closes the file C writes
    (its descriptor becomes CLOSED_FD), C hands the stream's next datagram to Python,
    which opens the session's next file and binds it again, and C stores the rest."""
    first = [jmirror_datagram(bytes(ipv4_udp(sport=1000 + n)), mid=1, sid=7) for n in range(30)]
    second = [jmirror_datagram(bytes(ipv4_udp(sport=2000 + n)), mid=1, sid=7) for n in range(30)]
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        snapshots: list[Snapshot] = []
        store = PcapStore(root, buffer_bytes=1 << 16, quiet_seconds=60)
        receiver = Receiver(
            [("127.0.0.1", 0)], Gate(ROUTERS, RULES), store, on_tick=[snapshots.append]
        )
        handled: list[bytes] = []
        handle = receiver.pipeline.handle

        def counting_handle(payload: bytes, source: str, time_ns: int) -> Any:
            handled.append(payload)
            return handle(payload, source, time_ns)

        receiver.pipeline.handle = counting_handle  # type: ignore[method-assign]
        sock = receiver.sockets[0]
        sock.setblocking(False)
        drain = receiver._drainer(sock)
        with senders() as by_source:
            for payload in first:
                by_source["127.0.0.1"].sendto(payload, receiver.addresses[0])
            drain()
            receiver.tick(time.time_ns())
            assert [file.packets for file in store.open_files()] == [30]
            assert snapshots[-1].closed_files == []
            # A minute later with nothing received: the file closes, hashed.
            receiver.tick(time.time_ns() + 61 * 10**9)
            (closed,) = snapshots[-1].closed_files
            assert store.open_files() == []
            assert closed.packets == 30
            assert closed.sha256 == hashlib.sha256((root / closed.path).read_bytes()).hexdigest()
            generation = store.generation
            for payload in second:
                by_source["127.0.0.1"].sendto(payload, receiver.addresses[0])
            drain()
        # Python opened one file for the 30 datagrams and bound it: C stored the rest.
        assert store.generation - generation == 1
        assert handled == [first[0], second[0]]
        assert receiver.counters.internal_error == 0
        receiver.finish(time.time_ns())
        receiver.close_sockets()
        files = _files(root)["LIID1_127.0.0.1_mid-00000001_sid-00000007"]
        assert files == [
            [payload[8:] for payload in first],
            [payload[8:] for payload in second],
        ]
