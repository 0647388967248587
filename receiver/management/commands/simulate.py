"""``manage.py simulate --to HOST:PORT``: send realistic mirrored traffic, for demos and tests.

jmirror (the default): each simulated subscriber logs in over PPP (LCP, PAP, IPCP,
IPv6CP) and then browses: DNS, a TCP web exchange and pings, over IPv4 and IPv6, inside
PPP as an LNS mirrors an L2TP subscriber (``--framing ppp``); or browses as bare IP as an
MX mirrors an IP subscriber (``--framing ip``). Each packet is sent once; ``--framing
mixed`` sends both framings of each, alternately, to test sessions of mixed link types.

Contrail (``--format contrail``): a CN2 vRouter mirrors one workload's Ethernet frames
(ARP, then the same browsing) with the Juniper header: flow mirroring (capture host,
flags, both VNs) or interface mirroring (only the workload's VN: TLV 3 on frames it
sends, which the vRouter receives, TLV 4 on frames sent to it), optionally VLAN-tagged.
IPv4 or IPv6 outer is the family of ``--to``.

Only the UDP payloads are built; the kernel adds the outer IP and UDP headers.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from django.core.management.base import BaseCommand, CommandError, CommandParser
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.layers.ppp import (
    HDLC,
    PPP,
    PPP_IPCP,
    PPP_IPCP_Option_DNS1,
    PPP_IPCP_Option_IPAddress,
    PPP_LCP_Auth_Protocol_Option,
    PPP_LCP_Configure,
    PPP_LCP_Magic_Number_Option,
    PPP_LCP_MRU_Option,
    PPP_PAP_Request,
    PPP_PAP_Response,
)
from scapy.packet import Packet, Raw
from scapy.utils import wrpcap

from receiver.contrail import ANALYZER_DEFAULT_PORT, INGRESS_FLAG
from receiver.jmirror import INTERCEPT_ID_MASK, WIRESHARK_DEFAULT_PORT
from receiver.scapy_contrail import VN_NAME_MAXIMUM
from receiver.traffic import (
    DEST_VN,
    PASS_MIRROR,
    PPP_IPCP_PROTOCOL,
    PPP_LCP,
    PPP_PAP,
    SERVER,
    SERVER6,
    SOURCE_VN,
    SUBSCRIBER,
    SUBSCRIBER6,
    VROUTER_GATEWAY_MAC,
    WORKLOAD_MAC,
    contrail_datagram,
    ethernet_frame,
    jmirror_datagram,
    ppp_ipv6cp,
)

DEFAULT_COUNT: Final = 1000
DEFAULT_MIDS: Final = (0x300,)
DEFAULT_SID: Final = 0x90
RESOLVER: Final = "198.51.100.53"
RESOLVER6: Final = "2001:db8:53::53"
_PPP_IPV4: Final = 0x0021
_PPP_IPV6: Final = 0x0057
LOOPBACK: Final = "127.0.0.1"
SENDER_PORT: Final = 49999  # the source port of a written capture's datagrams
MAX_VLAN_TAGS: Final = 2
"""An inner frame has at most a service and a customer tag (QinQ)."""
Mirroring = Literal["flow", "interface"]
_HTTP_REQUEST: Final = b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n"
_HTTP_RESPONSE: Final = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
TLS_SERVER_NAME: Final = "www.example.org"


def tls_client_hello(server_name: str) -> bytes:
    """A TLS 1.2-style ClientHello record naming ``server_name`` (SNI), as a browser's
    first bytes on port 443: what an analyst sees of an encrypted site's name."""
    name = server_name.encode("ascii")
    sni = (len(name) + 3).to_bytes(2, "big") + b"\x00" + len(name).to_bytes(2, "big") + name
    extension = b"\x00\x00" + len(sni).to_bytes(2, "big") + sni
    body = (
        b"\x03\x03"  # client version
        + bytes(range(32))  # random
        + b"\x00"  # no session id
        + b"\x00\x02\x13\x01"  # one cipher suite
        + b"\x01\x00"  # no compression
        + len(extension).to_bytes(2, "big")
        + extension
    )
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(handshake).to_bytes(2, "big") + handshake


