"""receiver._fastpath on a Contrail socket against DatagramPipeline.handle_contrail (the
definition), through real loopback sockets: any CN2 traffic, cut into rounds with ticks
between them, gives the same counters, session counts, unclaimed streams and stored
blocks (frame and Juniper-header options), whether C or Python stores them."""

from __future__ import annotations

import socket
import struct
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, Dot1Q, Ether

from receiver import receive_loop
from receiver.contrail import contrail_header
from receiver.gate import Gate, InterceptRule, RouterRule
from receiver.pipeline import DatagramPipeline, Snapshot
from receiver.receive_loop import Receiver
from receiver.store import PcapStore

pytestmark = pytest.mark.skipif(
    receive_loop.FastReceiver is None, reason="receiver._fastpath is not built (see setup.py)"
)

VROUTERS = [RouterRule(1, "127.0.0.1", contrail=True), RouterRule(2, "127.0.0.2", contrail=True)]
SOURCES = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]  # the last is no registered router


def _rules(port: int) -> list[InterceptRule]:
    """vRouter 1's frames to the port are claimed by the port alone (C may take them);
    vRouter 2's only with the VN "vn-b" (asked frame by frame, in Python)."""
    return [
        InterceptRule(
            1, "BY-PORT", 1, "C", None, None, frozenset({1}), (0, 2**63), True, True,
            kind="cn2", analyzer_port=port,
        ),
        InterceptRule(
            2, "BY-VN", 1, "C", None, None, frozenset({2}), (0, 2**63), True, True,
            kind="cn2", virtual_networks=frozenset({"vn-b"}),
        ),
    ]  # fmt: skip


FRAMES = [
    bytes(Ether() / IP(src="10.1.0.5", dst="10.2.0.9") / UDP(sport=1, dport=2) / b"a"),
    bytes(Ether() / Dot1Q(vlan=7) / IP(src="10.1.0.5", dst="10.2.0.9") / UDP() / (b"b" * 300)),
    bytes(Ether() / IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=3, dport=4)),
    # Python's path only: IPv6 extension headers, and a frame that is not IP.
    bytes(Ether() / IPv6() / IPv6ExtHdrHopByHop() / UDP()),
    bytes(Ether() / ARP(psrc="10.1.0.5", pdst="10.1.0.1")),
]


@st.composite
def datagram(draw: st.DrawFn) -> tuple[bytes, str]:
    source = draw(st.sampled_from(SOURCES))
    kind = draw(st.integers(0, 9))
    if kind == 9:  # junk, or a Contrail datagram cut short
        return draw(st.binary(max_size=60)), source
    frame = draw(st.sampled_from(FRAMES))
    header = contrail_header(
        capture_host=draw(st.sampled_from([source, "192.0.2.9"])) if kind < 7 else None,
        flags=draw(st.sampled_from([0x400000A0, 0xA0])) if kind < 8 else None,
        source_vn=draw(st.sampled_from(["vn-a", "vn-b"])),
        dest_vn="vn-z",
    )
    payload = header + frame
    if kind == 8 and draw(st.booleans()):
        payload = payload[: draw(st.integers(0, len(payload)))]
    return payload, source


@st.composite
def rounds(draw: st.DrawFn) -> list[list[tuple[bytes, str]]]:
    """Rounds of datagrams (each drained, then a tick): runs of one datagram, as a
    vRouter mirrors a flow, so that headers bind and stay in C."""
    result = []
    for _ in range(draw(st.integers(1, 3))):
        runs = draw(st.lists(st.tuples(datagram(), st.integers(1, 15)), max_size=8))
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
    return PcapStore(root, rotate_bytes=3000, rotate_seconds=3600, buffer_bytes=800)


