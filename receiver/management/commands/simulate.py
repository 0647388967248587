"""``manage.py simulate --to HOST:PORT``: send realistic jmirror traffic, for demos and tests.

Each simulated subscriber logs in over PPP (LCP, PAP, IPCP, IPv6CP) and then browses:
DNS, a TCP web exchange and pings, over IPv4 and IPv6, both inside PPP (as an
L2TP-mirrored subscriber arrives) and as raw IP (as an MX mirrors an IP subscriber).
Only the jmirror payloads are built; the kernel adds the outer IP and UDP headers.
"""

from __future__ import annotations

import argparse
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from django.core.management.base import BaseCommand, CommandError, CommandParser
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
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

from receiver.jmirror import INTERCEPT_ID_MASK
from receiver.traffic import (
    PPP_IPCP_PROTOCOL,
    PPP_LCP,
    PPP_PAP,
    SERVER,
    SERVER6,
    SUBSCRIBER,
    SUBSCRIBER6,
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
_HTTP_REQUEST: Final = b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n"
_HTTP_RESPONSE: Final = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


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


def _web(client: IP | IPv6, server: IP | IPv6, sport: int) -> list[Packet]:
    """A whole short HTTP exchange: handshake, request, response, close."""
    up = client / TCP(sport=sport, dport=80)
    down = server / TCP(sport=80, dport=sport)
    client_isn, server_isn = 1000, 5000
    request_end = client_isn + 1 + len(_HTTP_REQUEST)
    response_end = server_isn + 1 + len(_HTTP_RESPONSE)
    packets: list[Packet] = []
    for template, fields, payload in (
        (up, {"flags": "S", "seq": client_isn}, b""),
        (down, {"flags": "SA", "seq": server_isn, "ack": client_isn + 1}, b""),
        (up, {"flags": "A", "seq": client_isn + 1, "ack": server_isn + 1}, b""),
        (up, {"flags": "PA", "seq": client_isn + 1, "ack": server_isn + 1}, _HTTP_REQUEST),
        (down, {"flags": "PA", "seq": server_isn + 1, "ack": request_end}, _HTTP_RESPONSE),
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
        v4_up / ICMP(type=8, id=0x200, seq=1) / Raw(b"abcdefgh" * 4),
        v4_down / ICMP(type=0, id=0x200, seq=1) / Raw(b"abcdefgh" * 4),
        *_dns(IPv6(src=SUBSCRIBER6, dst=RESOLVER6), IPv6(src=RESOLVER6, dst=SUBSCRIBER6), 53125),
        *_web(v6_up, v6_down, 49153),
        v6_up / ICMPv6EchoRequest(id=7, seq=1, data=b"ping6"),
        v6_down / ICMPv6EchoReply(id=7, seq=1, data=b"ping6"),
    ]


def subscriber_traffic() -> list[Packet]:
    """One subscriber's mirrored packets in order: a PPP login, then browsing, each
    packet once inside PPP (IPv4 and IPv6 framed in HDLC, as from an LNS) and once as
    raw IP (as from an MX), alternately, so that any stretch of it mixes the kinds."""
    raw = browsing()
    in_ppp = [_ppp(_PPP_IPV6 if IPv6 in packet else _PPP_IPV4, packet) for packet in raw]
    return [*ppp_login(), *(each for pair in zip(in_ppp, raw, strict=True) for each in pair)]


def build_payloads(mids: Sequence[int], sid: int | None) -> list[bytes]:
    """The jmirror payloads to send, built once: every mid's subscriber traffic,
    interleaved packet by packet as concurrent subscribers would be. Without ``sid``
    each mid gets its own session id, counting up from :data:`DEFAULT_SID`."""
    inner = [bytes(packet) for packet in subscriber_traffic()]
    streams = [
        [
            jmirror_datagram(each, mid=mid, sid=sid if sid is not None else DEFAULT_SID + index)
            for each in inner
        ]
        for index, mid in enumerate(mids)
    ]
    return [payload for step in zip(*streams, strict=True) for payload in step]


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


class Command(BaseCommand):
    help = (
        "Send simulated jmirror traffic (a PPP subscriber's login, then DNS, web and ping "
        "over IPv4 and IPv6) as UDP datagrams to HOST:PORT."
    )
    requires_system_checks: list[str] = []
    requires_migrations_checks = False

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--to", type=target, required=True, metavar="HOST:PORT", help="where to send"
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
        parser.add_argument(
            "--mid",
            type=intercept_id,
            action="append",
            dest="mids",
            metavar="MID",
            help="30-bit intercept id, repeatable: one subscriber each (default 0x300)",
        )
        parser.add_argument(
            "--sid",
            type=session_id,
            default=None,
            help="session id for every subscriber (default: 0x90, 0x91, ... one per mid)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        to: Target = options["to"]
        mids: list[int] = options["mids"] or list(DEFAULT_MIDS)
        sid: int | None = options["sid"]
        count: int | None = options["count"]
        duration: float | None = options["duration"]
        if count is None and duration is None:
            count = DEFAULT_COUNT
        payloads = build_payloads(mids, sid)
        sock, address = open_socket(to)
        with sock:
            sent = send(
                sock, address, payloads, rate=options["rate"], count=count, duration=duration
            )
        sids = [sid] * len(mids) if sid is not None else range(DEFAULT_SID, DEFAULT_SID + len(mids))
        streams = ", ".join(
            f"mid {mid:#x} sid {each:#x}" for mid, each in zip(mids, sids, strict=True)
        )
        rate = sent.datagrams / sent.seconds if sent.seconds > 0 else 0.0
        line = (
            f"sent {sent.datagrams} datagrams ({sent.bytes} bytes) to {to} in "
            f"{sent.seconds:.3f} s ({rate:.0f}/s); {streams}"
        )
        if sent.errors:
            line += f"; {sent.errors} send errors"
        self.stdout.write(line)
