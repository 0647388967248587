"""The Scapy JMirror layer: build -> exact bytes -> dissect, and the real captures."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6ND_RA, ICMPv6NDOptMTU, IPv6
from scapy.layers.ppp import (
    HDLC,
    PPP,
    PPP_CHAP,
    PPP_IPCP,
    PPP_LCP,
    PPP_PAP,
    PPP_LCP_Echo,
)
from scapy.packet import Packet, Raw
from scapy.utils import rdpcap

from receiver import traffic
from receiver.scapy_jmirror import JMirror, bind_jmirror_port
from tests.receiver.router_captures import Capture, capture_params

# UDP payloads of the first frame of each real capture, as tshark prints udp.payload.
REAL_IPV4_ICMP = bytes.fromhex(
    "000000020010f447"
    "4500003c589400007e01bf63459ec04e4346db960800d70e0200744d"
    "6162636465666768696a6b6c6d6e6f7071727374757677616263646566676869"
)
REAL_PPP_LCP_ECHO = bytes.fromhex("000030390001e240 ff03c02109200008b4c6c8ac")
REAL_PPP_IPV6_RA = bytes.fromhex(
    "0000800000000001"
    "ff030057"
    "6000000000183afffe8000000000000000901a0003408fccff020000000000000000000000000001"
    "8600bc0e00c00708000000000000000005010000000005b4"
)


def test_it_builds_the_header_as_version_intercept_id_and_session_id_big_endian():
    header = JMirror(version=0, intercept_id=0x2, sid=0x10F447)

    assert bytes(header) == bytes.fromhex("00000002 0010f447")


def test_the_version_takes_the_top_two_bits_of_the_first_word():
    header = JMirror(version=2, intercept_id=0x8000, sid=1)

    assert bytes(header)[:4] == bytes.fromhex("80008000")
    assert header.mid == 0x80008000


def test_mid_is_the_raw_first_word_of_a_dissected_header():
    header = JMirror(bytes.fromhex("c0000300 00000090"))

    assert (header.version, header.intercept_id, header.sid) == (3, 0x300, 0x90)
    assert header.mid == 0xC0000300


def test_its_summary_reads_like_wiresharks_mid_and_sid():
    assert JMirror(intercept_id=2, sid=0x10F447).mysummary() == (
        "JMirror mid=0x00000002 sid=0x0010f447"
    )


def test_udp_to_port_30030_builds_and_dissects_as_jmirror_by_default():
    datagram = UDP(sport=30030) / JMirror(intercept_id=7, sid=9) / traffic.ipv4_icmp().packet

    dissected = UDP(bytes(datagram))

    assert dissected.dport == 30030
    assert dissected[JMirror].sid == 9
    assert IP in dissected[JMirror]


def test_it_rebuilds_a_real_routers_ipv4_ping_byte_for_byte():
    ping = (
        IP(id=0x5894, ttl=126, src="69.158.192.78", dst="67.70.219.150")
        / ICMP(id=0x200, seq=0x744D)
        / Raw(b"abcdefghijklmnopqrstuvwabcdefghi")
    )

    assert bytes(JMirror(intercept_id=2, sid=0x10F447) / ping) == REAL_IPV4_ICMP
    assert JMirror(REAL_IPV4_ICMP)[ICMP].seq == 0x744D


def test_it_rebuilds_a_real_routers_ppp_lcp_echo_byte_for_byte():
    echo = HDLC() / PPP(proto=0xC021) / PPP_LCP_Echo(code=9, id=0x20, magic_number=0xB4C6C8AC)

    assert bytes(JMirror(intercept_id=12345, sid=123456) / echo) == REAL_PPP_LCP_ECHO
    assert JMirror(REAL_PPP_LCP_ECHO)[PPP_LCP_Echo].magic_number == 0xB4C6C8AC


def test_it_rebuilds_a_real_routers_ipv6_router_advertisement_in_ppp_byte_for_byte():
    advertisement = (
        HDLC()
        / PPP(proto=0x0057)
        / IPv6(src="fe80::90:1a00:340:8fcc", dst="ff02::1", hlim=255)
        / ICMPv6ND_RA(chlim=0, M=1, O=1, prf=0, routerlifetime=1800)
        / ICMPv6NDOptMTU(mtu=1460)
    )

    assert bytes(JMirror(intercept_id=0x8000, sid=1) / advertisement) == REAL_PPP_IPV6_RA
    assert JMirror(REAL_PPP_IPV6_RA)[ICMPv6NDOptMTU].mtu == 1460


def layer_classes(packet: Packet) -> list[type[Packet]]:
    """The packet's layers, each as the most general class the tests name (Scapy
    dissects PPP control packets to per-code subclasses such as PPP_LCP_Configure)."""
    named = (IP, TCP, UDP, IPv6, HDLC, PPP, PPP_LCP, PPP_PAP, PPP_CHAP, PPP_IPCP, Raw)
    return [
        next((cls for cls in named if isinstance(layer, cls)), type(layer))
        for layer in packet.iterpayloads()
    ]


@pytest.mark.parametrize(
    ("mirrored", "layers"),
    [
        (traffic.ipv4_udp(), [IP, UDP]),
        (traffic.ipv4_router_alert_udp(), [IP, UDP]),
        (traffic.ipv6_udp(), [IPv6, UDP]),
        (traffic.ipv6_tcp_flow_label(), [IPv6, TCP]),
        (traffic.ppp_ipv4_udp(), [HDLC, PPP, IP, UDP]),
        (traffic.ppp_ipv6_tcp(), [HDLC, PPP, IPv6, TCP]),
        (traffic.ppp_lcp(), [HDLC, PPP, PPP_LCP]),
        (traffic.ppp_pap(), [HDLC, PPP, PPP_PAP]),
        (traffic.ppp_chap(), [HDLC, PPP, PPP_CHAP]),
        (traffic.ppp_ipcp(), [HDLC, PPP, PPP_IPCP]),
        (traffic.ppp_ipv6cp(), [HDLC, PPP, Raw]),
    ],
    ids=lambda value: value.name if isinstance(value, traffic.Mirrored) else "",
)
def test_every_inner_kind_round_trips_through_bytes(
    mirrored: traffic.Mirrored, layers: list[type[Packet]]
):
    built = JMirror(intercept_id=0x8000, sid=0xDEADBEEF) / mirrored.packet

    wire = bytes(built)
    dissected = JMirror(wire)

    assert wire == bytes.fromhex("00008000 deadbeef") + bytes(mirrored)
    assert (dissected.version, dissected.intercept_id, dissected.sid) == (0, 0x8000, 0xDEADBEEF)
    assert layer_classes(dissected.payload)[: len(layers)] == layers
    assert bytes(dissected) == wire


def test_ppp_dissects_to_the_protocol_the_router_put_in_the_frame():
    dissected = JMirror(bytes(JMirror() / traffic.ppp_ipv6cp().packet))

    assert dissected[PPP].proto == 0x8057


def test_a_mirrored_packet_that_is_neither_ip_nor_ppp_stays_raw():
    dissected = JMirror(bytes.fromhex("00000001 00000002 00 01 02 03"))

    assert type(dissected.payload) is Raw
    assert dissected[Raw].load == bytes.fromhex("00010203")


def test_binding_another_port_makes_udp_to_it_dissect_as_jmirror():
    datagram = bytes(UDP(sport=40123, dport=40123) / JMirror(sid=5) / traffic.ipv4_tcp().packet)
    assert JMirror not in UDP(datagram)

    bind_jmirror_port(40123)
    bind_jmirror_port(40123)

    assert UDP(datagram)[JMirror].sid == 5
    assert UDP.payload_guess.count(({"dport": 40123}, JMirror)) == 1


def test_binding_another_port_keeps_30030_as_the_port_it_builds():
    bind_jmirror_port(40124)

    assert (UDP() / JMirror()).dport == 30030


@pytest.mark.parametrize("port", [0, -1, 65536, True, "6502", 6502.0])
def test_binding_a_port_outside_1_to_65535_is_refused(port: object):
    with pytest.raises(ValueError, match=r"jmirror port must be an integer from 1 to 65535, not "):
        bind_jmirror_port(port)  # type: ignore[arg-type]


@pytest.mark.captures
@pytest.mark.parametrize("router_capture", capture_params(), indirect=True)
def test_every_frame_of_the_router_captures_dissects_as_jmirror_once_its_port_is_bound(
    router_capture: Capture,
):
    bind_jmirror_port(router_capture.port)

    frames = rdpcap(str(router_capture.path))

    assert len(frames) == router_capture.frames
    assert all(JMirror in frame for frame in frames)
    assert {
        (frame[IP].src, frame[JMirror].mid, frame[JMirror].sid) for frame in frames
    } == router_capture.streams
    assert all(frame[JMirror].payload.__class__ in (IP, IPv6, HDLC) for frame in frames), (
        "every mirrored packet of a router capture is IPv4, IPv6 or PPP"
    )


@pytest.mark.captures
@pytest.mark.tshark
@pytest.mark.parametrize("router_capture", capture_params(), indirect=True)
def test_the_router_captures_dissect_with_the_mid_and_sid_tshark_shows(router_capture: Capture):
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark is not installed")
    path, port = router_capture.path, router_capture.port
    bind_jmirror_port(port)
    fields = ["-e", "frame.number", "-e", "jmirror.mid", "-e", "jmirror.sid"]
    lines = subprocess.run(
        [tshark, "-r", str(path), "-d", f"udp.port=={port},jmirror", "-T", "fields", *fields],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()

    tshark_view = [tuple(int(value, 0) for value in line.split("\t")) for line in lines]
    ours = [
        (number, frame[JMirror].mid, frame[JMirror].sid)
        for number, frame in enumerate(rdpcap(str(path)), start=1)
    ]
    assert ours == tshark_view
