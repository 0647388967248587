"""The live packet list's one-line summaries, against hand-checked expectations, against
tshark's Protocol and Info columns, and against random and hostile packets."""

import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    IPv6,
)
from scapy.layers.ppp import (
    HDLC,
    PPP,
    PPP_IPCP,
    PPP_LCP_Echo,
    PPP_LCP_Terminate,
    PPP_PAP_Request,
)
from scapy.packet import Packet

from receiver import traffic
from receiver.jmirror import DecodeError, InnerKind, JMirrorPacket, decode_datagram
from receiver.live_contract import INFO_LIMIT, PacketRow
from receiver.management.commands.simulate import TLS_SERVER_HELLO, tls_client_hello
from receiver.packet_summary import packet_row

TSHARK = shutil.which("tshark")
T0 = 1_795_000_000_123_456_789
LINKTYPE_RAW = 101
LINKTYPE_PPP_HDLC = 50
PRINTABLE = re.compile(r"[ -~]*")


def row_of(inner: Packet | bytes, time_ns: int = T0) -> PacketRow:
    """The row for ``inner`` mirrored by a router and decoded as the receiver does."""
    return packet_row(time_ns, decode_datagram(traffic.jmirror_datagram(inner, mid=7, sid=9)))


def undecoded(inner: InnerKind, data: bytes) -> JMirrorPacket:
    """A packet the decoder would never produce (it checks IP lengths): the summary must
    not rely on those checks."""
    return JMirrorPacket(
        mid=7,
        intercept_id=7,
        version=0,
        sid=9,
        inner=inner,
        ppp_protocol=None,
        src=None,
        dst=None,
        proto=None,
        sport=None,
        dport=None,
        length=len(data),
        data=data,
    )


def ppp(protocol: int, body: bytes) -> bytes:
    return b"\xff\x03" + struct.pack("!H", protocol) + body


def control(code: int, data: bytes = b"", identifier: int = 1) -> bytes:
    """A PPP control packet (LCP, PAP, CHAP...): code, identifier, length, data."""
    return struct.pack("!BBH", code, identifier, 4 + len(data)) + data


def dns_message(question: bytes, *, flags: int = 0x0100, identifier: int = 0x1234) -> bytes:
    return struct.pack("!HHHHHH", identifier, flags, 1, 0, 0, 0) + question


def assert_displayable(row: PacketRow) -> None:
    assert PRINTABLE.fullmatch(row["info"]), row["info"]
    assert len(row["info"]) <= INFO_LIMIT
    assert row["protocol"]
    assert PRINTABLE.fullmatch(row["protocol"])


# What each case is compared with in tshark's columns: "same" protocol and info (once
# tshark's arrow and padding are normalised), tshark's info only "starts" with ours
# (it adds answers, passwords...), only the "protocol", or nothing (see the case).
TsharkCheck = Literal["same", "starts", "protocol", "none"]


@dataclass(frozen=True)
class Case:
    name: str
    packet: Packet | bytes
    protocol: str
    info: str
    tshark: TsharkCheck = "same"

    @property
    def linktype(self) -> int:
        return LINKTYPE_PPP_HDLC if bytes(self.packet)[:2] == b"\xff\x03" else LINKTYPE_RAW


def _dns_hostile_name() -> bytes:
    return b"\x08<script>\x01a\x02\x1b\xff\x07example\x00"


A = traffic.SUBSCRIBER
B = traffic.SERVER
A6 = traffic.SUBSCRIBER6
B6 = traffic.SERVER6

