"""Build jmirror and Contrail test traffic with Scapy: for tests, the benchmark and
``manage.py simulate``.

The pieces, from the inside out:

* :class:`Mirrored` samples, one per kind of packet a router mirrors (IPv4 with and
  without options, inner fragments, IPv6 with flow labels and extension headers, PPP in
  HDLC-like framing with IP and control protocols), each with what a decoder must report
  for it. :func:`every_mirrored_kind` lists them all.
* :func:`jmirror_datagram`, :func:`jmirror_packet` and :func:`jmirror_frame` wrap one in
  the jmirror header, the router's IPv4/UDP and Ethernet (with 802.1Q/QinQ tags), and
  :func:`outer_fragments` cuts a frame the way the network does above the path MTU.
* For CN2 / Contrail: :func:`inner_frame` puts an IP sample in a workload's Ethernet
  frame (VLAN-tagged if asked; :func:`arp_request` is one without IP), and
  :func:`contrail_datagram`, :func:`contrail_packet` and :func:`contrail_frame` wrap it
  in the vRouter's Juniper header (TLVs, ``FF 00``) and its IPv4 or IPv6 / UDP.
  :func:`every_contrail_variant` lists every shape a vRouter sends.
* :class:`PcapBuilder` lays frames and UDP noise (:func:`dns_query` and friends) out in
  a capture and records, for every jmirror or Contrail datagram, the decode expected on
  the frame that completes it (:class:`ExpectedDecode`, in the decode command's terms).

Nothing here is on the receive path, so it favours clarity over speed.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable, Sequence
from dataclasses import KW_ONLY, dataclass, field, replace
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
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
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

from receiver.contrail import ANALYZER_DEFAULT_PORT, INGRESS_FLAG, action_names
from receiver.jmirror import WIRESHARK_DEFAULT_PORT
from receiver.offline import CONTRAIL_KEYS, JSON_KEYS
from receiver.scapy_contrail import (
    TLV_END,
    VN_NAME_MAXIMUM,
    JuniperVN,
    JuniperVNCaptureHost,
    JuniperVNDestVN,
    JuniperVNFlags,
    JuniperVNSourceVN,
    JuniperVNTlv,
)
from receiver.scapy_jmirror import JMirror

InnerKind = Literal["ipv4", "ipv6", "ppp"]
RecordFormat = Literal["jmirror", "contrail"]
Direction = Literal["ingress", "egress"]

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

VROUTER: Final = "192.0.2.21"
"""A CN2 vRouter: the outer source of its mirrored datagrams and, as its router id,
the capture host it names in TLV 1."""
OTHER_VROUTER: Final = "192.0.2.22"
VROUTER6: Final = "2001:db8:21::21"
ANALYZER6: Final = "2001:db8:10::10"
"""The analyzer (the mediation host) when the vRouter mirrors over IPv6."""
VROUTER_MIRROR_SPORT: Final = 50100
"""The vRouter's source port: the agent's own mirror port, an ephemeral one."""
VROUTER_TTL: Final = 64

WORKLOAD_MAC: Final = "02:00:00:00:02:07"
"""A pod's (or VM's) interface; the far side is the vRouter's gateway MAC."""
VROUTER_GATEWAY_MAC: Final = "00:00:5e:00:01:00"

SOURCE_VN: Final = "default-domain:k8s-default:web-vn"
DEST_VN: Final = "default-domain:k8s-default:db-vn"
"""Virtual network names as CN2 writes them: domain:project:network."""

ACTION_PASS: Final = 1 << 5
ACTION_MIRROR: Final = 1 << 7
PASS_MIRROR: Final = ACTION_PASS | ACTION_MIRROR
"""The flags of a flow a policy passes and mirrors (0xa0), ingress bit not set."""

