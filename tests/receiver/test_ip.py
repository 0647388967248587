"""receiver.ip (the walk from an IP header to the transport protocol and its ports) against
the decoder, which walks inline for speed; and the C part's own copies of the wire facts
against receiver.ip and receiver.pcap."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from receiver import pcap
from receiver.ip import (
    IPV6_FRAGMENT,
    IPV6_HEADER_CHAIN,
    PORT_PROTOCOLS,
    IPProtocol,
    ipv4_header_checksum_ok,
    ipv6_transport,
    ports,
    transport,
)
from receiver.jmirror import DecodeError, decode_datagram
from receiver.store import LINKTYPE_FOR_KIND

try:
    from receiver import _fastpath
except ImportError:  # not built here: the receiver runs its Python path
    _fastpath = None  # type: ignore[assignment]

JMIRROR_HEADER = struct.pack("!II", 0x300, 0x90)
SOURCE = ipaddress.ip_address("192.0.2.1").packed
DESTINATION = ipaddress.ip_address("10.0.0.2").packed
SOURCE6 = ipaddress.ip_address("2001:db8::1").packed
DESTINATION6 = ipaddress.ip_address("2001:db8::2").packed
TRANSPORTS = [1, 6, 17, 33, 50, 58, 59, 132, 136, 253]


@st.composite
def ip_packets(draw: st.DrawFn) -> bytes:
    """IPv4 with options and fragments, or IPv6 behind any chain of extension, fragment and
    authentication headers, then a transport header that may be cut short; sometimes cut
    or with a byte changed."""
    protocol = draw(st.sampled_from(TRANSPORTS))
    segment = draw(st.binary(max_size=12))
    if draw(st.booleans()):
        words = draw(st.integers(5, 7))
        fragment = draw(st.sampled_from([0, 0, 0x2000, 0x4000, 185]))
        packet = struct.pack(
            "!BBHHHBBH4s4s", 0x40 | words, 0, words * 4 + len(segment), 1, fragment, 64,
            protocol, 0, SOURCE, DESTINATION,
        ) + bytes((words - 5) * 4) + segment  # fmt: skip
    else:
        kinds = draw(st.lists(st.sampled_from(sorted(IPV6_HEADER_CHAIN)), max_size=4))
        following = [*kinds[1:], protocol]
        chain = b""
        for kind, next_header in zip(kinds, following, strict=False):
            if kind == IPV6_FRAGMENT:
                offset = draw(st.sampled_from([0, 0, 185]))
                more = draw(st.integers(0, 1))
                chain += struct.pack("!BBHI", next_header, 0, offset << 3 | more, 7)
            elif kind == IPProtocol.AH:
                units = draw(st.integers(0, 2))
                chain += bytes([next_header, units]) + bytes((units + 2) * 4 - 2)
            else:
                units = draw(st.integers(0, 1))
                chain += bytes([next_header, units]) + bytes((units + 1) * 8 - 2)
        payload = chain + segment
        first = kinds[0] if kinds else protocol
        packet = struct.pack(
            "!IHBB16s16s", 0x60000000, len(payload), first, 64, SOURCE6, DESTINATION6
        ) + payload  # fmt: skip
    damaged = bytearray(packet)
    if draw(st.booleans()):
        del damaged[draw(st.integers(0, len(damaged))) :]
    if damaged and draw(st.booleans()):
        damaged[draw(st.integers(0, len(damaged) - 1))] = draw(st.integers(0, 255))
    return bytes(damaged)


@settings(max_examples=2000, deadline=None)
@given(ip_packets())
def test_the_decoder_shows_the_protocol_and_ports_the_shared_walk_finds(data):
    try:
        packet = decode_datagram(JMIRROR_HEADER + data)
    except DecodeError:
        return
    if packet.inner not in ("ipv4", "ipv6"):
        return
    if packet.inner == "ipv6":
        next_header, position = ipv6_transport(data, data[6], 40, len(data))
        if next_header == IPV6_FRAGMENT and position >= 0 and data[position] in IPV6_HEADER_CHAIN:
            # A later fragment whose fragment header names another extension header: the
            # decoder walks on into the fragment's data as the C part does; the walk stops.
            return
    found = transport(data, 0, len(data))
    assert found is not None
    protocol, position = found
    assert (packet.proto, packet.sport, packet.dport) == (
        protocol,
        *(ports(data, protocol, position, len(data)) or (None, None)),
    )


def test_the_sets_hold_plain_ints_which_a_per_packet_lookup_finds_by_identity():
    assert all(type(protocol) is int for protocol in PORT_PROTOCOLS | IPV6_HEADER_CHAIN)


def test_a_later_fragment_has_its_protocol_and_no_ports():
    fragment = struct.pack("!BBHI", 17, 0, 185 << 3, 7)
    packet = (
        struct.pack("!IHBB16s16s", 0x60000000, 12, 44, 64, SOURCE6, DESTINATION6)
        + fragment
        + struct.pack("!HH", 53, 53)
    )
    assert transport(packet, 0, len(packet)) == (17, -1)
    assert ports(packet, 17, -1, len(packet)) is None


def test_extension_headers_that_run_past_the_packet_have_no_transport():
    hop_by_hop = bytes([6, 1]) + bytes(6)  # says 16 bytes, has 8
    packet = struct.pack("!IHBB16s16s", 0x60000000, 8, 0, 64, SOURCE6, DESTINATION6) + hop_by_hop
    assert transport(packet, 0, len(packet)) == (6, -1)


needs_fastpath = pytest.mark.skipif(_fastpath is None, reason="receiver._fastpath is not built")


@needs_fastpath
def test_the_c_part_refuses_the_same_ipv6_next_headers_as_python():
    assert _fastpath.IPV6_HEADER_CHAIN == IPV6_HEADER_CHAIN


@needs_fastpath
def test_the_c_part_writes_the_link_types_and_record_header_of_receiver_pcap():
    assert (_fastpath.LINKTYPE_RAW, _fastpath.LINKTYPE_PPP_HDLC) == (
        pcap.LinkType.RAW,
        pcap.LinkType.PPP_HDLC,
    )
    assert set(LINKTYPE_FOR_KIND.values()) == {pcap.LinkType.RAW, pcap.LinkType.PPP_HDLC}
    assert _fastpath.RECORD_HEADER == pcap.RECORD_HEADER_LENGTH


def _checksum_by_words(header: bytes) -> bool:
    """RFC 1071's definition: the one's-complement sum of the 16-bit words is 0xFFFF."""
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def _with_checksum(header: bytearray) -> bytes:
    header[10:12] = b"\0\0"
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    header[10:12] = struct.pack("!H", ~total & 0xFFFF)
    return bytes(header)


@settings(max_examples=3000, deadline=None)
@given(
    st.integers(min_value=0, max_value=15),
    st.binary(min_size=60, max_size=60),
    st.booleans(),
    st.integers(min_value=0, max_value=8),
)
def test_the_ipv4_header_checksum_check_agrees_with_the_sum_of_words(
    ihl: int, rest: bytes, fix: bool, offset: int
):
    header = bytearray(bytes([0x40 | ihl]) + rest[: max(ihl * 4, 1) - 1])
    if fix and ihl >= 5:
        header = bytearray(_with_checksum(header))
    data = b"\xee" * offset + bytes(header) + b"trailer"
    assert ipv4_header_checksum_ok(data, offset) == _checksum_by_words(bytes(header[: ihl * 4]))
    if fix and ihl >= 5:
        assert ipv4_header_checksum_ok(data, offset)


@pytest.mark.parametrize(
    ("header", "valid"),
    [
        (bytes.fromhex("450000730000400040110000c0a80001c0a800c7"), False),
        (bytes.fromhex("45000073000040004011b861c0a80001c0a800c7"), True),  # Wikipedia's
        (b"\x40" + b"\x00" * 19, False),  # no header words at all
        (b"\x45" + b"\x00" * 19, False),
    ],
)
def test_ipv4_header_checksum_examples(header: bytes, valid: bool):
    assert ipv4_header_checksum_ok(header, 0) is valid
