import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_Router_Alert
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.ipsec import AH
from scapy.layers.ntp import NTP
from scapy.layers.ppp import PPP_CHAP, PPP_IPCP, PPP_LCP_Echo, PPP_PAP_Request
from scapy.packet import Packet, Raw

from receiver.jmirror import (
    DecodeError,
    DecodeFailure,
    JMirrorPacket,
    classify_datagram,
    decode_datagram,
    is_plausible_jmirror,
    looks_like_jmirror,
)
from receiver.traffic import ipv4_udp, ipv6_tcp_flow_label

REPO = Path(__file__).resolve().parents[2]


def jmirror(inner: Packet | bytes, mid: int = 0x300, sid: int = 0x90) -> bytes:
    return struct.pack("!II", mid, sid) + bytes(inner)


def ppp(protocol: int, payload: Packet | bytes) -> bytes:
    return b"\xff\x03" + struct.pack("!H", protocol) + bytes(payload)


def decoded_fields(packet: JMirrorPacket) -> dict[str, object]:
    return {
        "inner": packet.inner,
        "ppp_protocol": packet.ppp_protocol,
        "src": packet.src,
        "dst": packet.dst,
        "proto": packet.proto,
        "sport": packet.sport,
        "dport": packet.dport,
    }


def test_it_decodes_the_header_and_an_ipv4_tcp_packet():
    inner = bytes(IP(src="10.0.0.1", dst="192.0.2.7") / TCP(sport=51000, dport=443) / b"hello")
    packet = decode_datagram(jmirror(inner, mid=0x300, sid=0x90))
    assert packet == JMirrorPacket(
        mid=0x300,
        intercept_id=0x300,
        version=0,
        sid=0x90,
        inner="ipv4",
        ppp_protocol=None,
        src="10.0.0.1",
        dst="192.0.2.7",
        proto=6,
        sport=51000,
        dport=443,
        length=len(inner),
        data=inner,
    )


def test_it_splits_the_first_word_into_version_and_intercept_id():
    packet = decode_datagram(jmirror(IP() / ICMP(), mid=0xC0000300))
    assert (packet.mid, packet.version, packet.intercept_id) == (0xC0000300, 3, 0x300)


def test_the_decoded_packet_is_immutable():
    packet = decode_datagram(jmirror(IP() / ICMP()))
    with pytest.raises(AttributeError):
        packet.sid = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("inner", "expected"),
    [
        pytest.param(
            IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(),
            {"inner": "ipv4", "proto": 1, "sport": None, "dport": None},
            id="icmp-has-no-ports",
        ),
        pytest.param(
            IP(src="10.0.0.1", dst="10.0.0.2", options=[IPOption_Router_Alert()])
            / UDP(sport=5353, dport=53),
            {"inner": "ipv4", "proto": 17, "sport": 5353, "dport": 53},
            id="ipv4-with-options",
        ),
        pytest.param(
            IP(src="10.0.0.1", dst="10.0.0.2", flags="MF", frag=0) / UDP(sport=4000, dport=4001),
            {"inner": "ipv4", "proto": 17, "sport": 4000, "dport": 4001},
            id="first-ipv4-fragment-has-ports",
        ),
        pytest.param(
            IP(src="10.0.0.1", dst="10.0.0.2", proto=17, frag=185) / Raw(b"x" * 40),
            {"inner": "ipv4", "proto": 17, "sport": None, "dport": None},
            id="later-ipv4-fragment-has-no-ports",
        ),
        pytest.param(
            IP(src="10.0.0.1", dst="10.0.0.2", proto=6) / Raw(b"\x01\x02"),
            {"inner": "ipv4", "proto": 6, "sport": None, "dport": None},
            id="tcp-cut-short-by-the-subscriber-decodes-without-ports",
        ),
        pytest.param(
            IPv6(src="2001:db8::1", dst="2001:db8::2", fl=0xABCDE, tc=0x28) / TCP(sport=1, dport=2),
            {"inner": "ipv6", "proto": 6, "sport": 1, "dport": 2},
            id="ipv6-with-flow-label",
        ),
        pytest.param(
            IPv6(src="2001:db8::1", dst="2001:db8::2")
            / IPv6ExtHdrHopByHop()
            / IPv6ExtHdrRouting(addresses=["2001:db8::9"])
            / IPv6ExtHdrDestOpt()
            / UDP(sport=7, dport=9),
            {"inner": "ipv6", "proto": 17, "sport": 7, "dport": 9},
            id="ipv6-extension-headers",
        ),
        pytest.param(
            IPv6(src="2001:db8::1", dst="2001:db8::2")
            / IPv6ExtHdrFragment(offset=0, m=1)
            / UDP(sport=7, dport=9),
            {"inner": "ipv6", "proto": 17, "sport": 7, "dport": 9},
            id="first-ipv6-fragment-has-ports",
        ),
        pytest.param(
            IPv6(src="2001:db8::1", dst="2001:db8::2")
            / IPv6ExtHdrFragment(offset=100, nh=17)
            / Raw(b"y" * 16),
            {"inner": "ipv6", "proto": 17, "sport": None, "dport": None},
            id="later-ipv6-fragment-has-no-ports",
        ),
        pytest.param(
            IPv6(src="2001:db8::1", dst="2001:db8::2")
            / AH(nh=6, payloadlen=4, icv=bytes(12))
            / TCP(sport=3, dport=4),
            {"inner": "ipv6", "proto": 6, "sport": 3, "dport": 4},
            id="ipv6-authentication-header",
        ),
        pytest.param(
            IPv6(src="fe80::1", dst="ff02::1") / ICMPv6EchoRequest(),
            {"inner": "ipv6", "src": "fe80::1", "dst": "ff02::1", "proto": 58, "sport": None},
            id="icmpv6",
        ),
    ],
)
def test_it_decodes_ip_inner_packets(inner: Packet, expected: dict[str, object]):
    packet = decode_datagram(jmirror(inner))
    fields = decoded_fields(packet)
    assert {key: fields[key] for key in expected} == expected
    assert packet.length == len(inner)