def _tls_server_hello() -> bytes:
    """The server's ServerHello record (the cipher suite offered, no extensions)."""
    body = b"\x03\x03" + bytes(range(32, 64)) + b"\x00" + b"\x13\x01" + b"\x00" + b"\x00\x00"
    handshake = b"\x02" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x03" + len(handshake).to_bytes(2, "big") + handshake


TLS_SERVER_HELLO: Final = _tls_server_hello()


def _ppp(protocol: int, payload: Packet) -> Packet:
    packet: Packet = HDLC() / PPP(proto=protocol) / payload
    return packet


def ppp_login() -> list[Packet]:
    """A PPP subscriber's login as the BRAS mirrors it: LCP negotiation with PAP as the
    authentication protocol, PAP, then IPCP and IPv6CP."""
    lcp_options = [
        PPP_LCP_MRU_Option(max_recv_unit=1492),
        PPP_LCP_Auth_Protocol_Option(auth_protocol=PPP_PAP),
        PPP_LCP_Magic_Number_Option(magic_number=0x6DAB9FF6),
    ]
    ipcp_request = [
        PPP_IPCP_Option_IPAddress(data=SUBSCRIBER),
        PPP_IPCP_Option_DNS1(data=RESOLVER),
    ]
    return [
        _ppp(PPP_LCP, PPP_LCP_Configure(code=1, id=1, options=lcp_options)),
        _ppp(PPP_LCP, PPP_LCP_Configure(code=2, id=1, options=lcp_options)),
        _ppp(PPP_PAP, PPP_PAP_Request(id=1, username=b"subscriber@isp.example", password=b"pw")),
        _ppp(PPP_PAP, PPP_PAP_Response(code=2, id=1, message=b"Login ok")),
        _ppp(PPP_IPCP_PROTOCOL, PPP_IPCP(code=1, id=1, options=ipcp_request)),
        _ppp(PPP_IPCP_PROTOCOL, PPP_IPCP(code=2, id=1, options=ipcp_request)),
        ppp_ipv6cp().packet,
    ]


def _dns(client: IP | IPv6, resolver: IP | IPv6, sport: int) -> list[Packet]:
    question = DNSQR(qname="www.example.com", qtype="A")
    answer = DNSRR(rrname="www.example.com", type="A", ttl=300, rdata="93.184.216.34")
    return [
        client / UDP(sport=sport, dport=53) / DNS(id=sport, rd=1, qd=question),
        resolver
        / UDP(sport=53, dport=sport)
        / DNS(id=sport, qr=1, rd=1, ra=1, qd=question, an=answer),
    ]


def _web(
    client: IP | IPv6,
    server: IP | IPv6,
    sport: int,
    dport: int = 80,
    request: bytes = _HTTP_REQUEST,
    response: bytes = _HTTP_RESPONSE,
) -> list[Packet]:
    """A whole short TCP exchange (HTTP unless told): handshake, request, response, close."""
    up = client / TCP(sport=sport, dport=dport)
    down = server / TCP(sport=dport, dport=sport)
    client_isn, server_isn = 1000, 5000
    request_end = client_isn + 1 + len(request)
    response_end = server_isn + 1 + len(response)
    packets: list[Packet] = []
    for template, fields, payload in (
        (up, {"flags": "S", "seq": client_isn}, b""),
        (down, {"flags": "SA", "seq": server_isn, "ack": client_isn + 1}, b""),
        (up, {"flags": "A", "seq": client_isn + 1, "ack": server_isn + 1}, b""),
        (up, {"flags": "PA", "seq": client_isn + 1, "ack": server_isn + 1}, request),
        (down, {"flags": "PA", "seq": server_isn + 1, "ack": request_end}, response),
        (up, {"flags": "FA", "seq": request_end, "ack": response_end}, b""),
        (down, {"flags": "FA", "seq": response_end, "ack": request_end + 1}, b""),
        (up, {"flags": "A", "seq": request_end + 1, "ack": response_end + 1}, b""),
    ):
        packet = template.copy()
        for name, value in fields.items():
            setattr(packet[TCP], name, value)
        packets.append(packet / Raw(payload) if payload else packet)
    return packets