CASES = [
    # TCP
    Case(
        "ipv4_tcp_syn_ack",
        IP(src=B, dst=A) / TCP(sport=443, dport=49152, flags="SA", seq=1000, ack=2001),
        "TCP",
        "443 > 49152 [SYN, ACK] Seq=1000 Ack=2001 Win=8192 Len=0",
    ),
    Case(
        "ipv4_tcp_fin_psh_urg",
        IP(src=A, dst=B) / TCP(sport=1234, dport=40000, flags="FPU", seq=7, urgptr=5) / b"xy",
        "TCP",
        "1234 > 40000 [FIN, PSH, URG] Seq=7 Win=8192 Urg=5 Len=2",
    ),
    Case(
        "ipv4_tcp_no_flags",
        IP(src=A, dst=B) / TCP(sport=1234, dport=40000, flags=0, seq=9),
        "TCP",
        "1234 > 40000 [<None>] Seq=9 Win=8192 Len=0",
    ),
    Case(
        "ipv6_tcp_data",
        IPv6(src=A6, dst=B6)
        / TCP(sport=49153, dport=40022, flags="PA", seq=5, ack=6, window=501)
        / (b"\x00" * 36),
        "TCP",
        "49153 > 40022 [PSH, ACK] Seq=5 Ack=6 Win=501 Len=36",
    ),
    Case(
        "ipv6_extension_headers_tcp",
        traffic.ipv6_extension_headers_tcp().packet,
        "TCP",
        "49154 > 80 [SYN] Seq=0 Win=8192 Len=0",
    ),
    Case(
        "ppp_ipv6_tcp",
        traffic.ppp_ipv6_tcp().packet,
        "TCP",
        "49155 > 443 [ACK] Seq=0 Ack=0 Win=8192 Len=0",
    ),
    # HTTP: a complete request or status line, whatever the port
    Case("ipv4_http_request", traffic.ipv4_tcp().packet, "HTTP", "GET / HTTP/1.1"),
    Case(
        "ipv6_http_response",
        IPv6(src=B6, dst=A6)
        / TCP(sport=80, dport=49153, flags="PA")
        / b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        "HTTP",
        "HTTP/1.1 404 Not Found",
    ),
    Case(
        "ppp_ipv4_http_request",
        HDLC()
        / PPP(proto=traffic.PPP_IPV4)
        / IP(src=A, dst=B)
        / TCP(sport=40000, dport=8080, flags="PA")
        / b"POST /login HTTP/1.0\r\n\r\n",
        "HTTP",
        "POST /login HTTP/1.0",
    ),
    # TLS: the hellos, as Wireshark names them (its 4.0 leaves the server name out of the
    # Client Hello's info; later versions add it as here).
    Case(
        "ipv4_tls_client_hello",
        IP(src=A, dst=B)
        / TCP(sport=49154, dport=443, flags="PA", seq=1001, ack=5001)
        / tls_client_hello("www.example.org"),
        "TLSv1",
        "Client Hello (SNI=www.example.org)",
        "protocol",
    ),
    Case(
        "ipv4_tls_server_hello",
        IP(src=B, dst=A)
        / TCP(sport=443, dport=49154, flags="PA", seq=5001, ack=1077)
        / TLS_SERVER_HELLO,
        "TLSv1.2",
        "Server Hello",
    ),
    # UDP
    Case(
        "ipv4_udp",
        IP(src=A, dst=B) / UDP(sport=50000, dport=40000) / (b"u" * 10),
        "UDP",
        "50000 > 40000 Len=10",
    ),
    Case(
        "ipv6_udp",
        IPv6(src=A6, dst=B6) / UDP(sport=50000, dport=40500) / (b"u" * 3),
        "UDP",
        "50000 > 40500 Len=3",
    ),
    # tshark names NTP by its port; the summary does not guess protocols from ports.
    Case("ppp_ipv4_udp_ntp", traffic.ppp_ipv4_udp().packet, "UDP", "50004 > 123 Len=48", "none"),
    # DNS
    Case(
        "ipv4_dns_query",
        traffic.ipv4_udp().packet,
        "DNS",
        "Standard query 0x4a4a A www.example.com",
    ),
    Case(
        "ipv4_dns_response",
        traffic.dns_response(),
        "DNS",
        "Standard query response 0x4a4a A www.example.com",
        "starts",
    ),
    Case(
        "ipv6_dns_no_such_name",
        IPv6(src=B6, dst=A6)
        / UDP(sport=53, dport=50002)
        / DNS(id=1, qr=1, rcode=3, qd=DNSQR(qname="nx.example", qtype="AAAA")),
        "DNS",
        "Standard query response 0x0001 No such name AAAA nx.example",
    ),
    Case(
        "ppp_ipv4_dns_query",
        HDLC()
        / PPP(proto=traffic.PPP_IPV4)
        / IP(src=A, dst=B)
        / UDP(sport=50001, dport=53)
        / DNS(id=0xBEEF, qd=DNSQR(qname="isp.example", qtype=65)),
        "DNS",
        "Standard query 0xbeef HTTPS isp.example",
    ),
    Case(
        "ipv4_dns_update",
        IP(src=A, dst=B)
        / UDP(sport=50001, dport=53)
        / DNS(id=2, opcode=5, qd=DNSQR(qname="zone.example", qtype="SOA")),
        "DNS",
        "Dynamic update 0x0002 SOA zone.example",
    ),
    Case(
        "ipv4_dns_unknown_type_root",
        IP(src=A, dst=B)
        / UDP(sport=50001, dport=53)
        / dns_message(b"\x00" + struct.pack("!HH", 999, 1)),
        "DNS",
        "Standard query 0x1234 Unknown (999) <Root>",
    ),
    Case(
        "ipv4_dns_truncated_label",
        IP(src=A, dst=B) / UDP(sport=50001, dport=53) / dns_message(b"\x03ab"),
        "DNS",
        "DNS (malformed)",
        "protocol",
    ),
    Case(
        "ipv4_dns_pointer_loop",
        IP(src=A, dst=B) / UDP(sport=50001, dport=53) / dns_message(b"\xc0\x0c\x00\x01\x00\x01"),
        "DNS",
        "DNS (malformed)",
        "protocol",
    ),
    # ICMP and ICMPv6
    Case(
        "ipv4_icmp_echo_request",
        traffic.ipv4_icmp().packet,
        "ICMP",
        "Echo (ping) request id=0x0200, seq=1, ttl=64",
    ),
    Case(
        "ppp_ipv4_icmp_echo_reply",
        b"\xff\x03\x21" + bytes(IP(src=B, dst=A, ttl=57) / ICMP(type=0, id=3, seq=2)),
        "ICMP",
        "Echo (ping) reply id=0x0003, seq=2, ttl=57",
    ),
    Case(
        "ipv4_icmp_port_unreachable",
        IP(src=B, dst=A) / ICMP(type=3, code=3) / IP(src=A, dst=B) / UDP(sport=1, dport=2),
        "ICMP",
        "Destination unreachable (Port unreachable)",
    ),
    Case(
        "ipv4_icmp_ttl_exceeded",
        IP(src=B, dst=A) / ICMP(type=11, code=0) / IP(src=A, dst=B) / UDP(sport=1, dport=2),
        "ICMP",
        "Time-to-live exceeded (Time to live exceeded in transit)",
    ),
    Case(
        "ipv6_icmpv6_echo_request",
        traffic.ipv6_icmpv6().packet,
        "ICMPv6",
        "Echo (ping) request id=0x0007, seq=1, hop limit=64",
    ),
    Case(
        "ppp_ipv6_icmpv6_echo_reply",
        HDLC() / PPP(proto=traffic.PPP_IPV6) / IPv6(src=B6, dst=A6) / ICMPv6EchoReply(id=7, seq=1),
        "ICMPv6",
        "Echo (ping) reply id=0x0007, seq=1, hop limit=64",
        "starts",
    ),
    Case(
        "ipv6_neighbor_solicitation",
        IPv6(src=A6, dst="ff02::1:ff00:80", hlim=255) / ICMPv6ND_NS(tgt=B6),
        "ICMPv6",
        "Neighbor Solicitation for 2001:db8:80::80",
    ),
    Case(
        "ipv6_neighbor_advertisement",
        IPv6(src=B6, dst=A6, hlim=255) / ICMPv6ND_NA(tgt=B6, R=0, S=1, O=1),
        "ICMPv6",
        "Neighbor Advertisement 2001:db8:80::80 (sol, ovr)",
    ),
    Case(
        "ipv6_router_solicitation",
        IPv6(src="fe80::7", dst="ff02::2", hlim=255) / ICMPv6ND_RS(),
        "ICMPv6",
        "Router Solicitation",
    ),
    Case(
        "ppp_ipv6_router_advertisement",
        HDLC()
        / PPP(proto=traffic.PPP_IPV6)
        / IPv6(src="fe80::1", dst="ff02::1", hlim=255)
        / ICMPv6ND_RA(),
        "ICMPv6",
        "Router Advertisement",
    ),
    Case(
        "ipv6_port_unreachable",
        IPv6(src=B6, dst=A6) / ICMPv6DestUnreach(code=4) / IPv6(src=A6, dst=B6) / UDP(),
        "ICMPv6",
        "Destination Unreachable (Port unreachable)",
    ),
    # Fragments: only the first carries the transport header
    Case(
        "ipv4_first_fragment",
        traffic.ipv4_udp_fragments()[0].packet,
        "UDP",
        "50001 > 40000 Len=120",
    ),
    Case(
        "ipv4_non_first_fragment",
        traffic.ipv4_udp_fragments()[1].packet,
        "IPv4",
        "Fragmented IP protocol (proto=UDP 17, off=64, ID=2001)",
    ),
    Case(
        "ppp_ipv4_non_first_fragment",
        HDLC() / PPP(proto=traffic.PPP_IPV4) / traffic.ipv4_udp_fragments()[1].packet,
        "IPv4",
        "Fragmented IP protocol (proto=UDP 17, off=64, ID=2001)",
    ),
    Case(
        "ipv6_first_fragment",
        traffic.ipv6_udp_fragments()[0].packet,
        "UDP",
        "50003 > 40000 Len=120",
    ),
    Case(
        "ipv6_non_first_fragment",
        traffic.ipv6_udp_fragments()[1].packet,
        "IPv6",
        "IPv6 fragment (off=64 more=n ident=0x00006001 nxt=17)",
    ),
    # Other IP protocols: by name where known, by number otherwise
    Case(
        "ipv4_esp",
        IP(src=A, dst=B, proto=50) / struct.pack("!II", 0x1234, 1) / (b"\x00" * 16),
        "ESP",
        "ESP (SPI=0x00001234)",
    ),
    Case("ipv4_gre", IP(src=A, dst=B, proto=47) / (b"\x00" * 8), "GRE", "", "protocol"),
    Case(
        "ipv4_unassigned",
        IP(src=A, dst=B, proto=200) / b"data",
        "IPv4",
        "IP protocol 200",
        "protocol",
    ),
    Case(
        "ipv6_unassigned",
        IPv6(src=A6, dst=B6, nh=200) / b"data",
        "IPv6",
        "IP protocol 200",
        "protocol",
    ),
    Case("ipv6_no_next_header", IPv6(src=A6, dst=B6, nh=59), "IPv6", "IPv6 no next header"),
    # PPP control protocols
    Case("ppp_lcp_configure_request", traffic.ppp_lcp().packet, "PPP LCP", "Configuration Request"),
    Case(
        "ppp_lcp_configure_ack",
        ppp(traffic.PPP_LCP, control(2, bytes.fromhex("010405d4"))),
        "PPP LCP",
        "Configuration Ack",
    ),
    Case(
        "ppp_lcp_echo_request",
        HDLC() / PPP(proto=traffic.PPP_LCP) / PPP_LCP_Echo(code=9, id=4, magic_number=0x6DAB9FF6),
        "PPP LCP",
        "Echo Request",
    ),
    Case(
        "ppp_lcp_termination_ack",
        HDLC() / PPP(proto=traffic.PPP_LCP) / PPP_LCP_Terminate(code=6, id=2),
        "PPP LCP",
        "Termination Ack",
    ),
    Case(
        "ppp_ipcp_configure_request", traffic.ppp_ipcp().packet, "PPP IPCP", "Configuration Request"
    ),
    Case(
        "ppp_ipcp_configure_nak",
        HDLC() / PPP(proto=traffic.PPP_IPCP_PROTOCOL) / PPP_IPCP(code=3, id=1),
        "PPP IPCP",
        "Configuration Nak",
    ),
    Case(
        "ppp_ipv6cp_configure_request",
        traffic.ppp_ipv6cp().packet,
        "PPP IPV6CP",
        "Configuration Request",
    ),
    Case("ppp_ccp_reset_request", ppp(0x80FD, control(14)), "PPP CCP", "Reset Request"),
    # Wireshark shows the password too; the live list deliberately does not.
    Case(
        "ppp_pap_request",
        traffic.ppp_pap().packet,
        "PPP PAP",
        "Authenticate-Request (Peer-ID='subscriber@isp.example')",
        "protocol",
    ),
    Case(
        "ppp_pap_ack",
        ppp(traffic.PPP_PAP, control(2, b"\x07welcome")),
        "PPP PAP",
        "Authenticate-Ack (Message='welcome')",
    ),
    # Wireshark adds the challenge value, which says nothing to a reader.
    Case(
        "ppp_chap_challenge",
        traffic.ppp_chap().packet,
        "PPP CHAP",
        "Challenge (NAME='bras')",
        "protocol",
    ),
    Case(
        "ppp_chap_failure",
        ppp(traffic.PPP_CHAP, control(4, b"E=691")),
        "PPP CHAP",
        "Failure (MESSAGE='E=691')",
    ),
    Case("ppp_eap_identity", ppp(0xC227, control(1, b"\x01")), "EAP", "Request, Identity"),
    # tshark shows the labelled packet's own protocol.
    Case(
        "ppp_mpls",
        ppp(0x0281, struct.pack("!I", (16 << 12) | 0x1FF) + bytes(IP(src=A, dst=B))),
        "MPLS",
        "MPLS Label Switched Packet",
        "none",
    ),
    # Wireshark 4.0 puts the bare number in its Protocol column for these.
    Case("ppp_lqr", ppp(0xC025, b"\x00" * 48), "PPP LQR", "Link Quality Report", "none"),
    Case(
        "ppp_unknown_protocol",
        ppp(0x1235, b"\x00" * 8),
        "PPP",
        "Unknown protocol 0x1235",
        "none",
    ),
    Case(
        "ppp_lcp_truncated",
        ppp(traffic.PPP_LCP, b"\x01\x01\x00"),
        "PPP LCP",
        "PPP LCP (malformed)",
        "none",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_the_summary_names_the_protocol_and_says_what_the_packet_is(case: Case):
    row = row_of(case.packet)

    assert (row["protocol"], row["info"]) == (case.protocol, case.info)
    assert_displayable(row)


def test_the_row_carries_the_decoded_addressing_time_length_and_inner_kind():
    mirrored = traffic.ipv6_udp()

    row = row_of(mirrored.packet, time_ns=T0)

    assert row == {
        "time_ns": T0,
        "src": traffic.SUBSCRIBER6,
        "dst": traffic.SERVER6,
        "sport": 50002,
        "dport": 53,
        "protocol": "DNS",
        "length": mirrored.length,
        "inner": "ipv6",
        "info": "Standard query 0x4a4a A www.example.com",
    }


def test_ppp_control_rows_have_no_addresses_and_count_the_ppp_header():
    mirrored = traffic.ppp_lcp()

    row = row_of(mirrored.packet)

    assert (row["src"], row["dst"], row["sport"], row["dport"]) == (None, None, None, None)
    assert (row["inner"], row["length"]) == ("ppp", mirrored.length)


def test_an_unknown_inner_packet_gets_a_row_without_info():
    row = row_of(b"\x00\x01\x02\x03")

    assert (row["protocol"], row["info"], row["inner"], row["length"]) == (
        "unknown",
        "",
        "unknown",
        4,
    )


@pytest.mark.parametrize(
    ("inner", "data", "protocol", "info"),
    [
        ("ipv4", b"\x45\x00", "IPv4", "IPv4 (malformed)"),
        ("ipv4", bytes(IP(proto=6))[:20], "TCP", "TCP (malformed)"),
        ("ipv6", b"\x60" + bytes(10), "IPv6", "IPv6 (malformed)"),
        ("ppp", b"\xff\x03\xc0", "PPP", "PPP (malformed)"),
        ("ppp", b"\xff\x03\x00\x21\x45", "PPP", "PPP (malformed)"),
    ],
)
def test_a_packet_cut_inside_its_headers_says_it_is_malformed(
    inner: InnerKind, data: bytes, protocol: str, info: str
):
    row = packet_row(T0, undecoded(inner, data))

    assert (row["protocol"], row["info"]) == (protocol, info)


# Hostile content


HOSTILE = b"<script>alert(1)</script>\x00\x1b[2J\r\n\xe2\x80\xae\\x41"


def test_a_hostile_pap_peer_id_comes_out_escaped_and_bounded():
    packet = HDLC() / PPP(proto=traffic.PPP_PAP) / PPP_PAP_Request(username=HOSTILE, password=b"x")

    info = row_of(packet)["info"]

    assert info.startswith("Authenticate-Request (Peer-ID='<script>alert(1)</script>\\x00\\x1b")
    assert PRINTABLE.fullmatch(info)
    assert info.endswith("...')"), "the peer id is cut short, the summary is not"


def test_escapes_cannot_be_forged_by_the_packet():
    packet = (
        HDLC() / PPP(proto=traffic.PPP_PAP) / PPP_PAP_Request(username=b"a\\x41\x01", password=b"")
    )

    assert row_of(packet)["info"] == "Authenticate-Request (Peer-ID='a\\\\x41\\x01')"


def test_a_hostile_dns_name_comes_out_escaped():
    packet = (
        IP(src=A, dst=B)
        / UDP(sport=5000, dport=53)
        / dns_message(_dns_hostile_name() + b"\x00\x01\x00\x01")
    )

    row = row_of(packet)

    assert row["info"] == "Standard query 0x1234 A <script>.a.\\x1b\\xff.example"
    assert_displayable(row)


def test_a_hostile_http_request_line_comes_out_escaped():
    packet = (
        IP(src=A, dst=B)
        / TCP(sport=5000, dport=80, flags="PA")
        / (b"GET /\x1b]0;owned\x07<script> HTTP/1.1\r\n\r\n")
    )

    row = row_of(packet)

    assert (row["protocol"], row["info"]) == ("HTTP", "GET /\\x1b]0;owned\\x07<script> HTTP/1.1")


def test_the_longest_dns_name_still_fits_the_info_limit():
    name = b"".join(bytes([63]) + b"\x7f" * 63 for _ in range(3)) + b"\x3d" + b"z" * 61 + b"\x00"
    packet = IP(src=A, dst=B) / UDP(sport=5000, dport=53) / dns_message(name + b"\x00\x01\x00\x01")

    row = row_of(packet)

    assert row["info"].startswith("Standard query 0x1234 A \\x7f\\x7f")
    assert row["info"].endswith("...")
    assert_displayable(row)


@pytest.mark.parametrize(
    "question",
    [
        pytest.param(b"", id="no_question"),
        pytest.param(b"\x01a\x00\x00", id="no_class"),
        pytest.param(b"\x3fabc", id="label_past_the_end"),
        pytest.param(b"\xc0\x0c\x00\x01\x00\x01", id="pointer_to_itself"),
        pytest.param(b"\xc0\x20\x00\x01\x00\x01", id="pointer_forwards"),
        pytest.param(b"\xc0", id="half_a_pointer"),
        pytest.param(b"\x40abc\x00\x00\x01\x00\x01", id="extended_label_type"),
        pytest.param(
            b"\x3f"
            + b"a" * 63
            + b"\x3f"
            + b"b" * 63
            + b"\x3f"
            + b"c" * 63
            + b"\x3f"
            + b"d" * 63
            + b"\x00\x00\x01\x00\x01",
            id="name_over_255_bytes",
        ),
    ],
)
def test_a_malformed_dns_question_falls_back_to_malformed(question: bytes):
    packet = IP(src=A, dst=B) / UDP(sport=5000, dport=53) / dns_message(question)

    row = row_of(packet)

    assert (row["protocol"], row["info"]) == ("DNS", "DNS (malformed)")


def test_a_dns_header_cut_short_is_malformed_and_an_empty_payload_is_plain_udp():
    short = IP(src=A, dst=B) / UDP(sport=5000, dport=53) / b"\x12\x34\x01"
    empty = IP(src=A, dst=B) / UDP(sport=5000, dport=53)

    assert row_of(short)["info"] == "DNS (malformed)"
    assert (row_of(empty)["protocol"], row_of(empty)["info"]) == ("UDP", "5000 > 53 Len=0")


def test_a_dns_pointer_chain_backwards_is_followed():
    # The question's name points back into a name placed (abusively) in the header's
    # counts: RFC 1035 allows any earlier offset.
    message = struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0x0178, 0x00) + b"\xc0\x08\x00\x01\x00\x01"

    row = row_of(IP(src=A, dst=B) / UDP(sport=5000, dport=53) / message)

    assert row["info"] == "Standard query 0x0001 A x"


# Fuzzing: every packet gets a displayable row, never an exception


def ipv4_packet(proto: int, fragment: int, payload: bytes) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(payload),
        1,
        fragment,
        64,
        proto,
        0,
        bytes([10, 0, 0, 1]),
        bytes([10, 0, 0, 2]),
    )
    return header + payload


