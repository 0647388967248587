"""The receive loop end to end on loopback, without Django: sockets, gate, pcap files."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jmirror_web.environment import parse_listen
from receiver.gate import Gate, InterceptRule, RouterRule
from receiver.packet_index import index_path, python_index_records, read_index_file
from receiver.pcap_reader import iter_frames
from receiver.pipeline import Snapshot
from receiver.receive_loop import Receiver, open_socket
from receiver.store import PcapStore
from receiver.traffic import (
    ipv4_udp,
    ipv6_tcp_flow_label,
    jmirror_datagram,
    ppp_ipv4_udp,
    ppp_lcp,
)

NOW = time.time_ns()
HOUR = 3600 * 10**9
ROUTER = RouterRule(1, "127.0.0.1")


def rule(mirror_id: int, *, pk: int = 1, window: tuple[int, int] | None = None) -> InterceptRule:
    return InterceptRule(
        intercept_id_pk=pk,
        liid=f"LIID{pk}",
        case_id=1,
        case_reference="CASE-1",
        mirror_id=mirror_id,
        sid=None,
        router_ids=frozenset(),
        window=window or (NOW - HOUR, NOW + HOUR),
        active=True,
        keep_content=True,
    )


class Running:
    """A receiver running in a thread, with the snapshots its hook received."""

    def __init__(self, receiver: Receiver, snapshots: list[Snapshot]) -> None:
        self.receiver = receiver
        self.snapshots = snapshots
        host, port = receiver.addresses[0]
        self.sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.target = (host, port)

    def send(self, *payloads: bytes) -> None:
        for payload in payloads:
            self.sender.sendto(payload, self.target)

    def wait_for(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.02)
        raise AssertionError("condition not met in time")

    def datagrams(self) -> int:
        return self.receiver.counters.datagrams


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[[Gate], Running]]:
    started: list[tuple[Running, threading.Thread]] = []

    def run(gate: Gate) -> Running:
        snapshots: list[Snapshot] = []
        receiver = Receiver(
            [("127.0.0.1", 0)],
            gate,
            PcapStore(tmp_path / "sessions"),
            rcvbuf=1 << 20,
            tick_interval=0.05,
            on_tick=[snapshots.append],
        )
        thread = threading.Thread(target=receiver.run, daemon=True)
        thread.start()
        running = Running(receiver, snapshots)
        started.append((running, thread))
        return running

    yield run
    for running, thread in started:
        running.receiver.stop()
        thread.join(timeout=5)
        running.sender.close()


def stop(running: Running) -> float:
    began = time.monotonic()
    running.receiver.stop()
    running.wait_for(lambda: bool(running.snapshots) and running.snapshots[-1].final)
    return time.monotonic() - began


def stored_frames(root: Path) -> list[tuple[int, bytes]]:
    frames = []
    for path in sorted(root.rglob("*.pcap")):
        with path.open("rb") as stream:
            frames += [(linktype, data) for _, _, linktype, data in iter_frames(stream)]
    return frames


def test_claimed_packets_are_stored_byte_identical_and_in_order(start, tmp_path):
    running = start(Gate([ROUTER], [rule(0x300)]))
    inners = [bytes(each) for each in (ipv4_udp(), ipv6_tcp_flow_label(), ipv4_udp())]
    running.send(*(jmirror_datagram(inner, mid=0x300, sid=0x90) for inner in inners))
    running.wait_for(lambda: running.datagrams() == 3)
    stop(running)

    assert stored_frames(tmp_path / "sessions") == [(101, inner) for inner in inners]
    totals = sum(
        s.sessions[("127.0.0.1", 0x300, 0x90)].stored for s in running.snapshots if s.sessions
    )
    assert totals == 3


def test_ppp_goes_to_a_ppp_file_of_the_same_session(start, tmp_path):
    running = start(Gate([ROUTER], [rule(0x300)]))
    inners = [bytes(ppp_lcp()), bytes(ppp_ipv4_udp())]
    running.send(*(jmirror_datagram(inner, mid=0x300, sid=7) for inner in inners))
    running.wait_for(lambda: running.datagrams() == 2)
    stop(running)

    assert stored_frames(tmp_path / "sessions") == [(50, inner) for inner in inners]


def test_unclaimed_and_malformed_datagrams_are_counted_and_never_stored(start, tmp_path):
    window = (NOW - 2 * HOUR, NOW - HOUR)
    gate = Gate([ROUTER], [rule(0x300), rule(0x301, pk=2, window=window)])
    running = start(gate)
    claimed = bytes(ipv4_udp())
    running.send(
        jmirror_datagram(ipv4_udp(), mid=0x999, sid=1),  # no intercept
        jmirror_datagram(ipv4_udp(), mid=0x301, sid=1),  # intercept not in force
        b"\x00\x00\x03",  # too short for a jmirror header
        jmirror_datagram(claimed, mid=0x300, sid=1),
    )
    running.wait_for(lambda: running.datagrams() == 4)
    stop(running)

    counters = running.receiver.counters
    assert counters.drops == {"no_intercept": 1, "outside_window": 1}
    assert counters.malformed == 1
    assert set(running.receiver.unclaimed) == {("127.0.0.1", 0x999, 1), ("127.0.0.1", 0x301, 1)}
    assert running.receiver.unclaimed[("127.0.0.1", 0x999, 1)].count == 1
    assert [path.name for path in (tmp_path / "sessions").iterdir()] == [
        "LIID1_127.0.0.1_mid-00000300_sid-00000001"
    ]
    assert stored_frames(tmp_path / "sessions") == [(101, claimed)]


def test_an_unknown_router_stores_nothing(start, tmp_path):
    running = start(Gate([RouterRule(1, "192.0.2.1")], [rule(0x300)]))
    running.send(jmirror_datagram(ipv4_udp(), mid=0x300, sid=1))
    running.wait_for(lambda: running.datagrams() == 1)
    stop(running)

    assert running.receiver.counters.drops == {"unknown_router": 1}
    assert not any((tmp_path / "sessions").rglob("*"))


def test_a_gate_replaced_while_running_takes_effect(start, tmp_path):
    running = start(Gate([ROUTER], []))
    running.send(jmirror_datagram(ipv4_udp(), mid=0x300, sid=1))
    running.wait_for(lambda: running.datagrams() == 1)
    running.receiver.gate = Gate([ROUTER], [rule(0x300)])
    claimed = bytes(ipv6_tcp_flow_label())
    running.send(jmirror_datagram(claimed, mid=0x300, sid=1))
    running.wait_for(lambda: running.datagrams() == 2)
    stop(running)

    assert running.receiver.counters.drops == {"no_intercept": 1}
    assert stored_frames(tmp_path / "sessions") == [(101, claimed)]


def test_stop_closes_and_hashes_every_file_quickly(start, tmp_path):
    running = start(Gate([ROUTER], [rule(0x300)]))
    running.send(*(jmirror_datagram(ipv4_udp(), mid=0x300, sid=sid) for sid in (1, 2)))
    running.wait_for(lambda: running.datagrams() == 2)
    assert stop(running) < 5

    closed = running.snapshots[-1].closed_files
    assert len(closed) == 2
    assert closed == running.receiver.final_closed
    for each in closed:
        data = (tmp_path / "sessions" / each.path).read_bytes()
        assert each.sha256 == hashlib.sha256(data).hexdigest()
        assert each.packets == 1
    assert not list((tmp_path / "sessions").rglob("*.part"))


def test_a_burst_of_random_bytes_leaves_the_receiver_running(start, tmp_path):
    running = start(Gate([ROUTER], [rule(0x300)]))
    junk = [bytes([index % 256]) * (index % 40) for index in range(1, 300)]
    running.send(*junk)
    claimed = bytes(ipv4_udp())
    running.send(jmirror_datagram(claimed, mid=0x300, sid=1))
    running.wait_for(lambda: running.datagrams() == len(junk) + 1)
    stop(running)

    counters = running.receiver.counters
    assert counters.internal_error == 0
    assert counters.malformed + sum(counters.drops.values()) == len(junk)
    assert stored_frames(tmp_path / "sessions") == [(101, claimed)]


def test_a_receive_buffer_above_the_kernel_limit_gives_a_warning_naming_the_sysctl():
    limit = int(Path("/proc/sys/net/core/rmem_max").read_text())
    sock, warning = open_socket("127.0.0.1", 0, limit * 4)
    sock.close()
    assert warning is not None
    assert "net.core.rmem_max" in warning


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:30030", ("127.0.0.1", 30030)), ("[::1]:6502", ("::1", 6502))],
)
def test_listen_addresses_are_host_colon_port(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1", ":30030", "::1:30030", "host:99999", "h:x"])
def test_a_listen_address_without_a_valid_port_is_refused(text):
    with pytest.raises(ValueError, match=r"HOST:PORT|IPv6|range"):
        parse_listen(text)


def test_a_stream_stops_being_stored_the_moment_its_warrant_window_ends(start, tmp_path):
    # The claim is remembered per stream, but only up to the window's end.
    end = time.time_ns() + 1_500_000_000
    running = start(Gate([ROUTER], [rule(0x300, window=(NOW - HOUR, end))]))
    running.send(jmirror_datagram(bytes(ipv4_udp()), mid=0x300, sid=1))
    running.wait_for(lambda: running.datagrams() == 1)
    time.sleep(max(end - time.time_ns(), 0) / 1e9 + 0.05)
    running.send(jmirror_datagram(bytes(ipv4_udp()), mid=0x300, sid=1))
    running.wait_for(lambda: running.datagrams() == 2)
    stop(running)

    assert running.receiver.counters.drops == {"outside_window": 1}
    assert len(stored_frames(tmp_path / "sessions")) == 1


def test_every_stored_packet_has_its_index_record_written_at_capture(start, tmp_path):
    """The receive loop's own writes (C fast path once the stream is bound, Python for its
    first datagram and PPP control) leave an index beside each file whose records are
    those the file itself gives."""
    running = start(Gate([ROUTER], [rule(0x300)]))
    inners = [bytes(ppp_lcp())] + [
        bytes(ipv4_udp()) if k % 3 else bytes(ppp_ipv4_udp()) for k in range(60)
    ]
    inners += [bytes(ipv6_tcp_flow_label())] * 5
    running.send(*(jmirror_datagram(inner, mid=0x300, sid=5) for inner in inners))
    running.wait_for(lambda: running.datagrams() == len(inners))
    stop(running)

    files = sorted((tmp_path / "sessions").rglob("*.pcap"))
    assert len(files) == 2  # PPP and raw IP
    counted = 0
    for path in files:
        written = read_index_file(index_path(path))
        assert written is not None
        body = path.read_bytes()
        linktype = int.from_bytes(body[20:24], "little")
        assert written.linktype == linktype
        assert bytes(written.records) == python_index_records(body[24:], 24, linktype, False)
        counted += len(written)
    assert counted == len(inners)