def _blocks(root: Path) -> dict[str, list[list[tuple[bytes, bytes]]]]:
    """Each session's files in order, as their packets' (frame, options) without times;
    each block's lengths checked on the way."""
    files: dict[str, list[list[tuple[bytes, bytes]]]] = {}
    for path in sorted(root.rglob("*.pcapng"), key=lambda p: (p.parent.name, p.name[-13:])):
        data = path.read_bytes()
        position, packets = 0, []
        while position < len(data):
            kind, length = struct.unpack_from("<II", data, position)
            assert struct.unpack_from("<I", data, position + length - 4)[0] == length
            if kind == 6:
                captured, original = struct.unpack_from("<II", data, position + 20)
                assert captured == original
                frame = data[position + 28 : position + 28 + captured]
                options = data[position + 28 + captured + (-captured & 3) : position + length - 4]
                packets.append((frame, options))
            position += length
        files.setdefault(path.parent.name, []).append(packets)
    return files


def _summary(snapshots: list[Snapshot]) -> list[dict[Any, Any]]:
    return [
        {
            key: (delta.intercept_pk, delta.packets, delta.bytes, delta.stored)
            for key, delta in snapshot.sessions.items()
        }
        for snapshot in snapshots
    ]


def _unclaimed(snapshots: list[Snapshot]) -> list[dict[Any, Any]]:
    return [
        {key: (entry.reason, entry.count) for key, entry in snapshot.unclaimed.items()}
        for snapshot in snapshots
    ]


def _counters(capture: DatagramPipeline) -> tuple[Any, ...]:
    c = capture.counters
    return (c.datagrams, c.bytes, c.malformed, c.internal_error, dict(c.drops))