def ipv6_packet(next_header: int, payload: bytes) -> bytes:
    return (
        struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, 64, bytes(16), bytes(16))
        + payload
    )


IP_PROTOCOLS = st.sampled_from(
    [0, 1, 6, 17, 33, 43, 44, 50, 51, 58, 59, 60, 132, 136]
) | st.integers(0, 255)
PAYLOADS = st.binary(max_size=300)
DNS_PAYLOADS = st.binary(max_size=40).map(dns_message) | PAYLOADS
PPP_PROTOCOLS = st.sampled_from(
    [0x21, 0x57, 0xC021, 0x8021, 0x8057, 0x80FD, 0x8281, 0xC023, 0xC223, 0xC227, 0xC025, 0x281]
) | st.integers(0, 0xFFFF)


def check_row_of_datagram(inner: bytes) -> None:
    """Decodable datagrams go through the decoder, as they do in the receiver; the rest
    are summarised anyway, as the decoder's checks are not the summary's safety."""
    try:
        packet = decode_datagram(b"\x00\x00\x00\x07\x00\x00\x00\x09" + inner)
    except DecodeError:
        kind: InnerKind = (
            "ppp" if inner[:2] == b"\xff\x03" else "ipv4" if inner[:1] == b"\x45" else "ipv6"
        )
        packet = undecoded(kind, inner)
    row = packet_row(T0, packet)
    assert_displayable(row)
    assert row["length"] == len(inner)


