"""Build jmirror test traffic with Scapy: for tests, the benchmark and ``manage.py simulate``.

Three pieces, from the inside out:

* :class:`Mirrored` samples, one per kind of packet a router mirrors (IPv4 with and
  without options, inner fragments, IPv6 with flow labels and extension headers, PPP in
  HDLC-like framing with IP and control protocols), each with what a decoder must report
  for it. :func:`every_mirrored_kind` lists them all.
* :func:`jmirror_datagram`, :func:`jmirror_packet` and :func:`jmirror_frame` wrap one in
  the jmirror header, the router's IPv4/UDP and Ethernet (with 802.1Q/QinQ tags), and
  :func:`outer_fragments` cuts a frame the way the network does above the path MTU.
* :class:`PcapBuilder` lays frames and non-jmirror UDP noise (:func:`dns_query` and
  friends) out in a capture and records, for every jmirror datagram, the decode expected
  on the frame that completes it.

Nothing here is on the receive path, so it favours clarity over speed.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import KW_ONLY, asdict, dataclass, field
from pathlib import Path
from typing import Final, Literal

from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import (
    ICMP,
    IP,
    TCP,
    UDP,
    IPOption_Router_Alert,
    IPOption_RR,
    fragment,
)
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    RouterAlert,
)
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.layers.ntp import NTP
from scapy.layers.ppp import (
    HDLC,
    PPP,
    PPP_IPCP,
    PPP_CHAP_ChallengeResponse,
    PPP_IPCP_Option_IPAddress,
    PPP_LCP_Configure,
    PPP_LCP_Magic_Number_Option,
    PPP_LCP_MRU_Option,
    PPP_PAP_Request,
)
from scapy.packet import Packet, Padding, Raw
from scapy.utils import wrpcap

from receiver.jmirror import WIRESHARK_DEFAULT_PORT
from receiver.scapy_jmirror import JMirror

InnerKind = Literal["ipv4", "ipv6", "ppp"]

# Documentation address ranges (RFC 5737, RFC 3849) so generated traffic never names
# a real host.
ROUTER: Final = "192.0.2.1"
OTHER_ROUTER: Final = "192.0.2.2"
MEDIATION: Final = "198.51.100.10"
SUBSCRIBER: Final = "203.0.113.7"
SERVER: Final = "198.51.100.80"
SUBSCRIBER6: Final = "2001:db8:7::7"
SERVER6: Final = "2001:db8:80::80"

UNASSIGNED: Final = "0.0.0.0"  # noqa: S104 (an address field still to fill, not a bind)
"""What empty Record Route slots hold and what a subscriber asks IPCP to assign."""

ROUTER_MAC: Final = "02:00:00:00:00:01"
MEDIATION_MAC: Final = "02:00:00:00:00:10"

ETHERNET_MINIMUM: Final = 60
"""Shortest Ethernet frame on the wire without its FCS: capture tools record the
padding of shorter frames, which a reader must trim to the IP length."""

NTP_TRANSMIT_TIME: Final = 3_979_000_000
"""The transmit timestamp of generated NTP requests (2026 in NTP's era 0)."""


PPP_IPV4: Final = 0x0021
PPP_IPV6: Final = 0x0057
PPP_IPCP_PROTOCOL: Final = 0x8021
PPP_IPV6CP: Final = 0x8057
PPP_LCP: Final = 0xC021
PPP_PAP: Final = 0xC023
PPP_CHAP: Final = 0xC223

PROTO_ICMP: Final = 1
PROTO_TCP: Final = 6
PROTO_UDP: Final = 17
PROTO_ICMPV6: Final = 58


@dataclass(frozen=True)
class Mirrored:
    """A packet as a router mirrors it, and what a decoder must report for it.

    ``src``, ``dst`` and ``proto`` describe the IP packet (also inside PPP) and are
    ``None`` without one; ``proto`` is the transport after IPv6 extension headers;
    ``sport``/``dport`` are ``None`` without ports and on non-first fragments.
    """

    name: str
    packet: Packet
    inner: InnerKind
    _: KW_ONLY
    ppp_protocol: int | None = None
    src: str | None = None
    dst: str | None = None
    proto: int | None = None
    sport: int | None = None
    dport: int | None = None

    def __bytes__(self) -> bytes:
        return bytes(self.packet)

    @property
    def length(self) -> int:
        return len(bytes(self.packet))


def _dns_question() -> Packet:
    return DNS(id=0x4A4A, rd=1, qd=DNSQR(qname="www.example.com", qtype="A"))


def _ntp_client_request() -> Packet:
    # Scapy stamps unset NTP timestamps with the current time; generated traffic must
    # come out byte-identical at every build.
    return NTP(version=4, mode=3, stratum=0, id=0, orig=0, sent=NTP_TRANSMIT_TIME)


def ipv4_tcp(
    src: str = SUBSCRIBER, dst: str = SERVER, sport: int = 49152, dport: int = 443
) -> Mirrored:
    packet = (
        IP(src=src, dst=dst, id=0x1001)
        / TCP(sport=sport, dport=dport, flags="PA")
        / Raw(b"GET / HTTP/1.1\r\n\r\n")
    )
    return Mirrored(
        "ipv4_tcp", packet, "ipv4", src=src, dst=dst, proto=PROTO_TCP, sport=sport, dport=dport
    )


def ipv4_udp(
    src: str = SUBSCRIBER, dst: str = SERVER, sport: int = 50000, dport: int = 53
) -> Mirrored:
    packet = IP(src=src, dst=dst, id=0x1002) / UDP(sport=sport, dport=dport) / _dns_question()
    return Mirrored(
        "ipv4_udp", packet, "ipv4", src=src, dst=dst, proto=PROTO_UDP, sport=sport, dport=dport
    )


def ipv4_icmp(src: str = SUBSCRIBER, dst: str = SERVER) -> Mirrored:
    packet = IP(src=src, dst=dst, id=0x1003) / ICMP(id=0x200, seq=1) / Raw(b"abcdefgh" * 4)
    return Mirrored("ipv4_icmp", packet, "ipv4", src=src, dst=dst, proto=PROTO_ICMP)


def ipv4_router_alert_udp(
    src: str = SUBSCRIBER, dst: str = SERVER, sport: int = 1698, dport: int = 1698
) -> Mirrored:
    """IPv4 with a Router Alert option (24-byte header), so the ports sit after it."""
    packet = (
        IP(src=src, dst=dst, id=0x1004, options=[IPOption_Router_Alert()])
        / UDP(sport=sport, dport=dport)
        / Raw(b"alert")
    )
    return Mirrored(
        "ipv4_router_alert_udp",
        packet,
        "ipv4",
        src=src,
        dst=dst,
        proto=PROTO_UDP,
        sport=sport,
        dport=dport,
    )


def ipv4_record_route_icmp(src: str = SUBSCRIBER, dst: str = SERVER) -> Mirrored:
    """IPv4 with a Record Route option (40-byte header): ping -R."""
    packet = (
        IP(src=src, dst=dst, id=0x1005, options=[IPOption_RR(routers=[UNASSIGNED] * 4)])
        / ICMP(id=0x201, seq=1)
        / Raw(b"record")
    )
    return Mirrored("ipv4_record_route_icmp", packet, "ipv4", src=src, dst=dst, proto=PROTO_ICMP)


def ipv4_udp_fragments(
    src: str = SUBSCRIBER, dst: str = SERVER, sport: int = 50001, dport: int = 40000
) -> tuple[Mirrored, Mirrored]:
    """The first and the last fragment of one inner IPv4 UDP datagram (only the first
    carries the ports)."""
    whole = IP(src=src, dst=dst, id=0x2001) / UDP(sport=sport, dport=dport) / Raw(b"s" * 120)
    first, last = _fragment(whole, 64)
    return (
        Mirrored(
            "ipv4_udp_first_fragment",
            first,
            "ipv4",
            src=src,
            dst=dst,
            proto=PROTO_UDP,
            sport=sport,
            dport=dport,
        ),
        Mirrored("ipv4_udp_last_fragment", last, "ipv4", src=src, dst=dst, proto=PROTO_UDP),
    )


def full_size_ipv4_tcp(
    length: int = 1500,
    src: str = SUBSCRIBER,
    dst: str = SERVER,
    sport: int = 443,
    dport: int = 49152,
) -> Mirrored:
    """A ``length``-byte IPv4 TCP segment: at 1500 bytes its jmirror datagram (1536)
    exceeds a 1500-byte path MTU, so the network fragments the outer packet."""
    headers = len(IP() / TCP())
    if length < headers:
        raise ValueError(f"an IPv4 TCP packet has at least {headers} bytes, not {length}")
    packet = (
        IP(src=src, dst=dst, id=0x1006)
        / TCP(sport=sport, dport=dport, flags="A")
        / Raw(bytes(index % 251 for index in range(length - headers)))
    )
    return Mirrored(
        "full_size_ipv4_tcp",
        packet,
        "ipv4",
        src=src,
        dst=dst,
        proto=PROTO_TCP,
        sport=sport,
        dport=dport,
    )


def ipv6_udp(
    src: str = SUBSCRIBER6, dst: str = SERVER6, sport: int = 50002, dport: int = 53
) -> Mirrored:
    packet = IPv6(src=src, dst=dst) / UDP(sport=sport, dport=dport) / _dns_question()
    return Mirrored(
        "ipv6_udp", packet, "ipv6", src=src, dst=dst, proto=PROTO_UDP, sport=sport, dport=dport
    )


def ipv6_tcp_flow_label(
    src: str = SUBSCRIBER6, dst: str = SERVER6, sport: int = 49153, dport: int = 443
) -> Mirrored:
    """IPv6 with a traffic class and a flow label, as most hosts send today."""
    packet = IPv6(src=src, dst=dst, tc=0x28, fl=0x9A3C1) / TCP(sport=sport, dport=dport, flags="S")
    return Mirrored(
        "ipv6_tcp_flow_label",
        packet,
        "ipv6",
        src=src,
        dst=dst,
        proto=PROTO_TCP,
        sport=sport,
        dport=dport,
    )


def ipv6_extension_headers_tcp(
    src: str = SUBSCRIBER6, dst: str = SERVER6, sport: int = 49154, dport: int = 80
) -> Mirrored:
    """Hop-by-hop, routing and destination options headers before TCP."""
    packet = (
        IPv6(src=src, dst=dst)
        / IPv6ExtHdrHopByHop(options=[RouterAlert()])
        / IPv6ExtHdrRouting(type=0, segleft=0, addresses=[])
        / IPv6ExtHdrDestOpt()
        / TCP(sport=sport, dport=dport, flags="S")
    )
    return Mirrored(
        "ipv6_extension_headers_tcp",
        packet,
        "ipv6",
        src=src,
        dst=dst,
        proto=PROTO_TCP,
        sport=sport,
        dport=dport,
    )


def ipv6_udp_fragments(
    src: str = SUBSCRIBER6, dst: str = SERVER6, sport: int = 50003, dport: int = 40000
) -> tuple[Mirrored, Mirrored]:
    """The first and the last fragment (IPv6 fragment header) of one UDP datagram."""
    datagram = bytes(IPv6(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(b"f" * 120))
    transport = datagram[40:]
    cut = 64

    def piece(offset: int, more: int, data: bytes) -> Packet:
        return (
            IPv6(src=src, dst=dst)
            / IPv6ExtHdrFragment(nh=PROTO_UDP, offset=offset // 8, m=more, id=0x6001)
            / Raw(data)
        )

    first = piece(0, 1, transport[:cut])
    last = piece(cut, 0, transport[cut:])
    return (
        Mirrored(
            "ipv6_udp_first_fragment",
            first,
            "ipv6",
            src=src,
            dst=dst,
            proto=PROTO_UDP,
            sport=sport,
            dport=dport,
        ),
        Mirrored("ipv6_udp_last_fragment", last, "ipv6", src=src, dst=dst, proto=PROTO_UDP),
    )


def ipv6_icmpv6(src: str = SUBSCRIBER6, dst: str = SERVER6) -> Mirrored:
    packet = IPv6(src=src, dst=dst) / ICMPv6EchoRequest(id=7, seq=1, data=b"ping6")
    return Mirrored("ipv6_icmpv6", packet, "ipv6", src=src, dst=dst, proto=PROTO_ICMPV6)


def ppp_ipv4_udp(
    src: str = SUBSCRIBER, dst: str = SERVER, sport: int = 50004, dport: int = 123
) -> Mirrored:
    """IPv4 in PPP, as an L2TP-mirrored subscriber's data traffic arrives."""
    packet = (
        HDLC()
        / PPP(proto=PPP_IPV4)
        / IP(src=src, dst=dst, id=0x3001)
        / UDP(sport=sport, dport=dport)
        / _ntp_client_request()
    )
    return Mirrored(
        "ppp_ipv4_udp",
        packet,
        "ppp",
        ppp_protocol=PPP_IPV4,
        src=src,
        dst=dst,
        proto=PROTO_UDP,
        sport=sport,
        dport=dport,
    )


def ppp_ipv4_compressed_protocol(src: str = SUBSCRIBER, dst: str = SERVER) -> Mirrored:
    """IPv4 in PPP with protocol-field compression (one-byte protocol 0x21, RFC 1661)."""
    packet = HDLC() / PPP(proto=b"\x21") / IP(src=src, dst=dst, id=0x3002) / ICMP(id=3, seq=1)
    return Mirrored(
        "ppp_ipv4_compressed_protocol",
        packet,
        "ppp",
        ppp_protocol=PPP_IPV4,
        src=src,
        dst=dst,
        proto=PROTO_ICMP,
    )


def ppp_ipv6_tcp(
    src: str = SUBSCRIBER6, dst: str = SERVER6, sport: int = 49155, dport: int = 443
) -> Mirrored:
    packet = (
        HDLC()
        / PPP(proto=PPP_IPV6)
        / IPv6(src=src, dst=dst)
        / TCP(sport=sport, dport=dport, flags="A")
    )
    return Mirrored(
        "ppp_ipv6_tcp",
        packet,
        "ppp",
        ppp_protocol=PPP_IPV6,
        src=src,
        dst=dst,
        proto=PROTO_TCP,
        sport=sport,
        dport=dport,
    )


def full_size_ppp_ipv6_udp(
    length: int = 1500,
    src: str = SERVER6,
    dst: str = SUBSCRIBER6,
    sport: int = 443,
    dport: int = 50005,
) -> Mirrored:
    """A ``length``-byte PPP frame (HDLC-like framing) carrying IPv6 UDP (QUIC-sized)."""
    headers = len(HDLC() / PPP() / IPv6() / UDP())
    if length < headers:
        raise ValueError(f"a PPP IPv6 UDP packet has at least {headers} bytes, not {length}")
    packet = (
        HDLC()
        / PPP(proto=PPP_IPV6)
        / IPv6(src=src, dst=dst)
        / UDP(sport=sport, dport=dport)
        / Raw(bytes(index % 241 for index in range(length - headers)))
    )
    return Mirrored(
        "full_size_ppp_ipv6_udp",
        packet,
        "ppp",
        ppp_protocol=PPP_IPV6,
        src=src,
        dst=dst,
        proto=PROTO_UDP,
        sport=sport,
        dport=dport,
    )


def ppp_lcp() -> Mirrored:
    packet = (
        HDLC()
        / PPP(proto=PPP_LCP)
        / PPP_LCP_Configure(
            code=1,
            id=1,
            options=[
                PPP_LCP_MRU_Option(max_recv_unit=1492),
                PPP_LCP_Magic_Number_Option(magic_number=0x6DAB9FF6),
            ],
        )
    )
    return Mirrored("ppp_lcp", packet, "ppp", ppp_protocol=PPP_LCP)


def ppp_pap() -> Mirrored:
    packet = (
        HDLC()
        / PPP(proto=PPP_PAP)
        / PPP_PAP_Request(id=1, username=b"subscriber@isp.example", password=b"secret")
    )
    return Mirrored("ppp_pap", packet, "ppp", ppp_protocol=PPP_PAP)


def ppp_chap() -> Mirrored:
    packet = (
        HDLC()
        / PPP(proto=PPP_CHAP)
        / PPP_CHAP_ChallengeResponse(code=1, id=1, value=bytes(range(16)), optional_name=b"bras")
    )
    return Mirrored("ppp_chap", packet, "ppp", ppp_protocol=PPP_CHAP)


def ppp_ipcp() -> Mirrored:
    packet = (
        HDLC()
        / PPP(proto=PPP_IPCP_PROTOCOL)
        / PPP_IPCP(code=1, id=1, options=[PPP_IPCP_Option_IPAddress(data=UNASSIGNED)])
    )
    return Mirrored("ppp_ipcp", packet, "ppp", ppp_protocol=PPP_IPCP_PROTOCOL)


def ppp_ipv6cp(interface_id: bytes = bytes.fromhex("0216cbfffe8c5722")) -> Mirrored:
    """IPv6CP Configure-Request with an Interface-Identifier option (RFC 5072); Scapy has
    no IPv6CP layer, so the bytes are laid out here."""
    option = bytes([1, 2 + len(interface_id)]) + interface_id
    body = bytes([1, 1]) + (4 + len(option)).to_bytes(2, "big") + option
    packet = HDLC() / PPP(proto=PPP_IPV6CP) / Raw(body)
    return Mirrored("ppp_ipv6cp", packet, "ppp", ppp_protocol=PPP_IPV6CP)


def every_mirrored_kind() -> list[Mirrored]:
    """One sample of every kind of mirrored packet, fragments included."""
    return [
        ipv4_tcp(),
        ipv4_udp(),
        ipv4_icmp(),
        ipv4_router_alert_udp(),
        ipv4_record_route_icmp(),
        *ipv4_udp_fragments(),
        ipv6_udp(),
        ipv6_tcp_flow_label(),
        ipv6_extension_headers_tcp(),
        *ipv6_udp_fragments(),
        ipv6_icmpv6(),
        ppp_ipv4_udp(),
        ppp_ipv4_compressed_protocol(),
        ppp_ipv6_tcp(),
        ppp_lcp(),
        ppp_pap(),
        ppp_chap(),
        ppp_ipcp(),
        ppp_ipv6cp(),
    ]


def _inner_layer(inner: Mirrored | Packet | bytes) -> Packet:
    if isinstance(inner, Mirrored):
        return inner.packet.copy()
    if isinstance(inner, Packet):
        return inner.copy()
    return Raw(inner)


def jmirror_header(*, mid: int, sid: int) -> JMirror:
    """The jmirror header for a raw 32-bit first word ``mid`` (version and intercept id)."""
    if not 0 <= mid <= 0xFFFFFFFF or not 0 <= sid <= 0xFFFFFFFF:
        raise ValueError(f"mid and sid are 32-bit unsigned, not mid={mid!r} sid={sid!r}")
    return JMirror(version=mid >> 30, intercept_id=mid & 0x3FFFFFFF, sid=sid)


def jmirror_datagram(inner: Mirrored | Packet | bytes, *, mid: int, sid: int) -> bytes:
    """The UDP payload a router sends for one mirrored packet."""
    return bytes(jmirror_header(mid=mid, sid=sid) / _inner_layer(inner))


def jmirror_packet(
    inner: Mirrored | Packet | bytes,
    *,
    router: str = ROUTER,
    mediation: str = MEDIATION,
    port: int = WIRESHARK_DEFAULT_PORT,
    mid: int,
    sid: int,
    sport: int | None = None,
    ip_id: int = 0,
) -> Packet:
    """The router's IPv4/UDP packet around one mirrored packet, as Juniper sends it:
    TTL 255, DF clear, UDP checksum 0, source port equal to the mediation port unless
    ``sport`` says otherwise."""
    return (
        IP(src=router, dst=mediation, ttl=255, flags=0, id=ip_id)
        / UDP(sport=port if sport is None else sport, dport=port, chksum=0)
        / jmirror_header(mid=mid, sid=sid)
        / _inner_layer(inner)
    )


def ethernet_frame(
    packet: Packet,
    *,
    vlans: Sequence[int] = (),
    service_tag_type: int = 0x88A8,
    src: str = ROUTER_MAC,
    dst: str = MEDIATION_MAC,
) -> Packet:
    """``packet`` in an Ethernet frame with the given VLAN tags, outermost first. With
    two or more tags the outermost is an 802.1ad service tag when ``service_tag_type``
    is 0x88a8 (QinQ), or a plain 802.1Q tag when it is 0x8100 (old-style double tag)."""
    if service_tag_type not in (0x8100, 0x88A8):
        raise ValueError(f"service tag type must be 0x8100 or 0x88a8, not {service_tag_type:#x}")
    frame: Packet = Ether(src=src, dst=dst)
    for index, vlan in enumerate(vlans):
        service_tag = index == 0 and len(vlans) > 1 and service_tag_type == 0x88A8
        frame = frame / (Dot1AD(vlan=vlan) if service_tag else Dot1Q(vlan=vlan))
    return frame / packet


def jmirror_frame(
    inner: Mirrored | Packet | bytes,
    *,
    router: str = ROUTER,
    mediation: str = MEDIATION,
    port: int = WIRESHARK_DEFAULT_PORT,
    mid: int,
    sid: int,
    vlans: Sequence[int] = (),
    service_tag_type: int = 0x88A8,
    sport: int | None = None,
    ip_id: int = 0,
) -> Packet:
    """One mirrored packet as it arrives at the mediation host's interface:
    Ether / [VLAN tags, see :func:`ethernet_frame`] / IP / UDP / JMirror / inner."""
    packet = jmirror_packet(
        inner,
        router=router,
        mediation=mediation,
        port=port,
        mid=mid,
        sid=sid,
        sport=sport,
        ip_id=ip_id,
    )
    return ethernet_frame(packet, vlans=vlans, service_tag_type=service_tag_type)


def outer_fragments(frame: Packet, *, mtu: int = 1500) -> list[Packet]:
    """``frame`` as the network delivers it when its IP packet exceeds ``mtu``: IPv4
    fragments, each in a copy of the frame's link layer (a single frame when it fits)."""
    header_length = len(frame[IP]) - len(frame[IP].payload)
    if len(frame[IP]) <= mtu:
        return [frame]
    payload_per_fragment = (mtu - header_length) // 8 * 8
    if payload_per_fragment < 8:
        raise ValueError(f"an MTU of {mtu} leaves no room for a fragment")
    return _fragment(frame, payload_per_fragment)


def _fragment(packet: Packet, size: int) -> list[Packet]:
    fragments: list[Packet] = fragment(packet, fragsize=size)  # type: ignore[no-untyped-call]
    return fragments


def padded(frame: Packet, minimum: int = ETHERNET_MINIMUM) -> Packet:
    """``frame`` with Ethernet padding up to ``minimum`` bytes, as a capture records a
    short frame from the wire."""
    shortfall = minimum - len(frame)
    if shortfall <= 0:
        return frame
    return frame / Padding(b"\x00" * shortfall)


def dns_query(
    client: str = SUBSCRIBER, resolver: str = "198.51.100.53", sport: int = 53124
) -> Packet:
    return IP(src=client, dst=resolver) / UDP(sport=sport, dport=53) / _dns_question()


def dns_response(
    client: str = SUBSCRIBER, resolver: str = "198.51.100.53", dport: int = 53124
) -> Packet:
    return (
        IP(src=resolver, dst=client)
        / UDP(sport=53, dport=dport)
        / DNS(
            id=0x4A4A,
            qr=1,
            rd=1,
            ra=1,
            qd=DNSQR(qname="www.example.com", qtype="A"),
            an=DNSRR(rrname="www.example.com", type="A", ttl=300, rdata="93.184.216.34"),
        )
    )


def ntp_request(client: str = MEDIATION, server: str = "198.51.100.123") -> Packet:
    return IP(src=client, dst=server) / UDP(sport=123, dport=123) / _ntp_client_request()


def syslog_message(sender: str = ROUTER, collector: str = MEDIATION) -> Packet:
    message = b"<134>1 2026-11-22T03:40:00Z mx1 jmirror - - - subscriber login"
    return IP(src=sender, dst=collector) / UDP(sport=514, dport=514) / Raw(message)


def random_udp(
    rng: random.Random,
    *,
    avoid_ports: Iterable[int] = (),
    source: str = "198.51.100.200",
    destination: str = MEDIATION,
) -> Packet:
    """A UDP datagram of random bytes between random high ports (never one of
    ``avoid_ports``, so a decoder told those ports does not see it)."""
    avoid = set(avoid_ports)
    ports = [port for port in (rng.randrange(1024, 65536) for _ in range(8)) if port not in avoid]
    payload = rng.randbytes(rng.randrange(1, 200))
    return IP(src=source, dst=destination) / UDP(sport=ports[0], dport=ports[1]) / Raw(payload)


@dataclass(frozen=True)
class ExpectedDecode:
    """What ``manage.py decode`` must print for one jmirror datagram in a capture."""

    name: str
    frame: int
    time: float
    router: str
    port: int
    mid: int
    intercept_id: int
    version: int
    sid: int
    inner: InnerKind
    ppp_protocol: int | None
    src: str | None
    dst: str | None
    proto: int | None
    sport: int | None
    dport: int | None
    length: int

    def as_record(self) -> dict[str, object]:
        """The record in the decode command's JSON form (without the sample name)."""
        record = asdict(self)
        del record["name"]
        return record


@dataclass
class _Datagram:
    mirrored: Mirrored
    router: str
    port: int
    mid: int
    sid: int
    frames_left: set[int]


@dataclass
class PcapBuilder:
    """Lays out a capture frame by frame and records the expected decodes.

    A jmirror datagram's expected decode lands on the frame that completes it: its last
    fragment appended, whatever order the fragments are appended in. Frames are
    stamped ``start + n * step`` seconds and padded to the Ethernet minimum.
    ``noise_frames`` numbers the frames added with :meth:`add_noise`.
    """

    start: float = 1_795_000_000.0
    step: float = 0.001
    frames: list[Packet] = field(default_factory=list)
    expected: list[ExpectedDecode] = field(default_factory=list)
    noise_frames: list[int] = field(default_factory=list)
    _pending: dict[int, _Datagram] = field(default_factory=dict)
    _next_ip_id: int = 0x100

    def jmirror(
        self,
        inner: Mirrored,
        *,
        router: str = ROUTER,
        mediation: str = MEDIATION,
        port: int = WIRESHARK_DEFAULT_PORT,
        mid: int,
        sid: int,
        vlans: Sequence[int] = (),
        service_tag_type: int = 0x88A8,
        mtu: int | None = None,
    ) -> list[Packet]:
        """The frames of one jmirror datagram (fragments when ``mtu`` is exceeded),
        registered but not yet appended: pass them to :meth:`append` in any order."""
        frame = jmirror_frame(
            inner,
            router=router,
            mediation=mediation,
            port=port,
            mid=mid,
            sid=sid,
            vlans=vlans,
            service_tag_type=service_tag_type,
            ip_id=self._take_ip_id(),
        )
        frames = outer_fragments(frame, mtu=mtu) if mtu is not None else [frame]
        datagram = _Datagram(inner, router, port, mid, sid, {id(each) for each in frames})
        for each in frames:
            self._pending[id(each)] = datagram
        return frames

    def add_jmirror(
        self,
        inner: Mirrored,
        *,
        router: str = ROUTER,
        mediation: str = MEDIATION,
        port: int = WIRESHARK_DEFAULT_PORT,
        mid: int,
        sid: int,
        vlans: Sequence[int] = (),
        service_tag_type: int = 0x88A8,
        mtu: int | None = None,
    ) -> None:
        """Append one jmirror datagram's frames in order."""
        self.append(
            *self.jmirror(
                inner,
                router=router,
                mediation=mediation,
                port=port,
                mid=mid,
                sid=sid,
                vlans=vlans,
                service_tag_type=service_tag_type,
                mtu=mtu,
            )
        )

    def add_noise(self, packet: Packet, *, vlans: Sequence[int] = ()) -> None:
        """Append a non-jmirror IP packet in an Ethernet frame."""
        self.noise_frames.append(len(self.frames) + 1)
        self.append(ethernet_frame(packet, vlans=vlans))

    def append(self, *frames: Packet) -> None:
        for frame in frames:
            number = len(self.frames) + 1
            time = self.start + (number - 1) * self.step
            stamped = padded(frame)
            stamped.time = time
            self.frames.append(stamped)
            datagram = self._pending.pop(id(frame), None)
            if datagram is None:
                continue
            datagram.frames_left.discard(id(frame))
            if not datagram.frames_left:
                self.expected.append(_expected(datagram, number, time))

    def write(self, path: Path, *, snaplen: int = 65535) -> None:
        """Write the frames as a pcap (microsecond timestamps, Ethernet link type), with
        ``snaplen`` in its file header (routers' captures are not all made with the
        default)."""
        if self._pending:
            raise ValueError(f"{len(self._pending)} registered frames were never appended")
        wrpcap(str(path), self.frames, snaplen=snaplen)

    def _take_ip_id(self) -> int:
        # Distinct outer IP ids so that no two fragmented datagrams can be confused.
        self._next_ip_id = (self._next_ip_id + 1) & 0xFFFF
        return self._next_ip_id


def _expected(datagram: _Datagram, frame: int, time: float) -> ExpectedDecode:
    mirrored = datagram.mirrored
    return ExpectedDecode(
        name=mirrored.name,
        frame=frame,
        time=time,
        router=datagram.router,
        port=datagram.port,
        mid=datagram.mid,
        intercept_id=datagram.mid & 0x3FFFFFFF,
        version=datagram.mid >> 30,
        sid=datagram.sid,
        inner=mirrored.inner,
        ppp_protocol=mirrored.ppp_protocol,
        src=mirrored.src,
        dst=mirrored.dst,
        proto=mirrored.proto,
        sport=mirrored.sport,
        dport=mirrored.dport,
        length=mirrored.length,
    )