def _through_c(traffic: list[list[tuple[bytes, str]]], root: Path) -> tuple[Any, ...]:
    snapshots: list[Snapshot] = []
    receiver = Receiver(
        [],
        Gate(VROUTERS, []),
        _store(root),
        on_tick=[snapshots.append],
        contrail_listen=[("127.0.0.1", 0)],
    )
    assert receiver.native
    [sock] = receiver.sockets
    port = sock.getsockname()[1]
    receiver.gate = Gate(VROUTERS, _rules(port))
    sock.setblocking(False)
    drain = receiver._drainer(sock)
    with senders() as by_source:
        for batch in traffic:
            for payload, source in batch:
                by_source[source].sendto(payload, ("127.0.0.1", port))
            for _ in range(len(batch) // 64 + 2):
                drain()
            receiver.tick(time.time_ns())
    drops = receive_loop.kernel_drops(sock)
    receiver.finish(time.time_ns())
    receiver.close_sockets()
    assert drops == 0, "the kernel dropped datagrams: the comparison would be meaningless"
    return (
        _counters(receiver.pipeline),
        _summary(snapshots),
        _unclaimed(snapshots),
        _blocks(root),
        port,
    )


def _through_python(
    traffic: list[list[tuple[bytes, str]]], root: Path, port: int
) -> tuple[Any, ...]:
    snapshots: list[Snapshot] = []
    capture = DatagramPipeline(
        Gate(VROUTERS, _rules(port)), _store(root), on_tick=[snapshots.append]
    )
    for batch in traffic:
        for payload, source in batch:
            capture.handle_contrail(payload, source, port, time.time_ns())
        capture.tick(time.time_ns())
    capture.finish(time.time_ns())
    return (_counters(capture), _summary(snapshots), _unclaimed(snapshots), _blocks(root), port)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(rounds())
def test_the_c_path_stores_contrail_as_handling_each_datagram_does(traffic):
    with tempfile.TemporaryDirectory() as native, tempfile.TemporaryDirectory() as python:
        through_c = _through_c(traffic, Path(native))
        assert through_c == _through_python(traffic, Path(python), through_c[-1])


def test_a_busy_vrouter_is_stored_by_c(tmp_path: Path) -> None:
    # Two headers (the flow's two directions) alternating: each binds once, then C takes
    # every later datagram of either.
    frame = FRAMES[0]
    ingress = contrail_header(capture_host="127.0.0.1", flags=0x400000A0, source_vn="vn-a")
    egress = contrail_header(capture_host="127.0.0.1", flags=0xA0, source_vn="vn-a")
    traffic = [[(ingress + frame, "127.0.0.1"), (egress + frame, "127.0.0.1")] * 100]
    snapshots: list[Snapshot] = []
    receiver = Receiver(
        [],
        Gate(VROUTERS, []),
        PcapStore(tmp_path),
        on_tick=[snapshots.append],
        contrail_listen=[("127.0.0.1", 0)],
    )
    [sock] = receiver.sockets
    port = sock.getsockname()[1]
    receiver.gate = Gate(VROUTERS, _rules(port))
    sock.setblocking(False)
    handled_by_python = []
    handle = receiver.pipeline.handle_contrail

    def counted(payload: bytes, source: str, port: int, time_ns: int) -> Any:
        handled_by_python.append(payload)
        return handle(payload, source, port, time_ns)

    receiver.pipeline.handle_contrail = counted  # type: ignore[method-assign]
    drain = receiver._drainer(sock)
    [native] = receiver._contrail_natives
    with senders() as by_source:
        for payload, source in traffic[0]:
            by_source[source].sendto(payload, ("127.0.0.1", port))
        for _ in range(6):
            drain()
    assert native.streams == 2
    assert handled_by_python == [ingress + frame, egress + frame]  # then C took the rest
    receiver.finish(time.time_ns())
    receiver.close_sockets()
    assert receiver.counters.datagrams == 200
    [session] = [delta for snapshot in snapshots for delta in snapshot.sessions.values()]
    assert (session.packets, session.stored) == (200, 200)
    blocks = _blocks(tmp_path)
    [[packets]] = blocks.values()
    assert [frame_bytes for frame_bytes, _ in packets] == [frame] * 200
    assert len({options for _, options in packets}) == 2


def test_a_vrouter_s_file_closed_for_quiet_goes_on_in_the_next_file_through_c(
    tmp_path: Path,
) -> None:
    """Idle close on the Contrail socket: Python closes the pcapng file C appends to, C
    hands the flow's next datagram to Python, which opens the next file and binds it,
    and C stores the rest there."""
    frame = FRAMES[0]
    ingress = contrail_header(capture_host="127.0.0.1", flags=0x400000A0, source_vn="vn-a")
    store = PcapStore(tmp_path, quiet_seconds=60)
    snapshots: list[Snapshot] = []
    receiver = Receiver(
        [],
        Gate(VROUTERS, []),
        store,
        on_tick=[snapshots.append],
        contrail_listen=[("127.0.0.1", 0)],
    )
    [sock] = receiver.sockets
    port = sock.getsockname()[1]
    receiver.gate = Gate(VROUTERS, _rules(port))
    sock.setblocking(False)
    handled_by_python = []
    handle = receiver.pipeline.handle_contrail

    def counted(payload: bytes, source: str, port: int, time_ns: int) -> Any:
        handled_by_python.append(payload)
        return handle(payload, source, port, time_ns)

    receiver.pipeline.handle_contrail = counted  # type: ignore[method-assign]
    drain = receiver._drainer(sock)
    with senders() as by_source:
        for _ in range(40):
            by_source["127.0.0.1"].sendto(ingress + frame, ("127.0.0.1", port))
        drain()
        receiver.tick(time.time_ns())
        assert snapshots[-1].closed_files == []
        receiver.tick(time.time_ns() + 61 * 10**9)  # a minute without a datagram
        (closed,) = snapshots[-1].closed_files
        assert closed.packets == 40
        assert store.open_files() == []
        for _ in range(40):
            by_source["127.0.0.1"].sendto(ingress + frame, ("127.0.0.1", port))
        drain()
    receiver.finish(time.time_ns())
    receiver.close_sockets()
    # Python took the first datagram of each file; C the other 78.
    assert handled_by_python == [ingress + frame] * 2
    assert receiver.counters.internal_error == 0
    [files] = _blocks(tmp_path).values()
    assert [len(packets) for packets in files] == [40, 40]
    assert {frame_bytes for packets in files for frame_bytes, _ in packets} == {frame}