@pytest.mark.parametrize(
    ("inner", "expected"),
    [
        pytest.param(
            ppp(0x0021, IP(src="100.64.0.9", dst="198.51.100.1") / UDP(sport=1234, dport=53)),
            {"ppp_protocol": 0x21, "src": "100.64.0.9", "proto": 17, "dport": 53},
            id="ipv4",
        ),
        pytest.param(
            ppp(0x0057, IPv6(src="2001:db8::5", dst="2001:db8::6") / TCP(sport=80, dport=81)),
            {"ppp_protocol": 0x57, "src": "2001:db8::5", "proto": 6, "dport": 81},
            id="ipv6",
        ),
        pytest.param(
            ppp(0xC021, PPP_LCP_Echo(code=9, id=1, magic_number=7)),
            {"ppp_protocol": 0xC021, "src": None, "proto": None, "dport": None},
            id="lcp",
        ),
        pytest.param(
            ppp(0xC023, PPP_PAP_Request(username=b"alice", password=b"pw")),
            {"ppp_protocol": 0xC023, "src": None},
            id="pap",
        ),
        pytest.param(
            ppp(0xC223, PPP_CHAP(code=1, id=3, value=b"0123456789abcdef", optional_name=b"r")),
            {"ppp_protocol": 0xC223, "src": None},
            id="chap",
        ),
        pytest.param(ppp(0x8021, PPP_IPCP(code=1, id=1)), {"ppp_protocol": 0x8021}, id="ipcp"),
        pytest.param(
            ppp(0x8057, b"\x01\x01\x00\x0e\x01\x0a\x00\x00\x00\x00\x00\x00\x00\x01"),
            {"ppp_protocol": 0x8057, "src": None},
            id="ipv6cp",
        ),
        pytest.param(
            b"\xff\x03\x21" + bytes(IP(src="10.9.9.9", dst="10.8.8.8") / ICMP()),
            {"ppp_protocol": 0x21, "src": "10.9.9.9", "proto": 1},
            id="compressed-protocol-field",
        ),
    ],
)
def test_it_decodes_ppp_in_hdlc_framing(inner: bytes, expected: dict[str, object]):
    packet = decode_datagram(jmirror(inner))
    fields = decoded_fields(packet)
    assert packet.inner == "ppp"
    assert {key: fields[key] for key in expected} == expected
    assert is_plausible_jmirror(packet)