def browsing() -> list[Packet]:
    """What a logged-in subscriber sends and receives, as raw IPv4 and IPv6 packets."""
    v4_up, v4_down = IP(src=SUBSCRIBER, dst=SERVER), IP(src=SERVER, dst=SUBSCRIBER)
    v6_up, v6_down = IPv6(src=SUBSCRIBER6, dst=SERVER6), IPv6(src=SERVER6, dst=SUBSCRIBER6)
    return [
        *_dns(IP(src=SUBSCRIBER, dst=RESOLVER), IP(src=RESOLVER, dst=SUBSCRIBER), 53124),
        *_web(v4_up, v4_down, 49152),
        *_web(v4_up, v4_down, 49154, 443, tls_client_hello(TLS_SERVER_NAME), TLS_SERVER_HELLO),
        v4_up / ICMP(type=8, id=0x200, seq=1) / Raw(b"abcdefgh" * 4),
        v4_down / ICMP(type=0, id=0x200, seq=1) / Raw(b"abcdefgh" * 4),
        *_dns(IPv6(src=SUBSCRIBER6, dst=RESOLVER6), IPv6(src=RESOLVER6, dst=SUBSCRIBER6), 53125),
        *_web(v6_up, v6_down, 49153),
        v6_up / ICMPv6EchoRequest(id=7, seq=1, data=b"ping6"),
        v6_down / ICMPv6EchoReply(id=7, seq=1, data=b"ping6"),
    ]


Framing = Literal["ppp", "ip", "mixed"]
FRAMINGS: Final = ("ppp", "ip", "mixed")


def subscriber_traffic(framing: Framing = "ppp") -> list[Packet]:
    """One subscriber's mirrored packets in order, each sent once.

    ``ppp`` (the default): a PPP subscriber as an LNS or BRAS mirrors it, the login (LCP,
    PAP, IPCP, IPv6CP) then the browsing framed in PPP (HDLC), one link type throughout.
    ``ip``: an IP subscriber as an MX mirrors it, the browsing as bare IPv4 and IPv6.
    ``mixed``: the login, then each browsing packet inside PPP and again as bare IP,
    alternately: not a real subscriber (every packet is there twice, so Wireshark sees
    retransmissions) but a session that mixes link types at every packet, for tests."""
    raw = browsing()
    in_ppp = [_ppp(_PPP_IPV6 if IPv6 in packet else _PPP_IPV4, packet) for packet in raw]
    if framing == "ip":
        return raw
    if framing == "ppp":
        return [*ppp_login(), *in_ppp]
    return [*ppp_login(), *(each for pair in zip(in_ppp, raw, strict=True) for each in pair)]


def build_payloads(mids: Sequence[int], sid: int | None, framing: Framing = "ppp") -> list[bytes]:
    """The jmirror payloads to send, built once: every mid's subscriber traffic,
    interleaved packet by packet as concurrent subscribers would be. Without ``sid``
    each mid gets its own session id, counting up from :data:`DEFAULT_SID`."""
    inner = [bytes(packet) for packet in subscriber_traffic(framing)]
    streams = [
        [
            jmirror_datagram(each, mid=mid, sid=sid if sid is not None else DEFAULT_SID + index)
            for each in inner
        ]
        for index, mid in enumerate(mids)
    ]
    return [payload for step in zip(*streams, strict=True) for payload in step]


def _from_workload(packet: Packet) -> bool:
    """Whether the simulated workload (the subscriber) sent ``packet``."""
    if ARP in packet:
        return bool(packet[ARP].psrc == SUBSCRIBER)
    network = packet[IP] if IP in packet else packet[IPv6]
    return network.src in (SUBSCRIBER, SUBSCRIBER6)