@settings(max_examples=400)
@given(
    proto=IP_PROTOCOLS,
    fragment=st.sampled_from([0, 0x2000, 8]) | st.integers(0, 0xFFFF),
    payload=PAYLOADS,
)
def test_random_ipv4_transports_always_give_a_displayable_row(
    proto: int, fragment: int, payload: bytes
):
    check_row_of_datagram(ipv4_packet(proto, fragment, payload))


@settings(max_examples=400)
@given(next_header=IP_PROTOCOLS, payload=PAYLOADS)
def test_random_ipv6_payloads_always_give_a_displayable_row(next_header: int, payload: bytes):
    check_row_of_datagram(ipv6_packet(next_header, payload))


@settings(max_examples=300)
@given(payload=DNS_PAYLOADS, ipv6=st.booleans())
def test_random_dns_messages_always_give_a_displayable_row(payload: bytes, ipv6: bool):
    datagram = struct.pack("!HHHH", 5000, 53, 8 + len(payload), 0) + payload
    check_row_of_datagram(ipv6_packet(17, datagram) if ipv6 else ipv4_packet(17, 0, datagram))


@settings(max_examples=400)
@given(protocol=PPP_PROTOCOLS, compressed=st.booleans(), body=PAYLOADS)
def test_random_ppp_frames_always_give_a_displayable_row(
    protocol: int, compressed: bool, body: bytes
):
    header = (
        bytes([protocol & 0xFF]) if compressed and protocol & 1 else struct.pack("!H", protocol)
    )
    check_row_of_datagram(b"\xff\x03" + header + body)