def test_an_inner_packet_of_no_known_kind_decodes_as_unknown():
    packet = decode_datagram(jmirror(b"\x12\x34\x56\x78"))
    assert (packet.inner, packet.src, packet.proto, packet.length) == ("unknown", None, None, 4)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        pytest.param(b"", DecodeFailure.TOO_SHORT, id="empty"),
        pytest.param(b"\x00\x00\x03\x00\x00\x00\x00", DecodeFailure.TOO_SHORT, id="seven-bytes"),
        pytest.param(jmirror(b""), DecodeFailure.NO_MIRRORED_PACKET, id="header-only"),
        pytest.param(
            jmirror(bytes(IP() / ICMP())[:19]), DecodeFailure.TRUNCATED_INNER_HEADER, id="ipv4-19"
        ),
        pytest.param(
            jmirror(bytes(IP() / TCP())[:-1]), DecodeFailure.INCONSISTENT_LENGTH, id="ipv4-cut"
        ),
        pytest.param(
            jmirror(bytes(IP() / TCP()) + b"\x00"),
            DecodeFailure.INCONSISTENT_LENGTH,
            id="ipv4-trailer",
        ),
        pytest.param(
            jmirror(b"\x44" + bytes(IP() / TCP())[1:]), DecodeFailure.BAD_INNER_HEADER, id="ihl-4"
        ),
        pytest.param(
            jmirror(b"\x4f" + bytes(IP() / TCP())[1:]),
            DecodeFailure.TRUNCATED_INNER_HEADER,
            id="ihl-past-end",
        ),
        pytest.param(
            jmirror(bytes(IPv6() / TCP())[:39]), DecodeFailure.TRUNCATED_INNER_HEADER, id="ipv6-39"
        ),
        pytest.param(
            jmirror(bytes(IPv6() / TCP())[:-2]), DecodeFailure.INCONSISTENT_LENGTH, id="ipv6-cut"
        ),
        pytest.param(
            jmirror(bytes(IPv6(plen=8, nh=0)) + b"\x06\x05" + b"\x00" * 6),
            DecodeFailure.TRUNCATED_INNER_HEADER,
            id="ipv6-extension-past-end",
        ),
        pytest.param(jmirror(b"\xff\x03\xc0"), DecodeFailure.TRUNCATED_INNER_HEADER, id="ppp-3"),
        pytest.param(
            jmirror(ppp(0x21, bytes(IPv6() / TCP()))),
            DecodeFailure.BAD_INNER_HEADER,
            id="ppp-ipv4-holding-ipv6",
        ),
        pytest.param(
            jmirror(ppp(0x57, bytes(IPv6() / TCP())[:-1])),
            DecodeFailure.INCONSISTENT_LENGTH,
            id="ppp-ipv6-cut",
        ),
    ],
)
def test_malformed_datagrams_raise_the_typed_error_with_its_reason(
    payload: bytes, reason: DecodeFailure
):
    with pytest.raises(DecodeError) as raised:
        decode_datagram(payload)
    assert raised.value.reason is reason
    assert str(raised.value).startswith(f"{reason.value}: ")


def test_a_damaged_datagram_still_names_its_mirror_and_session():
    with pytest.raises(DecodeError) as raised:
        decode_datagram(jmirror(bytes(IP() / TCP())[:-1], mid=0x8000, sid=7))
    assert (raised.value.mid, raised.value.sid) == (0x8000, 7)


@settings(max_examples=3000)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_only_the_typed_error(payload: bytes):
    try:
        packet = decode_datagram(payload)
    except DecodeError:
        return
    assert packet.length == len(payload) - 8
    is_plausible_jmirror(packet)


_VALID_INNERS = [
    bytes(IP(options=[IPOption_Router_Alert()]) / TCP()),
    bytes(IPv6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment() / UDP()),
    ppp(0x57, IPv6() / AH(nh=17, payloadlen=4, icv=bytes(12)) / UDP()),
    ppp(0x21, IP() / UDP()),
    ppp(0xC021, PPP_LCP_Echo()),
]


@settings(max_examples=3000)
@given(
    st.sampled_from(_VALID_INNERS),
    st.lists(st.tuples(st.integers(0, 299), st.integers(0, 255)), max_size=6),
    st.integers(0, 300),
)
def test_corrupted_valid_packets_decode_or_raise_only_the_typed_error(
    inner: bytes, flips: list[tuple[int, int]], cut: int
):
    payload = bytearray(jmirror(inner))
    for position, value in flips:
        if position < len(payload):
            payload[position] = value
    try:
        packet = decode_datagram(bytes(payload[: len(payload) - cut % len(payload)]))
    except DecodeError:
        return
    is_plausible_jmirror(packet)


@pytest.mark.parametrize(
    "inner",
    [
        pytest.param(IP(options=[IPOption_Router_Alert()]) / UDP(), id="ipv4-options"),
        pytest.param(IPv6(fl=0x12345) / TCP(), id="ipv6-flow-label"),
        pytest.param(IPv6(tc=0xB8) / UDP(), id="ipv6-traffic-class"),
        pytest.param(IPv6() / IPv6ExtHdrHopByHop() / UDP(), id="ipv6-hop-by-hop"),
        pytest.param(ppp(0xC023, PPP_PAP_Request(username=b"u", password=b"p")), id="pap"),
        pytest.param(ppp(0xC223, PPP_CHAP(code=2, id=1, value=b"v" * 16)), id="chap"),
        pytest.param(
            ppp(0x8057, b"\x01\x01\x00\x0e\x01\x0a\x00\x00\x00\x00\x00\x00\x00\x01"),
            id="ipv6cp",
        ),
    ],
)
def test_it_detects_jmirror_that_wiresharks_heuristic_misses(inner: Packet | bytes):
    assert looks_like_jmirror(jmirror(inner))


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(jmirror(IP() / TCP(), mid=0x40000300), id="version-1"),
        pytest.param(
            jmirror(bytes(IP() / TCP())[:10] + b"\x00\x00" + bytes(IP() / TCP())[12:]),
            id="bad-ipv4-checksum",
        ),
        pytest.param(jmirror(b"\x12\x34\x56\x78"), id="unknown-inner"),
        pytest.param(jmirror(ppp(0x1234, b"\x01\x02")), id="unknown-ppp-protocol"),
        pytest.param(jmirror(ppp(0xC021, b"\x09\x01\x00\x20\x00\x00\x00\x00")), id="lcp-length"),
        pytest.param(jmirror(ppp(0xC021, b"\x63\x01\x00\x04")), id="lcp-code-99"),
        pytest.param(jmirror(ppp(0x21, b"\x45" + bytes(19))), id="ppp-ipv4-bad-checksum"),
    ],
)
def test_detection_rejects_what_only_looks_like_jmirror(payload: bytes):
    assert not looks_like_jmirror(payload)