ETHERTYPE_IPV4: Final = 0x0800
ETHERTYPE_ARP: Final = 0x0806
ETHERTYPE_IPV6: Final = 0x86DD

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
    fragments, each in a copy of the frame's link layer (a single frame when it fits).
    Only an outer IPv4 packet is cut (the first IP layer: a Contrail frame carries more
    IP inside)."""
    outer = next((layer for layer in frame.iterpayloads() if isinstance(layer, IP | IPv6)), None)
    if not isinstance(outer, IP):
        raise ValueError("outer fragments are built for an outer IPv4 packet only")
    header_length = len(outer) - len(outer.payload)
    if len(outer) <= mtu:
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


@dataclass(frozen=True)
class InnerFrame:
    """An Ethernet frame as a vRouter mirrors it, and what a decoder must report for it
    (the IP fields as for :class:`Mirrored`; ``ethertype`` after the VLAN tags)."""

    name: str
    frame: Packet
    _: KW_ONLY
    vlans: tuple[int, ...] = ()
    ethertype: int
    src: str | None = None
    dst: str | None = None
    proto: int | None = None
    sport: int | None = None
    dport: int | None = None

    def __bytes__(self) -> bytes:
        return bytes(self.frame)

    @property
    def length(self) -> int:
        """The frame's length: a vRouter mirrors it unpadded and without its FCS."""
        return len(bytes(self.frame))


def inner_frame(
    mirrored: Mirrored,
    *,
    vlans: Sequence[int] = (),
    service_tag_type: int = 0x88A8,
    src: str = WORKLOAD_MAC,
    dst: str = VROUTER_GATEWAY_MAC,
) -> InnerFrame:
    """An IPv4 or IPv6 :class:`Mirrored` packet in a workload's Ethernet frame, with
    VLAN tags as :func:`ethernet_frame` lays them out."""
    if mirrored.inner == "ppp":
        raise ValueError(f"{mirrored.name}: a vRouter mirrors Ethernet frames, not PPP")
    for vlan in vlans:
        if not 0 <= vlan <= 0xFFF:
            raise ValueError(f"a VLAN id is 12 bits (0 to 4095), not {vlan!r}")
    return InnerFrame(
        mirrored.name if not vlans else f"{mirrored.name}_vlan_{'_'.join(map(str, vlans))}",
        ethernet_frame(
            mirrored.packet.copy(),
            vlans=vlans,
            service_tag_type=service_tag_type,
            src=src,
            dst=dst,
        ),
        vlans=tuple(vlans),
        ethertype=ETHERTYPE_IPV4 if mirrored.inner == "ipv4" else ETHERTYPE_IPV6,
        src=mirrored.src,
        dst=mirrored.dst,
        proto=mirrored.proto,
        sport=mirrored.sport,
        dport=mirrored.dport,
    )


def arp_request(
    sender: str = SUBSCRIBER, target: str = SERVER, *, vlans: Sequence[int] = ()
) -> InnerFrame:
    """A workload's broadcast ARP request (42 bytes, no IP: a decoder reports no
    addresses)."""
    packet = ARP(op=1, hwsrc=WORKLOAD_MAC, psrc=sender, hwdst="00:00:00:00:00:00", pdst=target)
    frame = ethernet_frame(packet, vlans=vlans, src=WORKLOAD_MAC, dst="ff:ff:ff:ff:ff:ff")
    return InnerFrame("arp_request", frame, vlans=tuple(vlans), ethertype=ETHERTYPE_ARP)


def every_inner_frame() -> list[InnerFrame]:
    """Every IPv4 and IPv6 :class:`Mirrored` kind in an untagged frame, and ARP."""
    return [
        *(inner_frame(each) for each in every_mirrored_kind() if each.inner != "ppp"),
        arp_request(),
    ]


def _vn_name(name: str | bytes, tlv: str) -> bytes:
    try:
        raw = name.encode("ascii") if isinstance(name, str) else bytes(name)
    except UnicodeEncodeError:
        raise ValueError(f"{tlv} VN name {name!r} is not ASCII") from None
    if not 0 < len(raw) <= VN_NAME_MAXIMUM:
        raise ValueError(f"{tlv} VN name has 1 to {VN_NAME_MAXIMUM} bytes, not {len(raw)}")
    if b"\x00" in raw:
        raise ValueError(f"{tlv} VN name {name!r} has a NUL byte")
    return raw


