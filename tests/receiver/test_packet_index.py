"""The packet index: records built in C and in Python agree, and say what the packets are."""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from receiver import packet_index
from receiver.packet_index import PROTOCOL_LINK, Flag, PacketIndex, address_key
from receiver.pcap import enhanced_packet_block

compiled = pytest.importorskip("receiver._packet_index")

RAW, PPP, ETHERNET = 101, 50, 1


def pcap_records(packets: list[bytes], start_ns: int = 1_700_000_000_123_456_789) -> bytes:
    out = bytearray()
    for k, data in enumerate(packets):
        seconds, nanoseconds = divmod(start_ns + k * 1000, 1_000_000_000)
        out += struct.pack("<IIII", seconds, nanoseconds, len(data), len(data) + k) + data
    return bytes(out)


def both(buffer: bytes, offset: int, linktype: int, pcapng: bool = False) -> bytes:
    in_c = compiled.index_records(buffer, offset, linktype, pcapng)
    in_python = packet_index.python_index_records(buffer, offset, linktype, pcapng)
    assert in_c == in_python
    return in_c


def records(buffer: bytes, linktype: int, pcapng: bool = False) -> list[packet_index.IndexRecord]:
    index = PacketIndex(linktype, both(buffer, 24, linktype, pcapng))
    return [index.record(k) for k in range(len(index))]


def test_ipv4_tcp_udp_and_their_places_in_the_file() -> None:
    syn = bytes(IP(src="10.0.0.1", dst="192.0.2.7") / TCP(sport=40000, dport=443, flags="S"))
    dns = bytes(
        IP(src="10.0.0.1", dst="192.0.2.53")
        / UDP(sport=5353, dport=53)
        / DNS(qd=DNSQR(qname="example.org"))
    )
    first, second = records(pcap_records([syn, dns]), RAW)
    assert (first.offset, second.offset) == (24, 24 + 16 + len(syn))
    assert second.time_ns - first.time_ns == 1000
    assert (first.version, first.protocol, first.sport, first.dport) == (4, 6, 40000, 443)
    assert (first.tcp_flags, first.source, first.destination) == (0x02, "10.0.0.1", "192.0.2.7")
    assert not first.flags & Flag.NAME_CANDIDATE
    assert (second.protocol, second.dport, second.length) == (17, 53, len(dns) + 1)
    assert second.flags & Flag.NAME_CANDIDATE


def test_names_candidates_tls_and_http() -> None:
    hello = bytes(IP() / TCP(sport=1, dport=443, flags="PA") / Raw(b"\x16\x03\x01\x00\x05hello"))
    get = bytes(IP() / TCP(sport=1, dport=80, flags="PA") / Raw(b"GET / HTTP/1.1\r\n"))
    data = bytes(IP() / TCP(sport=1, dport=80, flags="PA") / Raw(b"xyz"))
    flags = [r.flags & Flag.NAME_CANDIDATE for r in records(pcap_records([hello, get, data]), RAW)]
    assert flags == [Flag.NAME_CANDIDATE, Flag.NAME_CANDIDATE, 0]


def test_ppp_control_ipv6_extension_fragments_and_ethernet() -> None:
    lcp = b"\xff\x03\xc0\x21\x01\x01\x00\x04"
    ppp_ip = b"\xff\x03\x00\x21" + bytes(IP(src="10.1.1.1", dst="10.2.2.2") / UDP(sport=7, dport=9))
    v6 = bytes(
        IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrHopByHop() / TCP(sport=5, dport=6)
    )
    later = bytes(
        IPv6(src="2001:db8::1", dst="2001:db8::2")
        / IPv6ExtHdrFragment(offset=10, nh=17)
        / Raw(b"x" * 8)
    )
    a, b = records(pcap_records([lcp, ppp_ip]), PPP)
    assert (a.version, a.sport, a.flags) == (0, 0xC021, Flag.PPP)
    assert (b.version, b.source, b.dport, b.flags) == (4, "10.1.1.1", 9, Flag.PPP)
    c, d = records(pcap_records([v6, later]), RAW)
    assert (c.version, c.protocol, c.sport, c.destination) == (6, 6, 5, "2001:db8::2")
    assert (d.protocol, d.sport, d.flags) == (17, 0, Flag.LATER_FRAGMENT)
    frame = bytes(Ether() / Dot1Q(vlan=5) / IP(src="10.9.9.9", dst="10.8.8.8") / ICMP())
    block = enhanced_packet_block(0, 1_700_000_000_000_000_007, frame, b"")
    (e,) = records(block, ETHERNET, pcapng=True)
    assert (e.offset, e.time_ns, e.protocol, e.source) == (
        24,
        1_700_000_000_000_000_007,
        1,
        "10.9.9.9",
    )