def _ordinary_udp_payloads() -> list[bytes]:
    rng = random.Random(2026)
    payloads: list[bytes] = []
    for index in range(300):
        name = f"host{index}.example{index % 7}.net"
        payloads.append(bytes(DNS(id=index, rd=1, qd=DNSQR(qname=name))))
        payloads.append(
            bytes(
                DNS(
                    id=index,
                    qr=1,
                    qd=DNSQR(qname=name),
                    an=DNSRR(rrname=name, rdata=f"192.0.2.{index % 250}"),
                )
            )
        )
        payloads.append(bytes(NTP(ref=index, orig=index * 3)))
        payloads.append(f"<134>Nov 22 03:24:{index % 60:02d} r1 sshd[1]: ok".encode())
        payloads.append(rng.randbytes(rng.randrange(1, 1400)))
        # Random bytes that start like IPv4 after an 8-byte "header", the nearest miss.
        payloads.append(rng.randbytes(8) + b"\x45" + rng.randbytes(rng.randrange(19, 200)))
    return payloads


def test_detection_finds_no_jmirror_in_ordinary_udp_traffic():
    payloads = _ordinary_udp_payloads()
    detected = [payload[:16].hex() for payload in payloads if looks_like_jmirror(payload)]
    assert detected == []


@settings(max_examples=3000)
@given(st.binary(min_size=0, max_size=600))
def test_detection_finds_no_jmirror_in_random_payloads(payload: bytes):
    assert not looks_like_jmirror(payload)


def test_the_decoding_core_imports_no_django():
    """The sans-I/O core and the receive loop load neither Django nor the web project:
    the receive loop once loaded jmirror_web for parsing an address."""
    code = (
        "import sys, receiver.jmirror, receiver.pcap_reader, receiver.offline, "
        "receiver.pcap, receiver.ip, receiver.gate, receiver.store, receiver.pipeline, "
        "receiver.receive_loop; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('django', 'jmirror_web')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def _outcome(decode: object, payload: bytes) -> object:
    try:
        return decode(payload)  # type: ignore[operator]
    except DecodeError as error:
        return ("DecodeError", error.reason)


def _decoded_fields(payload: bytes) -> object:
    packet = decode_datagram(payload)
    return packet.mid, packet.sid, packet.inner


_VALID = [
    bytes(ipv4_udp()),
    bytes(ipv6_tcp_flow_label()),
    bytes(IP(src="192.0.2.1", dst="198.51.100.2", options=[IPOption_Router_Alert()]) / UDP()),
    b"\xff\x03\x00\x21" + bytes(ipv4_udp()),
    b"\xff\x03\x00\x21" + bytes(IP(src="192.0.2.1", dst="198.51.100.2") / ICMP()),
    b"\xff\x03\x00\x57" + bytes(ipv6_tcp_flow_label()),
    b"\xff\x03\x21" + bytes(ipv4_udp()),
]


@settings(max_examples=3000, deadline=None)
@given(
    st.sampled_from(_VALID),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
    st.integers(-20, 20),
)
def test_classify_agrees_with_decode_on_valid_and_damaged_datagrams(
    inner: bytes, mid: int, sid: int, edits: list[tuple[int, int]], cut: int
) -> None:
    payload = bytearray(struct.pack("!II", mid, sid) + inner)
    for position, value in edits:
        if position < len(payload):
            payload[position] = value
    damaged = bytes(payload[: len(payload) + cut] if cut < 0 else payload + b"\x00" * cut)
    assert _outcome(classify_datagram, damaged) == _outcome(_decoded_fields, damaged)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=120))
def test_classify_agrees_with_decode_on_random_bytes(payload: bytes) -> None:
    assert _outcome(classify_datagram, payload) == _outcome(_decoded_fields, payload)
