"""The three router captures the receiver tests read, built here wherever the tests run.

The real captures (``jmirror_ip.pcap``, ``jmirror_l2tp.pcap`` and ``jmirror_ipv6_l2tp.pcap``,
recorded from Juniper routers) are not part of the repository: they sit beside it, in
``../shared/captures``. Each has a built twin, made with :mod:`receiver.traffic`, that
holds what the tests rely on in the real one: the same routers, mediation port, mirror
id and session id, Ethernet link type and snap length, the same kinds of mirrored
packet, and the routers' quirks:

* the router's UDP source port is the mediation port and its checksum is zero, DF clear;
* ``jmirror_ip``: IPv4 pings, echo requests and replies in turn;
* ``jmirror_l2tp``: PPP LCP echo requests and replies only, in a file whose snap length
  is 1600 bytes;
* ``jmirror_ipv6_l2tp``: two routers send the same mirror and session id (0x8000, 1),
  their datagrams interleaved: PPP in HDLC-like framing carrying IPv6 router
  advertisements, IPv6 TCP (with timestamps, TLS records, FIN, RST), ICMPv6 destination
  unreachable errors that quote an IPv6 TCP packet (whose ports are not the error's),
  IPv4 TCP with DF set, and LCP echoes.

Inside, the built twins use documentation addresses, not the real subscribers'.

A test parametrized with :func:`capture_params` runs on every built twin, and on the real
capture too when :func:`real_captures_folder` holds it; the ``router_capture`` fixture
(``tests/receiver/conftest.py``) hands it a :class:`Capture`. Figures that depend on the
copy (the number of frames) come with it: the real capture's as recorded, the built
one's as built.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
from _pytest.mark import ParameterSet
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6ND_RA, ICMPv6NDOptMTU, IPv6
from scapy.layers.ppp import HDLC, PPP, PPP_LCP_Echo
from scapy.packet import Packet, Raw

from receiver import traffic
from receiver.traffic import Mirrored, PcapBuilder

REPO = Path(__file__).resolve().parents[2]

FOLDER_VARIABLE = "JMIRROR_REAL_CAPTURES"
"""Names the folder of the real captures instead of ``../shared/captures`` (relative to
the repository unless absolute); naming a folder that does not exist runs the built
captures only."""

Origin = Literal["built", "real"]


def real_captures_folder() -> Path:
    """Where the real router captures are: beside the repository unless
    ``JMIRROR_REAL_CAPTURES`` says otherwise."""
    return REPO / os.environ.get(FOLDER_VARIABLE, "../shared/captures")


@dataclass(frozen=True)
class RouterCapture:
    """What every copy of one router capture holds, built or real."""

    name: str
    id: str
    port: int
    mid: int
    sid: int
    routers: tuple[str, ...]
    mediation: str
    real_frames: int
    build: Callable[[RouterCapture], PcapBuilder]
    snaplen: int = 65535

    @property
    def streams(self) -> set[tuple[str, int, int]]:
        """(router, mid, sid) of every stream in the capture."""
        return {(router, self.mid, self.sid) for router in self.routers}


@dataclass(frozen=True)
class Capture:
    """One copy of a router capture, and the figures of that copy."""

    of: RouterCapture
    origin: Origin
    path: Path
    frames: int

    @property
    def port(self) -> int:
        return self.of.port

    @property
    def mid(self) -> int:
        return self.of.mid

    @property
    def routers(self) -> tuple[str, ...]:
        return self.of.routers

    @property
    def streams(self) -> set[tuple[str, int, int]]:
        return self.of.streams


def _ping(seq: int, *, reply: bool) -> Mirrored:
    """An echo request from the subscriber, or the server's reply."""
    src, dst = (
        (traffic.SERVER, traffic.SUBSCRIBER) if reply else (traffic.SUBSCRIBER, traffic.SERVER)
    )
    packet = (
        IP(src=src, dst=dst, id=0x5800 + seq, ttl=251 if reply else 126)
        / ICMP(type=0 if reply else 8, id=0x200, seq=seq)
        / Raw(b"abcdefghijklmnopqrstuvwabcdefghi")
    )
    return Mirrored("ipv4_icmp_echo", packet, "ipv4", src=src, dst=dst, proto=traffic.PROTO_ICMP)