def juniper_vn_header(
    *,
    capture_host: str | None = None,
    flags: int | None = None,
    source_vn: str | bytes | None = None,
    dest_vn: str | bytes | None = None,
    extra_tlvs: Sequence[tuple[int, bytes]] = (),
) -> JuniperVN:
    """The Juniper header as a vRouter orders its TLVs (1, 2, 3, 4, those given), then
    ``extra_tlvs`` (type, raw value), then ``FF 00``: the Scapy layer, as
    :func:`jmirror_header` (the decoder's module builds the same bytes without Scapy)."""
    tlvs: list[Packet] = []
    if capture_host is not None:
        try:
            address = ipaddress.IPv4Address(capture_host)
        except ValueError:
            raise ValueError(
                f"the capture host is the vRouter's IPv4 router id, not {capture_host!r}"
            ) from None
        tlvs.append(JuniperVNCaptureHost(address=str(address)))
    if flags is not None:
        if not 0 <= flags <= 0xFFFFFFFF:
            raise ValueError(f"flags are 32-bit unsigned, not {flags!r}")
        tlvs.append(JuniperVNFlags(flags=flags))
    if source_vn is not None:
        tlvs.append(JuniperVNSourceVN(vn=_vn_name(source_vn, "source")))
    if dest_vn is not None:
        tlvs.append(JuniperVNDestVN(vn=_vn_name(dest_vn, "destination")))
    for tlv_type, value in extra_tlvs:
        if not 0 <= tlv_type < TLV_END or len(value) > VN_NAME_MAXIMUM:
            raise ValueError(
                f"a TLV has a type from 0 to 254 and at most 255 bytes, "
                f"not type {tlv_type!r} with {len(value)} bytes"
            )
        tlvs.append(JuniperVNTlv(type=tlv_type, value=bytes(value)))
    return JuniperVN(tlvs=tlvs)


def _frame_layer(frame: InnerFrame | Packet | bytes) -> Packet:
    if isinstance(frame, InnerFrame):
        return frame.frame.copy()
    if isinstance(frame, Packet):
        return frame.copy()
    return Raw(frame)


def contrail_datagram(
    frame: InnerFrame | Packet | bytes,
    *,
    capture_host: str | None = None,
    flags: int | None = None,
    source_vn: str | bytes | None = None,
    dest_vn: str | bytes | None = None,
    extra_tlvs: Sequence[tuple[int, bytes]] = (),
) -> bytes:
    """The UDP payload a vRouter sends for one mirrored Ethernet frame."""
    header = juniper_vn_header(
        capture_host=capture_host,
        flags=flags,
        source_vn=source_vn,
        dest_vn=dest_vn,
        extra_tlvs=extra_tlvs,
    )
    return bytes(header) + bytes(_frame_layer(frame))


def contrail_packet(
    frame: InnerFrame | Packet | bytes,
    *,
    vrouter: str = VROUTER,
    analyzer: str | None = None,
    port: int = ANALYZER_DEFAULT_PORT,
    sport: int = VROUTER_MIRROR_SPORT,
    ip_id: int = 0,
    capture_host: str | None = None,
    flags: int | None = None,
    source_vn: str | bytes | None = None,
    dest_vn: str | bytes | None = None,
    extra_tlvs: Sequence[tuple[int, bytes]] = (),
) -> Packet:
    """The vRouter's IPv4 or IPv6 (by ``vrouter``'s family) UDP packet around one
    mirrored frame, as the vRouter builds it: TTL 64, DF clear, UDP checksum 0 over
    IPv6 too. ``analyzer`` defaults to :data:`MEDIATION` or :data:`ANALYZER6`."""
    source = ipaddress.ip_address(vrouter)
    destination = ipaddress.ip_address(
        analyzer if analyzer is not None else (MEDIATION if source.version == 4 else ANALYZER6)
    )
    if source.version != destination.version:
        raise ValueError(f"vrouter {vrouter} and analyzer {analyzer} are of different families")
    network: Packet = (
        IP(src=vrouter, dst=str(destination), ttl=VROUTER_TTL, flags=0, id=ip_id)
        if source.version == 4
        else IPv6(src=vrouter, dst=str(destination), hlim=VROUTER_TTL)
    )
    header = juniper_vn_header(
        capture_host=capture_host,
        flags=flags,
        source_vn=source_vn,
        dest_vn=dest_vn,
        extra_tlvs=extra_tlvs,
    )
    packet: Packet = network / UDP(sport=sport, dport=port, chksum=0) / header / _frame_layer(frame)
    return packet


