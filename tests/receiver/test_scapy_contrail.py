"""The Scapy JuniperVN layer (Contrail vRouter Juniper header): build -> exact bytes ->
dissect, the shapes a vRouter sends, bad input, and tshark's reading of what it builds."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw
from scapy.utils import rdpcap, wrpcap

from receiver import traffic
from receiver.scapy_contrail import (
    ANALYZER_DEFAULT_PORT,
    JuniperVN,
    JuniperVNCaptureHost,
    JuniperVNDestVN,
    JuniperVNFlags,
    JuniperVNSourceVN,
    JuniperVNTlv,
    action_names,
    bind_contrail_port,
)
from tests.receiver.contrail_tshark import tshark_fields

FLOW_HEADER = bytes.fromhex(
    "0104 0a000001"  # capture host 10.0.0.1
    "0204 400000a0"  # flags: ingress, pass, mirror
    "0305 612d766e31"  # source VN "a-vn1"
    "0405 622d766e32"  # destination VN "b-vn2"
    "ff00"
)


def flow_header() -> JuniperVN:
    return JuniperVN(
        tlvs=[
            JuniperVNCaptureHost(address="10.0.0.1"),
            JuniperVNFlags(flags=0x400000A0),
            JuniperVNSourceVN(vn="a-vn1"),
            JuniperVNDestVN(vn="b-vn2"),
        ]
    )


def test_it_builds_the_tlvs_in_order_then_the_end_marker_then_the_frame():
    frame = traffic.inner_frame(traffic.ipv4_tcp()).frame

    wire = bytes(flow_header() / frame)

    assert wire == FLOW_HEADER + bytes(frame)


def test_a_flow_mirrored_frame_dissects_to_its_tlvs_and_the_inner_packet():
    frame = traffic.inner_frame(traffic.ipv4_tcp()).frame

    dissected = JuniperVN(FLOW_HEADER + bytes(frame))

    assert dissected.capture_host == "10.0.0.1"
    assert dissected.flags == 0x400000A0
    assert dissected.actions == ("pass", "mirror")
    assert dissected.traffic_direction == "ingress"
    assert (dissected.source_vn, dissected.dest_vn) == ("a-vn1", "b-vn2")
    assert dissected.unknown_tlvs == ()
    assert dissected.end == 0xFF00
    assert isinstance(dissected.payload, Ether)
    assert (dissected[IP].src, dissected[TCP].dport) == (traffic.SUBSCRIBER, 443)
    assert bytes(dissected) == FLOW_HEADER + bytes(frame)


def test_the_flags_show_by_action_name_and_the_ingress_bit():
    assert str(JuniperVN(FLOW_HEADER).tlvs[1].flags) == "pass+mirror+ingress"
    every_bit = JuniperVNFlags(flags=0x700001FE)

    assert action_names(int(every_bit.flags)) == (
        *("alert", "drop", "deny", "log", "pass", "reject", "mirror", "vrf_translate"),
        *("trap", "implicit_deny"),
    )


def test_without_a_flags_tlv_there_is_no_direction_and_no_action():
    dissected = JuniperVN(b"\xff\x00")

    assert (dissected.flags, dissected.actions, dissected.traffic_direction) == (None, (), None)
    assert JuniperVN(bytes(JuniperVN(tlvs=[JuniperVNFlags(flags=0xA0)]))).traffic_direction == (
        "egress"
    )


def test_with_no_metadata_the_header_is_just_the_end_marker():
    frame = traffic.arp_request().frame

    wire = bytes(JuniperVN() / frame)
    dissected = JuniperVN(wire)

    assert wire == b"\xff\x00" + bytes(frame)
    assert dissected.tlvs == []
    assert dissected[ARP].pdst == traffic.SERVER
    assert (dissected.capture_host, dissected.source_vn, dissected.dest_vn) == (None, None, None)


@pytest.mark.parametrize(
    ("tlv", "source_vn", "dest_vn"),
    [
        (JuniperVNSourceVN(vn="k8s:web"), "k8s:web", None),
        (JuniperVNDestVN(vn="k8s:db"), None, "k8s:db"),
    ],
    ids=["received", "sent"],
)
def test_interface_mirroring_sends_only_one_vn(tlv: Packet, source_vn, dest_vn):
    wire = bytes(JuniperVN(tlvs=[tlv]) / traffic.inner_frame(traffic.ipv6_udp()).frame)

    dissected = JuniperVN(wire)

    assert (dissected.source_vn, dissected.dest_vn) == (source_vn, dest_vn)
    assert (dissected.capture_host, dissected.flags) == (None, None)
    assert IPv6 in dissected


def test_a_255_byte_vn_name_has_a_one_byte_length_of_255():
    name = "n" * 255

    wire = bytes(JuniperVN(tlvs=[JuniperVNSourceVN(vn=name), JuniperVNDestVN(vn=name)]))

    assert wire[:2] == b"\x03\xff"
    assert wire[257:259] == b"\x04\xff"
    assert JuniperVN(wire).source_vn == name
    assert JuniperVN(wire).dest_vn == name


def test_unknown_tlv_types_are_kept_raw_in_order_and_rebuild_byte_for_byte():
    wire = bytes.fromhex("0502 0001  c806 6f7061717565  0700  0303 766e31  ff00") + bytes(
        traffic.inner_frame(traffic.ipv4_udp()).frame
    )

    dissected = JuniperVN(wire)

    assert dissected.unknown_tlvs == ((5, b"\x00\x01"), (200, b"opaque"), (7, b""))
    assert dissected.source_vn == "vn1"
    assert UDP in dissected
    assert bytes(dissected) == wire


def test_a_known_type_with_a_length_not_its_own_is_kept_raw():
    dissected = JuniperVN(bytes.fromhex("0103 0a0000  0202 0001  ff00"))

    assert dissected.unknown_tlvs == ((1, bytes.fromhex("0a0000")), (2, b"\x00\x01"))
    assert (dissected.capture_host, dissected.flags) == (None, None)


def test_a_non_ascii_vn_name_is_shown_escaped():
    assert JuniperVN(b"\x03\x02\xc3\xa9\xff\x00").source_vn == "\\xc3\\xa9"


def test_dissection_stops_at_the_end_marker_even_if_the_frame_looks_like_tlvs():
    frame = bytes.fromhex("0104 0a000001") * 3  # not an Ethernet frame, but TLV-shaped

    dissected = JuniperVN(b"\x03\x01a\xff\x00" + frame)

    assert len(dissected.tlvs) == 1
    assert bytes(dissected.payload) == frame


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x01",
        b"\xff",
        b"\xff\x01\x00",  # an end marker with a length: not FF 00
        b"\x01\x04\x0a\x00",  # a capture host cut short
        b"\x03\xffabc",  # a VN name longer than the datagram
        b"\x03\x01a",  # TLVs but no end marker
        b"\x09\x00" * 300,  # more TLVs than Scapy lists by default
        b"\xff\x00\x02",  # the end marker, then a frame of one byte
        b"\xff\x00" + bytes(13),  # a frame shorter than an Ethernet header
    ],
)
def test_truncated_or_garbage_input_dissects_without_raising_and_rebuilds_unchanged(
    garbage: bytes,
):
    dissected = JuniperVN(garbage)

    assert bytes(dissected) == garbage


def test_a_chain_without_the_end_marker_leaves_the_rest_raw():
    dissected = JuniperVN(b"\x03\x01a\x04\x09short")

    assert dissected.end is None
    assert dissected.source_vn == "a"
    assert isinstance(dissected.payload, Raw)
    assert dissected.payload.load == b"\x04\x09short"
    assert "(no end of TLVs)" in dissected.mysummary()


def test_random_bytes_never_raise():
    rng = random.Random(20261206)
    for _ in range(200):
        data = rng.randbytes(rng.randrange(1, 120))

        assert bytes(JuniperVN(data)) == data


def test_its_summary_shows_capture_host_direction_and_vns():
    assert flow_header().mysummary() == "JuniperVN host=10.0.0.1 ingress a-vn1 > b-vn2"
    assert JuniperVN(tlvs=[JuniperVNDestVN(vn="x")]).mysummary() == "JuniperVN ? > x"
    assert JuniperVN().mysummary() == "JuniperVN"


def test_udp_to_port_8099_builds_and_dissects_as_the_juniper_header():
    datagram = UDP(sport=50100) / flow_header() / traffic.inner_frame(traffic.ipv4_tcp()).frame

    dissected = UDP(bytes(datagram))

    assert dissected.dport == ANALYZER_DEFAULT_PORT == 8099
    assert dissected[JuniperVN].capture_host == "10.0.0.1"
    assert dissected[TCP].sport == 49152


def test_vlan_tags_of_the_mirrored_frame_dissect_through_ether():
    frame = traffic.inner_frame(traffic.ipv4_udp(), vlans=[100, 200]).frame

    dissected = JuniperVN(bytes(JuniperVN() / frame))

    assert (dissected[Dot1AD].vlan, dissected[Dot1Q].vlan) == (100, 200)
    assert dissected[IP].dst == traffic.SERVER


def test_binding_another_port_makes_udp_to_it_dissect_as_the_juniper_header():
    datagram = bytes(UDP(sport=40200, dport=40200) / flow_header() / Ether() / IP())
    assert JuniperVN not in UDP(datagram)

    bind_contrail_port(40200)
    bind_contrail_port(40200)

    assert UDP(datagram)[JuniperVN].source_vn == "a-vn1"
    assert UDP.payload_guess.count(({"dport": 40200}, JuniperVN)) == 1
    assert (UDP() / JuniperVN()).dport == 8099


@pytest.mark.parametrize("port", [0, -1, 65536, True, "8099", 8099.0])
def test_binding_a_port_outside_1_to_65535_is_refused(port: object):
    with pytest.raises(ValueError, match=r"Contrail analyzer port must be an integer from 1 to"):
        bind_contrail_port(port)  # type: ignore[arg-type]


def test_a_tlv_dissected_on_its_own_takes_its_typed_class():
    assert type(JuniperVNTlv(b"\x01\x04\x0a\x00\x00\x01")) is JuniperVNCaptureHost
    assert type(JuniperVNTlv(b"\x04\x01x")) is JuniperVNDestVN
    assert type(JuniperVNTlv(b"\x06\x01x")) is JuniperVNTlv


@pytest.mark.tshark
def test_tshark_reads_the_header_and_the_inner_frame_scapy_builds(tmp_path: Path):
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark is not installed")
    frames = [
        Ether()
        / IP(src=traffic.VROUTER, dst=traffic.MEDIATION)
        / UDP(sport=50100, chksum=0)
        / header
        / inner.frame
        for header, inner in (
            (flow_header(), traffic.inner_frame(traffic.ipv4_tcp(), vlans=[7])),
            (
                JuniperVN(tlvs=[JuniperVNSourceVN(vn="n" * 255)]),
                traffic.inner_frame(traffic.ipv6_udp()),
            ),
            (JuniperVN(), traffic.arp_request()),
        )
    ]
    capture = tmp_path / "scapy.pcap"
    wrpcap(str(capture), frames)
    fields = [
        *("juniper.vn.host_ip", "juniper.vn.flags", "juniper.vn.src", "juniper.vn.dst"),
        *("vlan.id", "ip.src", "ipv6.dst", "tcp.dstport", "arp.dst.proto_ipv4"),
    ]

    shown = tshark_fields(tshark, capture, [8099], fields)

    ours = [_as_tshark_shows(each) for each in rdpcap(str(capture))]
    assert shown == ours
    assert shown[0]["ip.src"] == [traffic.VROUTER, traffic.SUBSCRIBER]
    assert shown[1]["juniper.vn.src"] == ["n" * 255]
    assert shown[2]["arp.dst.proto_ipv4"] == [traffic.SERVER]


def _as_tshark_shows(packet: Packet) -> dict[str, list[str]]:
    """The fields of the test above as Scapy dissects ``packet``."""
    header = packet[JuniperVN]

    def given(value: object) -> list[str]:
        return [] if value is None else [str(value)]

    return {
        "juniper.vn.host_ip": given(header.capture_host),
        "juniper.vn.flags": given(None if header.flags is None else f"0x{header.flags:08x}"),
        "juniper.vn.src": given(header.source_vn),
        "juniper.vn.dst": given(header.dest_vn),
        "vlan.id": [str(layer.vlan) for layer in _layers(packet, Dot1Q)],
        "ip.src": [layer.src for layer in _layers(packet, IP)],
        "ipv6.dst": [layer.dst for layer in _layers(packet, IPv6)],
        "tcp.dstport": [str(layer.dport) for layer in _layers(packet, TCP)],
        "arp.dst.proto_ipv4": [layer.pdst for layer in _layers(packet, ARP)],
    }


def _layers(packet: Packet, cls: type[Packet]) -> list[Packet]:
    return [layer for layer in packet.iterpayloads() if type(layer) is cls]


def test_vn_names_show_as_text_in_the_layer_tree():
    tlv = JuniperVN(b"\x03\x07k8s:web\xff\x00").tlvs[0]

    assert tlv.get_field("vn").i2repr(tlv, tlv.vn) == "k8s:web"
    assert "vn        = k8s:web" in tlv.show(dump=True)