def _lcp_echo(number: int, *, reply: bool) -> Mirrored:
    packet = (
        HDLC()
        / PPP(proto=traffic.PPP_LCP)
        / PPP_LCP_Echo(code=10 if reply else 9, id=number, magic_number=0xB4C6C8AC)
    )
    return Mirrored("ppp_lcp_echo", packet, "ppp", ppp_protocol=traffic.PPP_LCP)


def _ppp_ipv6(name: str, ipv6: Packet, proto: int, ports: tuple[int, int] | None) -> Mirrored:
    sport, dport = ports if ports is not None else (None, None)
    return Mirrored(
        name,
        HDLC() / PPP(proto=traffic.PPP_IPV6) / ipv6,
        "ppp",
        ppp_protocol=traffic.PPP_IPV6,
        src=ipv6.src,
        dst=ipv6.dst,
        proto=proto,
        sport=sport,
        dport=dport,
    )


def _router_advertisement(router_link_local: str) -> Mirrored:
    advertisement = (
        IPv6(src=router_link_local, dst="ff02::1", hlim=255)
        / ICMPv6ND_RA(chlim=0, M=1, O=1, prf=0, routerlifetime=1800)
        / ICMPv6NDOptMTU(mtu=1460)
    )
    return _ppp_ipv6("ppp_ipv6_router_advertisement", advertisement, traffic.PROTO_ICMPV6, None)


def _server_tcp(sport: int, dport: int, flags: str, payload: bytes = b"") -> Packet:
    """A server's TCP segment to the subscriber, with timestamps as the real ones carry."""
    return TCP(
        sport=sport,
        dport=dport,
        flags=flags,
        seq=1,
        ack=1,
        window=4732,
        options=[("NOP", None), ("NOP", None), ("Timestamp", (3044887863, 647425678))],
    ) / Raw(payload)


TLS_ALERT = bytes.fromhex("1503010016") + bytes(range(22))


def _ipv6_tcp(sport: int, dport: int, flags: str, payload: bytes = b"") -> Mirrored:
    segment = IPv6(src=traffic.SERVER6, dst=traffic.SUBSCRIBER6) / _server_tcp(
        sport, dport, flags, payload
    )
    return _ppp_ipv6("ppp_ipv6_tcp", segment, traffic.PROTO_TCP, (sport, dport))


def _address_unreachable(quoted: Mirrored) -> Mirrored:
    """The subscriber's gateway telling the server that the subscriber is gone, quoting
    the server's segment (whose ports the decoder must not report as the error's)."""
    error = (
        IPv6(src="2001:db8:7::1", dst=traffic.SERVER6)
        / ICMPv6DestUnreach(code=3)
        / quoted.packet[IPv6]
    )
    return _ppp_ipv6("ppp_icmpv6_address_unreachable", error, traffic.PROTO_ICMPV6, None)


def _ipv4_tcp_with_df(sport: int, dport: int) -> Mirrored:
    packet = (
        HDLC()
        / PPP(proto=traffic.PPP_IPV4)
        / IP(src=traffic.SERVER, dst=traffic.SUBSCRIBER, flags="DF", ttl=61, id=0xF5BD)
        / _server_tcp(sport, dport, "FA")
    )
    return Mirrored(
        "ppp_ipv4_tcp_df",
        packet,
        "ppp",
        ppp_protocol=traffic.PPP_IPV4,
        src=traffic.SERVER,
        dst=traffic.SUBSCRIBER,
        proto=traffic.PROTO_TCP,
        sport=sport,
        dport=dport,
    )


def _add(builder: PcapBuilder, capture: RouterCapture, router: str, mirrored: Mirrored) -> None:
    builder.add_jmirror(
        mirrored,
        router=router,
        mediation=capture.mediation,
        port=capture.port,
        mid=capture.mid,
        sid=capture.sid,
    )


def _build_ip(capture: RouterCapture) -> PcapBuilder:
    builder = PcapBuilder(start=1_244_052_052.369164, step=0.5)
    [router] = capture.routers
    for seq in range(0x744D, 0x744D + 19):
        _add(builder, capture, router, _ping(seq, reply=False))
        _add(builder, capture, router, _ping(seq, reply=True))
    return builder