def contrail_frame(
    frame: InnerFrame | Packet | bytes,
    *,
    vrouter: str = VROUTER,
    analyzer: str | None = None,
    port: int = ANALYZER_DEFAULT_PORT,
    sport: int = VROUTER_MIRROR_SPORT,
    ip_id: int = 0,
    capture_host: str | None = None,
    flags: int | None = None,
    source_vn: str | bytes | None = None,
    dest_vn: str | bytes | None = None,
    extra_tlvs: Sequence[tuple[int, bytes]] = (),
    vlans: Sequence[int] = (),
) -> Packet:
    """One mirrored frame as it arrives at the analyzer's interface:
    Ether / [VLAN tags] / IP or IPv6 / UDP / JuniperVN / the mirrored Ether frame."""
    packet = contrail_packet(
        frame,
        vrouter=vrouter,
        analyzer=analyzer,
        port=port,
        sport=sport,
        ip_id=ip_id,
        capture_host=capture_host,
        flags=flags,
        source_vn=source_vn,
        dest_vn=dest_vn,
        extra_tlvs=extra_tlvs,
    )
    return ethernet_frame(packet, vlans=vlans, src=ROUTER_MAC, dst=MEDIATION_MAC)


@dataclass(frozen=True)
class ContrailVariant:
    """One kind of Contrail datagram for the conformance tests: the mirrored frame and
    the Juniper header (and outer packet) around it."""

    name: str
    frame: InnerFrame
    _: KW_ONLY
    capture_host: str | None = None
    flags: int | None = None
    source_vn: str | None = None
    dest_vn: str | None = None
    extra_tlvs: tuple[tuple[int, bytes], ...] = ()
    vrouter: str = VROUTER
    mtu: int | None = None

    def add_to(self, builder: PcapBuilder, *, port: int = ANALYZER_DEFAULT_PORT) -> None:
        builder.add_contrail(
            self.frame,
            name=self.name,
            vrouter=self.vrouter,
            port=port,
            capture_host=self.capture_host,
            flags=self.flags,
            source_vn=self.source_vn,
            dest_vn=self.dest_vn,
            extra_tlvs=self.extra_tlvs,
            mtu=self.mtu,
        )

    def datagram(self) -> bytes:
        return contrail_datagram(
            self.frame,
            capture_host=self.capture_host,
            flags=self.flags,
            source_vn=self.source_vn,
            dest_vn=self.dest_vn,
            extra_tlvs=self.extra_tlvs,
        )


def flow_mirroring(
    name: str,
    frame: InnerFrame,
    *,
    ingress: bool = True,
    flags: int = PASS_MIRROR,
    vrouter: str = VROUTER,
    mtu: int | None = None,
) -> ContrailVariant:
    """A frame of a flow a policy mirrors: TLVs 1 to 4."""
    return ContrailVariant(
        name,
        frame,
        capture_host=vrouter if ipaddress.ip_address(vrouter).version == 4 else VROUTER,
        flags=flags | (INGRESS_FLAG if ingress else 0),
        source_vn=SOURCE_VN,
        dest_vn=DEST_VN,
        vrouter=vrouter,
        mtu=mtu,
    )