def workload_frames(vlans: Sequence[int] = ()) -> list[tuple[bool, bytes]]:
    """One workload's Ethernet frames as its vRouter sees them, each with whether the
    workload sent it: an ARP exchange (the vRouter answers ARP for every address, as
    proxy), then :func:`browsing`."""
    arp = [
        ARP(op=1, hwsrc=WORKLOAD_MAC, psrc=SUBSCRIBER, pdst=SERVER),
        ARP(op=2, hwsrc=VROUTER_GATEWAY_MAC, psrc=SERVER, hwdst=WORKLOAD_MAC, pdst=SUBSCRIBER),
    ]
    frames = []
    for packet in [*arp, *browsing()]:
        up = _from_workload(packet)
        source, destination = (
            (WORKLOAD_MAC, VROUTER_GATEWAY_MAC) if up else (VROUTER_GATEWAY_MAC, WORKLOAD_MAC)
        )
        if ARP in packet and packet[ARP].op == 1:
            destination = "ff:ff:ff:ff:ff:ff"
        frame = ethernet_frame(packet, vlans=vlans, src=source, dst=destination)
        frames.append((up, bytes(frame)))
    return frames


def build_contrail_payloads(
    mirroring: Mirroring,
    *,
    capture_host: str,
    vn: str,
    peer_vn: str,
    vlans: Sequence[int] = (),
) -> list[bytes]:
    """The Juniper-header payloads to send for one workload's frames.

    Flow mirroring names the capture host, the flow's actions (pass, mirror; ingress on
    the workload's frames) and its source and destination VNs (``vn`` to ``peer_vn``,
    swapped on replies). Interface mirroring names only the workload's VN: as the
    source VN (TLV 3) on frames the workload sends, as the destination VN (TLV 4) on
    frames sent to it."""
    payloads = []
    for up, frame in workload_frames(vlans):
        if mirroring == "flow":
            payload = contrail_datagram(
                frame,
                capture_host=capture_host,
                flags=PASS_MIRROR | (INGRESS_FLAG if up else 0),
                source_vn=vn if up else peer_vn,
                dest_vn=peer_vn if up else vn,
            )
        elif up:
            payload = contrail_datagram(frame, source_vn=vn)
        else:
            payload = contrail_datagram(frame, dest_vn=vn)
        payloads.append(payload)
    return payloads