def _build_l2tp(capture: RouterCapture) -> PcapBuilder:
    builder = PcapBuilder(start=1_241_050_340.947928, step=10.0)
    [router] = capture.routers
    for number in range(0x20, 0x23):
        _add(builder, capture, router, _lcp_echo(number, reply=False))
        _add(builder, capture, router, _lcp_echo(number, reply=True))
    return builder


def _build_ipv6_l2tp(capture: RouterCapture) -> PcapBuilder:
    builder = PcapBuilder(start=1_342_640_385.109542, step=1.5)
    busy, quiet = capture.routers
    alert = _ipv6_tcp(443, 52531, "FPA", TLS_ALERT)
    retransmitted = _ipv6_tcp(443, 52533, "FPA", TLS_ALERT[:27])
    reset = _ipv6_tcp(443, 52527, "RA")
    closing = _ipv6_tcp(80, 52550, "FA")
    sequence: list[tuple[str, Mirrored]] = [
        (busy, _router_advertisement("fe80::1")),
        (quiet, _lcp_echo(1, reply=False)),
        (quiet, _lcp_echo(1, reply=True)),
        (busy, alert),
        (busy, retransmitted),
        (busy, closing),
        (quiet, _router_advertisement("fe80::2")),
        (busy, _address_unreachable(retransmitted)),
        (busy, _address_unreachable(retransmitted)),
        (busy, _lcp_echo(2, reply=False)),
        (busy, _lcp_echo(2, reply=True)),
        (busy, reset),
        (busy, _address_unreachable(reset)),
        (quiet, _lcp_echo(3, reply=False)),
        (quiet, _lcp_echo(3, reply=True)),
        (busy, _ipv4_tcp_with_df(80, 52512)),
        (busy, closing),
        (quiet, _router_advertisement("fe80::2")),
        (busy, _ipv4_tcp_with_df(80, 52512)),
        (busy, _address_unreachable(closing)),
        (busy, _router_advertisement("fe80::1")),
    ]
    for router, mirrored in sequence:
        _add(builder, capture, router, mirrored)
    return builder


ROUTER_CAPTURES = (
    RouterCapture(
        name="jmirror_ip.pcap",
        id="ip",
        port=6502,
        mid=0x2,
        sid=0x10F447,
        routers=("67.70.219.162",),
        mediation="216.209.156.18",
        real_frames=38,
        build=_build_ip,
    ),
    RouterCapture(
        name="jmirror_l2tp.pcap",
        id="l2tp",
        port=5000,
        mid=0x3039,
        sid=0x1E240,
        routers=("10.15.6.50",),
        mediation="10.15.6.35",
        real_frames=6,
        build=_build_l2tp,
        snaplen=1600,
    ),
    RouterCapture(
        name="jmirror_ipv6_l2tp.pcap",
        id="ipv6_l2tp",
        port=54301,
        mid=0x8000,
        sid=0x1,
        routers=("64.230.56.119", "64.230.45.123"),
        mediation="64.230.43.151",
        real_frames=100,
        build=_build_ipv6_l2tp,
    ),
)
BY_NAME = {capture.name: capture for capture in ROUTER_CAPTURES}


def origins(capture: RouterCapture) -> Iterator[Origin]:
    yield "built"
    if (real_captures_folder() / capture.name).is_file():
        yield "real"


def capture_params(*names: str) -> list[ParameterSet]:
    """Parameters for the ``router_capture`` fixture (indirect): the named captures
    (all three without names), built, and real where present."""
    chosen: Sequence[RouterCapture] = [BY_NAME[name] for name in names] or ROUTER_CAPTURES
    return [
        pytest.param((capture.name, origin), id=f"{capture.id}-{origin}")
        for capture in chosen
        for origin in origins(capture)
    ]


def build_all(folder: Path) -> dict[str, Capture]:
    """Every built twin, written into ``folder``."""
    built = {}
    for capture in ROUTER_CAPTURES:
        builder = capture.build(capture)
        path = folder / capture.name
        builder.write(path, snaplen=capture.snaplen)
        built[capture.name] = Capture(capture, "built", path, len(builder.frames))
    return built


def real(name: str) -> Capture:
    capture = BY_NAME[name]
    return Capture(capture, "real", real_captures_folder() / name, capture.real_frames)


def present_real_captures() -> list[Capture]:
    """The real router captures that are there."""
    return [real(c.name) for c in ROUTER_CAPTURES if "real" in origins(c)]