def every_contrail_variant() -> list[ContrailVariant]:
    """One sample of every Contrail shape: flow mirroring (ingress, egress, every
    action), interface mirroring (only TLV 3, only TLV 4), no metadata, 255-byte VN
    names, unknown TLV types, a second vRouter and a capture host that is not the
    sender, IPv6 outer, VLAN-tagged inner frames (one tag, QinQ,
    double 802.1Q), every IPv4/IPv6 inner kind and ARP, and a frame too large for one
    outer IPv4 packet (fragmented at a 1500-byte MTU)."""
    every_action = sum(1 << bit for bit in (1, 2, 3, 4, 5, 6, 7, 8, 28, 29))
    variants = [
        flow_mirroring("flow_ingress_ipv4_tcp", inner_frame(ipv4_tcp())),
        flow_mirroring("flow_egress_ipv4_udp", inner_frame(ipv4_udp()), ingress=False),
        flow_mirroring("flow_every_action", inner_frame(ipv4_icmp()), flags=every_action),
        ContrailVariant(
            "interface_received_ipv6_udp", inner_frame(ipv6_udp()), source_vn=SOURCE_VN
        ),
        ContrailVariant(
            "interface_sent_ipv6_tcp", inner_frame(ipv6_tcp_flow_label()), dest_vn=DEST_VN
        ),
        ContrailVariant("no_metadata_ipv4_tcp", inner_frame(ipv4_tcp())),
        ContrailVariant("no_metadata_arp", arp_request()),
        ContrailVariant(
            "long_vn_names",
            inner_frame(ipv6_icmpv6()),
            capture_host=VROUTER,
            flags=PASS_MIRROR | INGRESS_FLAG,
            source_vn="s" * VN_NAME_MAXIMUM,
            dest_vn="d" * VN_NAME_MAXIMUM,
        ),
        ContrailVariant(
            "unknown_tlvs",
            inner_frame(ipv4_udp()),
            capture_host=VROUTER,
            flags=PASS_MIRROR,
            source_vn=SOURCE_VN,
            dest_vn=DEST_VN,
            extra_tlvs=((5, b"\x00\x01"), (200, b"opaque"), (7, b"")),
        ),
        flow_mirroring("other_vrouter", inner_frame(ipv4_tcp()), vrouter=OTHER_VROUTER),
        ContrailVariant(
            "capture_host_not_the_sender",
            inner_frame(ipv4_udp()),
            capture_host=OTHER_VROUTER,
            flags=PASS_MIRROR,
            source_vn=SOURCE_VN,
            dest_vn=DEST_VN,
        ),
        flow_mirroring("ipv6_outer_flow", inner_frame(ipv4_tcp()), vrouter=VROUTER6),
        ContrailVariant(
            "ipv6_outer_interface", inner_frame(ipv6_udp()), source_vn=SOURCE_VN, vrouter=VROUTER6
        ),
        flow_mirroring("vlan_one_tag", inner_frame(ipv4_udp(), vlans=[100])),
        flow_mirroring("vlan_qinq", inner_frame(ipv6_udp(), vlans=[100, 200])),
        flow_mirroring(
            "vlan_double_8021q",
            inner_frame(ipv4_icmp(), vlans=[300, 400], service_tag_type=0x8100),
        ),
        ContrailVariant("vlan_arp", arp_request(vlans=[100]), dest_vn=DEST_VN),
        flow_mirroring("outer_fragments", inner_frame(full_size_ipv4_tcp()), mtu=1500),
    ]
    variants += [flow_mirroring(f"inner_{each.name}", each) for each in every_inner_frame()]
    return variants


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


# The keys of the decode command's records, in order: the command's contract.
JMIRROR_RECORD_KEYS: Final = JSON_KEYS
CONTRAIL_RECORD_KEYS: Final = CONTRAIL_KEYS


@dataclass(frozen=True)
class ExpectedDecode:
    """What ``manage.py decode`` must print for one jmirror or Contrail datagram in a
    capture. ``router`` is the outer source; ``length`` the mirrored packet's (for
    Contrail, the Ethernet frame's). The fields of the other format stay None; ``vlans``,
    ``ethertype`` and ``unknown_tlvs`` are for tests and not in the record."""

    name: str
    frame: int
    time: float
    router: str
    port: int
    _: KW_ONLY
    format: RecordFormat = "jmirror"
    mid: int | None = None
    intercept_id: int | None = None
    version: int | None = None
    sid: int | None = None
    inner: InnerKind | None = None
    ppp_protocol: int | None = None
    capture_host: str | None = None
    flags: int | None = None
    actions: tuple[str, ...] = ()
    direction: Direction | None = None
    source_vn: str | None = None
    dest_vn: str | None = None
    src: str | None = None
    dst: str | None = None
    proto: int | None = None
    sport: int | None = None
    dport: int | None = None
    length: int
    vlans: tuple[int, ...] = ()
    ethertype: int | None = None
    unknown_tlvs: tuple[tuple[int, bytes], ...] = ()

    def as_record(self) -> dict[str, object]:
        """The record in the decode command's JSON form (without the sample name)."""
        keys = JMIRROR_RECORD_KEYS if self.format == "jmirror" else CONTRAIL_RECORD_KEYS
        record: dict[str, object] = {key: getattr(self, key) for key in keys}
        if self.format == "contrail":
            record["actions"] = list(self.actions)
        return record