@dataclass(frozen=True)
class Target:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def target(text: str) -> Target:
    """``HOST:PORT`` or ``[IPV6]:PORT``."""
    host, colon, port_text = text.rpartition(":")
    if not colon or not host or not port_text:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise argparse.ArgumentTypeError(f"{text!r}: write an IPv6 address as [ADDRESS]:PORT")
    try:
        port = int(port_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{port_text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range (1-65535)")
    return Target(host, port)


def _number(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def intercept_id(text: str) -> int:
    value = _number(text)
    if not 0 <= value <= INTERCEPT_ID_MASK:
        raise argparse.ArgumentTypeError(
            f"mid {text} is out of range: it is the 30-bit intercept id "
            f"(0 to {INTERCEPT_ID_MASK:#x})"
        )
    return value


def session_id(text: str) -> int:
    value = _number(text)
    if not 0 <= value <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"sid {text} is out of range (0 to 0xffffffff)")
    return value


def vlan_id(text: str) -> int:
    value = _number(text)
    if not 0 <= value <= 0xFFF:
        raise argparse.ArgumentTypeError(f"VLAN id {text} is out of range (0-4095)")
    return value


def vn_name(text: str) -> str:
    """A virtual network name as the Juniper header carries it."""
    if not text.isascii() or "\x00" in text or not 0 < len(text) <= VN_NAME_MAXIMUM:
        raise argparse.ArgumentTypeError(
            f"VN name {text!r} must be 1 to {VN_NAME_MAXIMUM} ASCII characters without NUL"
        )
    return text


def ipv4_address(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an IPv4 address (the capture host is the vRouter's router id)"
        ) from None


def non_negative_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"rate {text} must be 0 (unpaced) or more")
    return value


def positive_count(text: str) -> int:
    value = _number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"count {text} must be at least 1")
    return value


def positive_duration(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"duration {text} must be more than 0 seconds")
    return value


def open_socket(to: Target) -> tuple[socket.socket, Any]:
    """A UDP socket and the resolved address to send to."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            to.host, to.port, type=socket.SOCK_DGRAM
        )[0]
    except socket.gaierror as error:
        raise CommandError(f"cannot resolve {to.host!r}: {error.strerror}") from None
    return socket.socket(family, kind, proto), address


def sending_address(sock: socket.socket, address: Any) -> str:
    """The IPv4 address datagrams to ``address`` leave from (the capture host a vRouter
    on this machine would name); 127.0.0.1 over IPv6, where the router id is not the
    source address anyway."""
    if sock.family != socket.AF_INET:
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(address)  # no datagram is sent: this only picks the route
        source: str = probe.getsockname()[0]
    return source


def paced(rate: float, *, burst: float) -> Iterator[None]:
    """Yields once per datagram allowed by a token bucket filling at ``rate`` per second
    (at most ``burst`` tokens saved up); ``rate`` 0 never waits."""
    if rate == 0:
        while True:
            yield
    tokens = 1.0
    last = time.perf_counter()
    while True:
        now = time.perf_counter()
        tokens = min(burst, tokens + (now - last) * rate)
        last = now
        if tokens < 1:
            # Sleeping for the deficit keeps the average exact; a busy loop would burn a
            # core that the receiver under test needs.
            time.sleep((1 - tokens) / rate)
            continue
        tokens -= 1
        yield


@dataclass
class Sent:
    datagrams: int = 0
    bytes: int = 0
    errors: int = 0
    seconds: float = 0.0


def send(
    sock: socket.socket,
    address: Any,
    payloads: Sequence[bytes],
    *,
    rate: float,
    count: int | None,
    duration: float | None,
) -> Sent:
    """Send ``payloads`` round and round until ``count`` datagrams or ``duration``
    seconds, whichever comes first."""
    sent = Sent()
    # A burst of 1% of a second's worth lets the pacer catch up after a sleep overshoots
    # without ever flooding.
    pacer = paced(rate, burst=max(1.0, rate / 100))
    start = time.perf_counter()
    deadline = start + duration if duration is not None else None
    index = 0
    while count is None or sent.datagrams + sent.errors < count:
        next(pacer)
        if deadline is not None and time.perf_counter() >= deadline:
            break
        payload = payloads[index]
        index = (index + 1) % len(payloads)
        try:
            sock.sendto(payload, address)
        except OSError:
            # ECONNREFUSED from an earlier ICMP port unreachable, or ENOBUFS at full
            # speed: count it and go on, as a router would.
            sent.errors += 1
            continue
        sent.datagrams += 1
        sent.bytes += len(payload)
    sent.seconds = time.perf_counter() - start
    return sent


_JMIRROR_OPTIONS: Final = ("mids", "sid", "framing")
_CONTRAIL_OPTIONS: Final = ("mirroring", "vn", "peer_vn", "capture_host", "vlans")
_FLOW_OPTIONS: Final = ("peer_vn", "capture_host")


def _flag(dest: str) -> str:
    return "--" + {"mids": "mid", "vlans": "vlan"}.get(dest, dest).replace("_", "-")


class Command(BaseCommand):
    help = (
        "Send simulated mirrored traffic as UDP datagrams to HOST:PORT: jmirror (a PPP "
        "subscriber's login, then DNS, web and ping over IPv4 and IPv6) or, with --format "
        "contrail, a CN2 vRouter's flow or interface mirroring of a workload's Ethernet frames."
    )
    requires_system_checks: list[str] = []
    requires_migrations_checks = False

    def add_arguments(self, parser: CommandParser) -> None:
        where = parser.add_mutually_exclusive_group(required=True)
        where.add_argument("--to", type=target, metavar="HOST:PORT", help="where to send")
        where.add_argument(
            "--write",
            type=Path,
            metavar="FILE",
            help="write the datagrams to a pcap file instead of sending them, as tcpdump "
            "on the loopback interface would capture them (to UDP port 30030, or CN2's "
            "8099 with --format contrail), paced at --rate; by default one round of the "
            "simulated traffic (for manage.py decode, import_pcap, tshark)",
        )
        parser.add_argument(
            "--format",
            choices=("jmirror", "contrail"),
            default="jmirror",
            help="jmirror (default) or contrail (a CN2 vRouter's Juniper header)",
        )
        parser.add_argument(
            "--rate",
            type=non_negative_rate,
            default=1000.0,
            help="datagrams per second (default 1000; 0 sends as fast as possible)",
        )
        parser.add_argument(
            "--count",
            type=positive_count,
            default=None,
            help=f"datagrams to send (default {DEFAULT_COUNT}, or no limit with --duration)",
        )
        parser.add_argument(
            "--duration", type=positive_duration, default=None, help="stop after SECONDS"
        )
        jmirror = parser.add_argument_group("jmirror")
        jmirror.add_argument(
            "--mid",
            type=intercept_id,
            action="append",
            dest="mids",
            metavar="MID",
            help="30-bit intercept id, repeatable: one subscriber each (default 0x300)",
        )
        jmirror.add_argument(
            "--sid",
            type=session_id,
            default=None,
            help="session id for every subscriber (default: 0x90, 0x91, ... one per mid)",
        )
        jmirror.add_argument(
            "--framing",
            choices=FRAMINGS,
            default=None,
            help="ppp (default): a PPP login, then the browsing in PPP, as an LNS mirrors "
            "a subscriber; ip: the browsing as bare IP, as an MX mirrors one; mixed: both "
            "framings of every packet, alternately (a test of mixed link types)",
        )
        contrail = parser.add_argument_group("contrail (with --format contrail)")
        contrail.add_argument(
            "--mirroring",
            choices=("flow", "interface"),
            default=None,
            help="flow (policy) mirroring, the default: TLVs 1 to 4; interface mirroring: "
            "only the workload's VN",
        )
        contrail.add_argument(
            "--vn",
            type=vn_name,
            default=None,
            metavar="NAME",
            help=f"the workload's virtual network (default {SOURCE_VN})",
        )
        contrail.add_argument(
            "--peer-vn",
            type=vn_name,
            default=None,
            metavar="NAME",
            help=f"the network it talks to, flow mirroring only (default {DEST_VN})",
        )
        contrail.add_argument(
            "--capture-host",
            type=ipv4_address,
            default=None,
            metavar="IPV4",
            help="the vRouter's router id, flow mirroring only (default: the address the "
            "datagrams leave from; 127.0.0.1 over IPv6)",
        )
        contrail.add_argument(
            "--vlan",
            type=vlan_id,
            action="append",
            dest="vlans",
            metavar="ID",
            help=f"tag the mirrored frames, repeatable up to {MAX_VLAN_TAGS} (QinQ), outermost "
            "first",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        count: int | None = options["count"]
        duration: float | None = options["duration"]
        contrail = options["format"] == "contrail"
        self._check_options(options, contrail=contrail)
        if options["write"] is not None:
            self._write(options, contrail=contrail)
            return
        to: Target = options["to"]
        if count is None and duration is None:
            count = DEFAULT_COUNT
        sock, address = open_socket(to)
        with sock:
            if contrail:
                capture_host = options["capture_host"] or sending_address(sock, address)
                payloads, streams = self._contrail_payloads(options, capture_host)
            else:
                payloads, streams = self._jmirror_payloads(options)
            sent = send(
                sock, address, payloads, rate=options["rate"], count=count, duration=duration
            )
        rate = sent.datagrams / sent.seconds if sent.seconds > 0 else 0.0
        line = (
            f"sent {sent.datagrams} datagrams ({sent.bytes} bytes) to {to} in "
            f"{sent.seconds:.3f} s ({rate:.0f}/s); {streams}"
        )
        if sent.errors:
            line += f"; {sent.errors} send errors"
        self.stdout.write(line)

    def _write(self, options: dict[str, Any], *, contrail: bool) -> None:
        """The datagrams as a loopback capture: 127.0.0.1 to 127.0.0.1, Ethernet with
        zero addresses (what tcpdump -i lo writes), stamped at --rate from now."""
        path: Path = options["write"]
        if options["duration"] is not None:
            raise CommandError("--duration is for sending; with --write give --count")
        if contrail:
            capture_host = options["capture_host"] or LOOPBACK
            payloads, streams = self._contrail_payloads(options, capture_host)
            port = ANALYZER_DEFAULT_PORT
        else:
            payloads, streams = self._jmirror_payloads(options)
            port = WIRESHARK_DEFAULT_PORT
        count: int = options["count"] or len(payloads)
        rate: float = options["rate"] or 1000.0
        start = time.time()
        frames = []
        for index in range(count):
            frame = (
                Ether(src="00:00:00:00:00:00", dst="00:00:00:00:00:00")
                / IP(src=LOOPBACK, dst=LOOPBACK, id=index & 0xFFFF)
                / UDP(sport=SENDER_PORT, dport=port)
                / Raw(payloads[index % len(payloads)])
            )
            frame.time = start + index / rate
            frames.append(frame)
        try:
            wrpcap(str(path), frames)
        except OSError as error:
            raise CommandError(f"cannot write {path}: {error.strerror}") from None
        self.stdout.write(f"wrote {count} datagrams to {path} (UDP to 127.0.0.1:{port}); {streams}")

    @staticmethod
    def _check_options(options: dict[str, Any], *, contrail: bool) -> None:
        """Refuse options of the other format (or of flow mirroring with interface
        mirroring) rather than ignore them."""
        given = [d for d in _JMIRROR_OPTIONS + _CONTRAIL_OPTIONS if options[d] is not None]
        foreign = _JMIRROR_OPTIONS if contrail else _CONTRAIL_OPTIONS
        for dest in given:
            if dest in foreign:
                needed = "jmirror (the default)" if contrail else "contrail"
                raise CommandError(f"{_flag(dest)} is for --format {needed}")
        if options["mirroring"] == "interface":
            for dest in _FLOW_OPTIONS:
                if options[dest] is not None:
                    raise CommandError(
                        f"{_flag(dest)} is for flow mirroring: interface mirroring sends "
                        "only the workload's VN"
                    )
        if options["vlans"] and len(options["vlans"]) > MAX_VLAN_TAGS:
            raise CommandError(
                f"at most {MAX_VLAN_TAGS} --vlan tags (a service and a customer tag), "
                f"not {len(options['vlans'])}"
            )

    @staticmethod
    def _jmirror_payloads(options: dict[str, Any]) -> tuple[list[bytes], str]:
        mids: list[int] = options["mids"] or list(DEFAULT_MIDS)
        sid: int | None = options["sid"]
        sids = [sid] * len(mids) if sid is not None else range(DEFAULT_SID, DEFAULT_SID + len(mids))
        streams = ", ".join(
            f"mid {mid:#x} sid {each:#x}" for mid, each in zip(mids, sids, strict=True)
        )
        framing: Framing = options["framing"] or "ppp"
        return build_payloads(mids, sid, framing), streams

    @staticmethod
    def _contrail_payloads(options: dict[str, Any], capture_host: str) -> tuple[list[bytes], str]:
        mirroring: Mirroring = options["mirroring"] or "flow"
        vn: str = options["vn"] or SOURCE_VN
        peer_vn: str = options["peer_vn"] or DEST_VN
        vlans: list[int] = options["vlans"] or []
        payloads = build_contrail_payloads(
            mirroring, capture_host=capture_host, vn=vn, peer_vn=peer_vn, vlans=vlans
        )
        if mirroring == "flow":
            streams = f"contrail flow mirroring, capture host {capture_host}, VN {vn} <> {peer_vn}"
        else:
            streams = f"contrail interface mirroring, VN {vn}"
        if vlans:
            streams += f", VLAN {'/'.join(map(str, vlans))}"
        return payloads, streams
