"""Contrail traffic from :mod:`receiver.traffic`: the datagrams and frames a vRouter
sends, the expected decodes the capture builder records, and the generator's record
against tshark for every variant."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether

from receiver import traffic
from receiver.scapy_contrail import JuniperVN
from tests.receiver.contrail_tshark import contrail_tshark_view, tshark_actions
from tests.receiver.test_conformance import disagreements

CONTRAIL_PORTS = (8099, 9099, 40300)


def test_a_flow_mirroring_datagram_is_the_four_tlvs_the_end_marker_and_the_frame():
    frame = traffic.inner_frame(traffic.ipv4_tcp())

    datagram = traffic.contrail_datagram(
        frame, capture_host="10.1.2.3", flags=0x400000A0, source_vn="web", dest_vn="db"
    )

    assert datagram == (
        bytes.fromhex("0104 0a010203  0204 400000a0  0303 776562  0402 6462  ff00") + bytes(frame)
    )


def test_extra_tlvs_follow_the_known_ones_and_precede_the_end_marker():
    datagram = traffic.contrail_datagram(
        b"\x00" * 14, dest_vn="db", extra_tlvs=[(9, b"x"), (200, b"")]
    )

    assert datagram == bytes.fromhex("0402 6462  0901 78  c800  ff00") + b"\x00" * 14


def test_no_metadata_is_just_the_end_marker():
    frame = traffic.arp_request()

    assert traffic.contrail_datagram(frame) == b"\xff\x00" + bytes(frame)
    assert frame.length == 42


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"source_vn": "v" * 256}, "source VN name has 1 to 255 bytes, not 256"),
        ({"dest_vn": ""}, "destination VN name has 1 to 255 bytes, not 0"),
        ({"source_vn": b"a\x00b"}, "has a NUL byte"),
        ({"flags": 1 << 32}, "flags are 32-bit unsigned"),
        ({"flags": -1}, "flags are 32-bit unsigned"),
        ({"capture_host": "2001:db8::1"}, "capture host is the vRouter.s IPv4 router id, not"),
        ({"capture_host": "host"}, "capture host is the vRouter.s IPv4 router id, not"),
        ({"extra_tlvs": [(255, b"")]}, "a TLV has a type from 0 to 254"),
        ({"extra_tlvs": [(9, b"x" * 256)]}, "at most 255 bytes"),
    ],
)
def test_it_refuses_a_header_a_vrouter_cannot_send(arguments, message):
    with pytest.raises(ValueError, match=message):
        traffic.contrail_datagram(b"", **arguments)


def test_a_non_ascii_vn_name_is_refused():
    with pytest.raises(ValueError, match="source VN name 'réseau' is not ASCII"):
        traffic.contrail_datagram(b"", source_vn="réseau")


def test_the_ipv4_outer_packet_is_as_a_vrouter_builds_it():
    frame = traffic.contrail_frame(traffic.arp_request(), ip_id=7, capture_host=traffic.VROUTER)

    outer = Ether(bytes(frame))

    assert (outer[IP].src, outer[IP].dst) == (traffic.VROUTER, traffic.MEDIATION)
    assert (outer[IP].ttl, int(outer[IP].flags), outer[IP].id) == (64, 0, 7)
    assert (outer[UDP].sport, outer[UDP].dport, outer[UDP].chksum) == (50100, 8099, 0)
    assert outer[JuniperVN].capture_host == traffic.VROUTER
    assert bytes(outer[JuniperVN].payload) == bytes(traffic.arp_request())


def test_over_ipv6_the_analyzer_defaults_to_an_ipv6_one_and_the_checksum_stays_zero():
    frame = traffic.contrail_frame(traffic.arp_request(), vrouter=traffic.VROUTER6, port=9099)

    outer = Ether(bytes(frame))

    assert (outer[IPv6].src, outer[IPv6].dst, outer[IPv6].hlim) == (
        traffic.VROUTER6,
        traffic.ANALYZER6,
        64,
    )
    assert (outer[UDP].dport, outer[UDP].chksum) == (9099, 0)


def test_a_vrouter_and_an_analyzer_of_different_families_are_refused():
    with pytest.raises(ValueError, match="of different families"):
        traffic.contrail_packet(b"", vrouter=traffic.VROUTER6, analyzer=traffic.MEDIATION)


def test_inner_frames_carry_their_vlan_tags_outermost_first():
    one = traffic.inner_frame(traffic.ipv4_udp(), vlans=[100])
    qinq = traffic.inner_frame(traffic.ipv6_udp(), vlans=[100, 200])
    double = traffic.inner_frame(traffic.ipv4_icmp(), vlans=[300, 400], service_tag_type=0x8100)

    assert (one.frame[Dot1Q].vlan, one.vlans, one.ethertype) == (100, (100,), 0x0800)
    assert (qinq.frame[Dot1AD].vlan, qinq.frame[Dot1Q].vlan, qinq.ethertype) == (100, 200, 0x86DD)
    assert Dot1AD not in double.frame
    assert one.length == traffic.ipv4_udp().length + 18
    assert qinq.name == "ipv6_udp_vlan_100_200"


def test_a_vrouter_mirrors_no_ppp_and_no_vlan_id_above_4095():
    with pytest.raises(ValueError, match="mirrors Ethernet frames, not PPP"):
        traffic.inner_frame(traffic.ppp_lcp())
    with pytest.raises(ValueError, match="a VLAN id is 12 bits"):
        traffic.inner_frame(traffic.ipv4_tcp(), vlans=[4096])


def test_outer_fragments_are_cut_from_the_outer_ipv4_packet_not_the_mirrored_one():
    frame = traffic.contrail_frame(traffic.inner_frame(traffic.full_size_ipv4_tcp()), ip_id=9)

    fragments = traffic.outer_fragments(frame, mtu=1500)

    assert len(fragments) == 2
    assert {each[IP].src for each in fragments} == {traffic.VROUTER}
    assert {each[IP].id for each in fragments} == {9}
    assert b"".join(bytes(each[IP].payload) for each in fragments) == bytes(frame[UDP])


def test_outer_fragments_are_not_built_over_ipv6():
    frame = traffic.contrail_frame(traffic.arp_request(), vrouter=traffic.VROUTER6)

    with pytest.raises(ValueError, match="outer IPv4 packet only"):
        traffic.outer_fragments(frame)


def test_the_builder_records_a_contrail_decode_with_the_record_keys_in_order():
    builder = traffic.PcapBuilder()
    builder.add_contrail(
        traffic.inner_frame(traffic.ipv4_tcp(), vlans=[5]),
        capture_host=traffic.VROUTER,
        flags=0x400000A0,
        source_vn="web",
        dest_vn="db",
        port=9099,
    )

    [expected] = builder.expected
    record = expected.as_record()

    assert list(record) == list(traffic.CONTRAIL_RECORD_KEYS)
    assert record == {
        "frame": 1,
        "time": builder.start,
        "router": traffic.VROUTER,
        "port": 9099,
        "format": "contrail",
        "capture_host": traffic.VROUTER,
        "flags": 0x400000A0,
        "actions": ["pass", "mirror"],
        "direction": "ingress",
        "source_vn": "web",
        "dest_vn": "db",
        "src": traffic.SUBSCRIBER,
        "dst": traffic.SERVER,
        "proto": 6,
        "sport": 49152,
        "dport": 443,
        "length": traffic.ipv4_tcp().length + 18,
        **dict.fromkeys(("mid", "intercept_id", "version", "sid", "inner", "ppp_protocol")),
    }
    assert (expected.vlans, expected.ethertype) == ((5,), 0x0800)


def test_without_flags_the_direction_and_actions_are_empty():
    builder = traffic.PcapBuilder()
    builder.add_contrail(traffic.arp_request(), dest_vn="db")

    record = builder.expected[0].as_record()

    assert (record["flags"], record["actions"], record["direction"]) == (None, [], None)
    assert (record["capture_host"], record["source_vn"], record["src"]) == (None, None, None)


def test_jmirror_records_gain_the_format_after_the_port():
    builder = traffic.PcapBuilder()
    builder.add_jmirror(traffic.ipv4_tcp(), mid=0x80000300, sid=0x90)

    record = builder.expected[0].as_record()

    assert list(record) == list(traffic.JMIRROR_RECORD_KEYS)
    assert list(record)[:5] == ["frame", "time", "router", "port", "format"]
    assert (record["format"], record["version"], record["intercept_id"]) == ("jmirror", 2, 0x300)


def test_a_fragmented_contrail_datagram_decodes_on_the_frame_that_completes_it():
    builder = traffic.PcapBuilder()
    fragments = builder.contrail(traffic.inner_frame(traffic.full_size_ipv4_tcp()), mtu=1500)
    builder.append(*reversed(fragments))

    assert [e.frame for e in builder.expected] == [2]
    assert builder.expected[0].length == 1514


def test_every_variant_has_its_own_name_and_every_shape_is_there():
    variants = traffic.every_contrail_variant()
    names = [variant.name for variant in variants]

    assert len(names) == len(set(names))
    shapes = {
        "flow": lambda v: None not in (v.capture_host, v.flags, v.source_vn, v.dest_vn),
        "interface_received": lambda v: (
            (v.source_vn, v.dest_vn, v.flags) != (None,) * 3
            and v.dest_vn is None
            and v.flags is None
        ),
        "interface_sent": lambda v: v.dest_vn is not None and v.source_vn is None,
        "no_metadata": lambda v: (
            (v.capture_host, v.flags, v.source_vn, v.dest_vn, v.extra_tlvs)
            == (None, None, None, None, ())
        ),
        "long_names": lambda v: v.source_vn is not None and len(v.source_vn) == 255,
        "unknown_tlvs": lambda v: bool(v.extra_tlvs),
        "ipv6_outer": lambda v: ":" in v.vrouter,
        "second_vrouter": lambda v: v.vrouter == traffic.OTHER_VROUTER,
        "capture_host_not_the_sender": lambda v: (
            ":" not in v.vrouter and v.capture_host not in (None, v.vrouter)
        ),
        "one_tag": lambda v: len(v.frame.vlans) == 1,
        "two_tags": lambda v: len(v.frame.vlans) == 2,
        "arp": lambda v: v.frame.ethertype == traffic.ETHERTYPE_ARP,
        "fragmented": lambda v: v.mtu is not None,
    }
    assert {shape for shape, test in shapes.items() if any(map(test, variants))} == set(shapes)
    assert {v.frame.proto for v in variants} >= {1, 6, 17, 58, None}


def test_every_variants_datagram_dissects_back_to_its_header_and_frame():
    for variant in traffic.every_contrail_variant():
        dissected = JuniperVN(variant.datagram())

        assert (dissected.capture_host, dissected.flags) == (variant.capture_host, variant.flags)
        assert (dissected.source_vn, dissected.dest_vn) == (variant.source_vn, variant.dest_vn)
        assert dissected.unknown_tlvs == variant.extra_tlvs
        assert bytes(dissected.payload) == bytes(variant.frame), variant.name


@pytest.fixture(scope="module")
def every_variant_capture(tmp_path_factory: pytest.TempPathFactory) -> traffic.PcapBuilder:
    """Every variant, on three analyzer ports in turn, among jmirror and DNS."""
    builder = traffic.PcapBuilder()
    for index, variant in enumerate(traffic.every_contrail_variant()):
        variant.add_to(builder, port=CONTRAIL_PORTS[index % len(CONTRAIL_PORTS)])
        if index % 5 == 0:
            builder.add_jmirror(traffic.ipv4_udp(), mid=0x300, sid=index)
            builder.add_noise(traffic.dns_query())
    return builder


@pytest.mark.tshark
def test_the_generators_record_of_every_variant_agrees_with_tshark(
    every_variant_capture: traffic.PcapBuilder, tmp_path: Path
):
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark is not installed")
    capture = tmp_path / "contrail.pcap"
    every_variant_capture.write(capture)
    contrail = [e for e in every_variant_capture.expected if e.format == "contrail"]

    view = contrail_tshark_view(tshark, capture, CONTRAIL_PORTS, with_vlans=True)
    ours = [e.as_record() | {"vlans": list(e.vlans)} for e in contrail]

    assert disagreements(ours, view) == []
    assert sorted(view) == [e.frame for e in contrail]
    # Guard against a vacuous pass: tshark saw the inner frame of all but the variant
    # whose unknown TLV types stop its dissector.
    blind = {e.name for e in contrail if "src" not in view[e.frame]}
    assert blind == {"unknown_tlvs"}


@pytest.mark.tshark
def test_tshark_shows_the_actions_the_generator_set(
    every_variant_capture: traffic.PcapBuilder, tmp_path: Path
):
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark is not installed")
    capture = tmp_path / "contrail.pcap"
    every_variant_capture.write(capture)
    named = ("alert", "drop", "deny", "log", "pass", "reject", "mirror")

    shown = tshark_actions(tshark, capture, CONTRAIL_PORTS)

    ours = {
        e.frame: [action for action in e.actions if action in named]
        for e in every_variant_capture.expected
        if e.flags is not None
    }
    assert shown == ours
    assert max(map(len, shown.values())) == 7