@dataclass
class _Datagram:
    """A datagram registered with the builder: its decode (frame number and time still
    to fill) and the frames that must all be appended to complete it."""

    expected: ExpectedDecode
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
        return self._register(frame, _jmirror_expected(inner, router, port, mid, sid), mtu)

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

    def contrail(
        self,
        frame: InnerFrame,
        *,
        name: str | None = None,
        vrouter: str = VROUTER,
        analyzer: str | None = None,
        port: int = ANALYZER_DEFAULT_PORT,
        capture_host: str | None = None,
        flags: int | None = None,
        source_vn: str | None = None,
        dest_vn: str | None = None,
        extra_tlvs: Sequence[tuple[int, bytes]] = (),
        mtu: int | None = None,
    ) -> list[Packet]:
        """The frames of one Contrail datagram (IPv4 fragments when ``mtu`` is
        exceeded), registered but not yet appended, as :meth:`jmirror`."""
        built = contrail_frame(
            frame,
            vrouter=vrouter,
            analyzer=analyzer,
            port=port,
            ip_id=self._take_ip_id(),
            capture_host=capture_host,
            flags=flags,
            source_vn=source_vn,
            dest_vn=dest_vn,
            extra_tlvs=extra_tlvs,
        )
        expected = ExpectedDecode(
            name=name or frame.name,
            frame=0,
            time=0.0,
            router=vrouter,
            port=port,
            format="contrail",
            capture_host=capture_host,
            flags=flags,
            actions=() if flags is None else action_names(flags),
            direction=None if flags is None else "ingress" if flags & INGRESS_FLAG else "egress",
            source_vn=source_vn,
            dest_vn=dest_vn,
            src=frame.src,
            dst=frame.dst,
            proto=frame.proto,
            sport=frame.sport,
            dport=frame.dport,
            length=frame.length,
            vlans=frame.vlans,
            ethertype=frame.ethertype,
            unknown_tlvs=tuple((tlv_type, bytes(value)) for tlv_type, value in extra_tlvs),
        )
        return self._register(built, expected, mtu)

    def add_contrail(
        self,
        frame: InnerFrame,
        *,
        name: str | None = None,
        vrouter: str = VROUTER,
        analyzer: str | None = None,
        port: int = ANALYZER_DEFAULT_PORT,
        capture_host: str | None = None,
        flags: int | None = None,
        source_vn: str | None = None,
        dest_vn: str | None = None,
        extra_tlvs: Sequence[tuple[int, bytes]] = (),
        mtu: int | None = None,
    ) -> None:
        """Append one Contrail datagram's frames in order."""
        self.append(
            *self.contrail(
                frame,
                name=name,
                vrouter=vrouter,
                analyzer=analyzer,
                port=port,
                capture_host=capture_host,
                flags=flags,
                source_vn=source_vn,
                dest_vn=dest_vn,
                extra_tlvs=extra_tlvs,
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
                self.expected.append(replace(datagram.expected, frame=number, time=time))

    def write(self, path: Path, *, snaplen: int = 65535) -> None:
        """Write the frames as a pcap (microsecond timestamps, Ethernet link type), with
        ``snaplen`` in its file header (routers' captures are not all made with the
        default)."""
        if self._pending:
            raise ValueError(f"{len(self._pending)} registered frames were never appended")
        wrpcap(str(path), self.frames, snaplen=snaplen)

    def _register(self, frame: Packet, expected: ExpectedDecode, mtu: int | None) -> list[Packet]:
        frames = outer_fragments(frame, mtu=mtu) if mtu is not None else [frame]
        datagram = _Datagram(expected, {id(each) for each in frames})
        for each in frames:
            self._pending[id(each)] = datagram
        return frames

    def _take_ip_id(self) -> int:
        # Distinct outer IP ids so that no two fragmented datagrams can be confused.
        self._next_ip_id = (self._next_ip_id + 1) & 0xFFFF
        return self._next_ip_id


def _jmirror_expected(
    mirrored: Mirrored, router: str, port: int, mid: int, sid: int
) -> ExpectedDecode:
    """A jmirror datagram's decode, its frame number and time still to fill."""
    return ExpectedDecode(
        name=mirrored.name,
        frame=0,
        time=0.0,
        router=router,
        port=port,
        mid=mid,
        intercept_id=mid & 0x3FFFFFFF,
        version=mid >> 30,
        sid=sid,
        inner=mirrored.inner,
        ppp_protocol=mirrored.ppp_protocol,
        src=mirrored.src,
        dst=mirrored.dst,
        proto=mirrored.proto,
        sport=mirrored.sport,
        dport=mirrored.dport,
        length=mirrored.length,
    )