@settings(max_examples=400)
@given(inner=st.sampled_from(["ipv4", "ipv6", "ppp", "unknown"]), data=st.binary(max_size=200))
def test_random_bytes_of_any_inner_kind_always_give_a_displayable_row(
    inner: InnerKind, data: bytes
):
    row = packet_row(T0, undecoded(inner, data))

    assert_displayable(row)
    assert (row["inner"], row["length"]) == (inner, len(data))


# Agreement with tshark


def write_pcap(path: Path, linktype: int, packets: list[bytes]) -> None:
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)
    records = b"".join(struct.pack("<IIII", 1, 0, len(p), len(p)) + p for p in packets)
    path.write_bytes(header + records)


def tshark_columns(path: Path) -> list[tuple[str, str]]:
    """tshark's Protocol and Info of each packet, dissected alone as the summary does:
    no reassembly, raw sequence numbers, no analysis across packets."""
    assert TSHARK is not None
    options = [
        "ip.defragment:FALSE",
        "ipv6.defragment:FALSE",
        "tcp.relative_sequence_numbers:FALSE",
        "tcp.analyze_sequence_numbers:FALSE",
    ]
    command = [
        TSHARK,
        "-r",
        str(path),
        "-T",
        "fields",
        "-e",
        "_ws.col.Protocol",
        "-e",
        "_ws.col.Info",
    ]
    for option in options:
        command += ["-o", option]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return [tuple(line.split("\t")) for line in output.splitlines()]  # type: ignore[misc]