def test_a_cut_buffer_is_refused() -> None:
    buffer = pcap_records([bytes(IP() / UDP())])
    for cut in (buffer[:-1], buffer[:10]):
        with pytest.raises(ValueError, match="whole record"):
            compiled.index_records(cut, 0, RAW, False)
        with pytest.raises(ValueError, match="whole record"):
            packet_index.python_index_records(cut, 0, RAW, False)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.binary(max_size=120), max_size=6),
    st.sampled_from([RAW, PPP, ETHERNET, 0]),
    st.sampled_from(
        [b"", b"\x45", b"\x60", b"\xff\x03\x00\x21\x45", b"\xff\x03\x00\x57\x60", b"\x21\x45"]
    ),
)
def test_c_and_python_agree_on_any_bytes(bodies: list[bytes], linktype: int, prefix: bytes) -> None:
    both(pcap_records([prefix + body for body in bodies]), 1000, linktype)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(min_size=0, max_size=80), max_size=12),
    st.integers(0, 12),
    st.integers(0, 12),
    st.sampled_from([None, "10.0.0.1", "2001:db8::1"]),
    st.sampled_from([-1, 53, 443]),
    st.sampled_from([-1, 6, 17, PROTOCOL_LINK]),
    st.booleans(),
)
def test_selection_in_c_and_python_agree(
    bodies: list[bytes],
    first: int,
    last: int,
    address: str | None,
    port: int,
    protocol: int,
    names: bool,
) -> None:
    samples = [
        bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=53, dport=999)),
        bytes(
            IPv6(src="2001:db8::1", dst="2001:db8::3")
            / TCP(sport=443, dport=5, flags="PA")
            / Raw(b"\x16\x03")
        ),
        b"\xff\x03\xc0\x21\x01",
    ]
    index = both(pcap_records(samples + [b"\x45" + body for body in bodies]), 24, RAW)
    version, raw = address_key(address) if address else (0, b"")
    arguments = (
        index,
        first,
        last,
        1_700_000_000_123_456_789 + 1000,
        2**62,
        version,
        raw,
        port,
        protocol,
        names,
    )
    assert compiled.select_records(*arguments) == packet_index.python_select_records(*arguments)


def test_selection_finds_what_it_says() -> None:
    samples = [
        bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=53, dport=999) / DNS()),
        bytes(IPv6(src="2001:db8::1", dst="2001:db8::3") / TCP(sport=443, dport=5)),
        b"\xff\x03\xc0\x21\x01",
        bytes(IP(src="10.0.0.9", dst="10.0.0.1") / TCP(sport=1, dport=443)),
    ]
    index = PacketIndex(RAW, both(pcap_records(samples), 24, RAW))
    assert list(index.select(address=address_key("10.0.0.1"))) == [0, 3]
    assert list(index.select(port=443)) == [1, 3]
    assert list(index.select(protocol=6)) == [1, 3]
    assert list(index.select(protocol=PROTOCOL_LINK)) == [2]
    assert list(index.select(names_only=True)) == [0]
    assert list(index.select(1, 3)) == [1, 2]
    times = index.times()
    assert list(index.select(start_ns=times[1], end_ns=times[3])) == [1, 2]


def test_a_prefix_is_the_whole_records_at_the_start() -> None:
    buffer = pcap_records([bytes(IP() / UDP()), bytes(IP() / TCP())])
    whole = len(buffer)
    for cut in (whole, whole - 1, 16 + 28, 3):
        expected = packet_index.python_index_prefix(buffer[:cut], 24, RAW, False)
        assert compiled.index_prefix(buffer[:cut], 24, RAW, False) == expected
    assert compiled.index_prefix(buffer[: whole - 1], 24, RAW, False)[1] == 16 + 28


def test_times_and_their_order_in_c_and_python() -> None:
    buffer = pcap_records([bytes(IP() / UDP())] * 5)
    index = both(buffer, 24, RAW)
    times, ordered = compiled.index_times(index)
    assert (times, ordered) == packet_index.python_index_times(index)
    assert ordered
    # A clock step back: the fourth packet before the third.
    swapped = bytearray(index)
    swapped[3 * 64 + 8 : 3 * 64 + 16] = index[1 * 64 + 8 : 1 * 64 + 16]
    assert compiled.index_times(bytes(swapped))[1] is False
    assert packet_index.python_index_times(bytes(swapped))[1] is False
    with pytest.raises(ValueError, match="whole 64-byte records"):
        compiled.index_times(index[:-1])


def test_an_index_that_cannot_be_written_never_costs_a_packet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from receiver.pcap_reader import iter_frames
    from receiver.store import PcapStore, SessionKey

    real_open, real_write = os.open, os.write
    index_fds: set[int] = set()

    def opening(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        fd = real_open(path, flags, *args, **kwargs)
        if str(path).endswith(".idx"):
            index_fds.add(fd)
        return fd

    def writing(fd: int, data: Any) -> int:
        if fd in index_fds:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "open", opening)
    monkeypatch.setattr(os, "write", writing)
    store = PcapStore(tmp_path)
    key = SessionKey("LIID", "192.0.2.1", 1, 2)
    packets = [bytes(IP(src="10.0.0.1") / UDP(dport=k)) for k in range(50)]
    for k, data in enumerate(packets):
        assert store.write(key, 1_700_000_000_000_000_000 + k, data, RAW)
    (closed,) = store.close_all()
    assert store.index_errors == 1
    assert store.store_errors == {}
    assert closed.packets == 50
    path = tmp_path / closed.path
    with path.open("rb") as stream:
        assert [frame[3] for frame in iter_frames(stream)] == packets
    assert not packet_index.index_path(path).exists()  # given up, not left half written