def normalised_tshark_info(info: str) -> str:
    """tshark's info in the summary's terms: ASCII port arrow, single spaces, no
    malformation note, an ICMP sequence number without its byte-swapped twin."""
    info = info.replace("\u2192", ">").replace("[Malformed Packet]", "")
    info = re.sub(r"seq=(\d+)/\d+", r"seq=\1", info)
    return " ".join(info.split())


@pytest.mark.tshark
@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
@pytest.mark.parametrize("linktype", [LINKTYPE_RAW, LINKTYPE_PPP_HDLC], ids=["raw_ip", "ppp_hdlc"])
def test_the_summaries_agree_with_tsharks_columns(tmp_path: Path, linktype: int):
    cases = [case for case in CASES if case.linktype == linktype and case.tshark != "none"]
    path = tmp_path / "summaries.pcap"
    write_pcap(path, linktype, [bytes(case.packet) for case in cases])

    columns = tshark_columns(path)

    disagreements = []
    for case, (protocol, info) in zip(cases, columns, strict=True):
        row = row_of(case.packet)
        theirs = normalised_tshark_info(info)
        agrees = row["protocol"] == protocol and (
            case.tshark == "protocol"
            or (case.tshark == "same" and row["info"] == theirs)
            or (case.tshark == "starts" and theirs.startswith(row["info"]))
        )
        if not agrees:
            disagreements.append((case.name, (row["protocol"], row["info"]), (protocol, theirs)))
    assert disagreements == []


@settings(max_examples=400)
@given(
    head=st.sampled_from([b"\x16\x03\x01", b"\x16\x03\x03", b"\x16\x03\x09"]),
    body=st.binary(max_size=300),
    keep=st.integers(0, 400),
)
def test_hostile_tls_hellos_always_give_a_displayable_row(head: bytes, body: bytes, keep: int):
    # A real hello cut anywhere, or random bytes behind a handshake record's header.
    hello = tls_client_hello("www.example.org")
    for payload in (head + body, hello[:keep], hello[:keep] + body):
        packet = IP(src=A, dst=B) / TCP(sport=1, dport=443, flags="PA") / payload
        assert_displayable(row_of(packet))
