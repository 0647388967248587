"""The CN2 / Contrail decoder: the Juniper header's TLVs, the frame behind them, and
what it refuses."""

from __future__ import annotations

import contextlib
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether

from receiver.contrail import (
    INGRESS_FLAG,
    MAX_VLAN_TAGS,
    Action,
    action_names,
    contrail_header,
    decode_contrail,
    evidence_options,
    is_plausible_contrail,
    looks_like_contrail,
)
from receiver.jmirror import DecodeError, DecodeFailure, looks_like_jmirror
from receiver.pcap import (
    JUNIPER_PEN,
    LinkType,
    enhanced_packet_block,
    pcapng_interface_description,
    pcapng_section_header,
)
from receiver.pcap_reader import iter_frames

VROUTER = "10.255.0.7"
SOURCE_VN = "default-domain:tenant-a:frontend"
DEST_VN = "default-domain:tenant-a:backend"
PASS_MIRROR = (1 << Action.PASS) | (1 << Action.MIRROR)


def frame(*layers: object) -> bytes:
    packet = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    for layer in layers:
        packet = packet / layer  # type: ignore[operator]
    return bytes(packet)


def udp_frame() -> bytes:
    return frame(IP(src="10.1.0.5", dst="10.2.0.9") / UDP(sport=5353, dport=53) / b"query")


def flow_mirrored(inner: bytes, flags: int = PASS_MIRROR | INGRESS_FLAG) -> bytes:
    header = contrail_header(
        capture_host=VROUTER, flags=flags, source_vn=SOURCE_VN, dest_vn=DEST_VN
    )
    return header + inner


def test_a_flow_mirrored_frame_decodes_to_its_header_and_inner_five_tuple() -> None:
    inner = udp_frame()
    packet = decode_contrail(flow_mirrored(inner))
    assert packet.capture_host == VROUTER
    assert packet.flags == PASS_MIRROR | INGRESS_FLAG
    assert packet.actions == ("pass", "mirror")
    assert packet.direction == "ingress"
    assert (packet.source_vn, packet.dest_vn) == (SOURCE_VN, DEST_VN)
    assert packet.unknown_tlvs == ()
    assert (packet.src, packet.dst, packet.proto, packet.sport, packet.dport) == (
        "10.1.0.5",
        "10.2.0.9",
        17,
        5353,
        53,
    )
    assert packet.frame == inner
    assert packet.length == len(inner)
    assert packet.header_length == len(flow_mirrored(inner)) - len(inner)
    assert packet.vlans == ()
    assert packet.ethertype == 0x0800


def test_without_the_ingress_bit_the_direction_is_egress() -> None:
    assert decode_contrail(flow_mirrored(udp_frame(), flags=PASS_MIRROR)).direction == "egress"


@pytest.mark.parametrize(
    ("flags", "names"),
    [
        (0xA0, ("pass", "mirror")),
        (0x04, ("drop",)),
        ((1 << 28) | (1 << 29), ("trap", "implicit_deny")),
        (0x1FE, ("alert", "drop", "deny", "log", "pass", "reject", "mirror", "vrf_translate")),
        (INGRESS_FLAG | (1 << 12), ()),
    ],
)
def test_actions_are_named_in_bit_order_and_unnamed_bits_left_to_the_flags(
    flags: int, names: tuple[str, ...]
) -> None:
    assert action_names(flags) == names


@pytest.mark.parametrize(
    ("tlvs", "source_vn", "dest_vn"),
    [
        ({"source_vn": SOURCE_VN}, SOURCE_VN, None),  # interface mirroring, received
        ({"dest_vn": DEST_VN}, None, DEST_VN),  # interface mirroring, sent
        ({}, None, None),  # no metadata: FF 00 alone
    ],
)
def test_interface_mirroring_and_no_metadata_leave_the_absent_fields_null(
    tlvs: dict[str, str], source_vn: str | None, dest_vn: str | None
) -> None:
    inner = udp_frame()
    packet = decode_contrail(contrail_header(**tlvs) + inner)  # type: ignore[arg-type]
    assert (packet.source_vn, packet.dest_vn) == (source_vn, dest_vn)
    assert packet.capture_host is None
    assert packet.flags is None
    assert packet.actions == ()
    assert packet.direction is None
    assert packet.frame == inner


def test_no_metadata_is_two_bytes_of_header() -> None:
    assert contrail_header() == b"\xff\x00"
    assert decode_contrail(b"\xff\x00" + udp_frame()).header_length == 2


def test_a_255_byte_virtual_network_name_is_read_whole() -> None:
    name = "default-domain:project:" + "n" * (255 - 23)
    packet = decode_contrail(contrail_header(source_vn=name, dest_vn=name) + udp_frame())
    assert packet.source_vn == name
    assert len(packet.source_vn) == 255


def test_unknown_tlv_types_are_kept_raw_in_order() -> None:
    header = contrail_header(
        capture_host=VROUTER, extra_tlvs=[(9, b"\x01\x02"), (0, b""), (200, b"x" * 255)]
    )
    packet = decode_contrail(header + udp_frame())
    assert packet.unknown_tlvs == ((9, b"\x01\x02"), (0, b""), (200, b"x" * 255))
    assert packet.capture_host == VROUTER


def test_bytes_of_a_name_that_are_not_ascii_are_shown_escaped() -> None:
    packet = decode_contrail(contrail_header(source_vn=b"vn\xe9\x00x") + udp_frame())
    assert packet.source_vn == "vn\\xe9\x00x"


@pytest.mark.parametrize(
    ("tags", "vlans"),
    [
        ([Dot1Q(vlan=100)], (100,)),
        ([Dot1AD(vlan=20), Dot1Q(vlan=300)], (20, 300)),
    ],
)
def test_the_five_tuple_is_read_through_vlan_tags(tags: list[object], vlans: tuple[int]) -> None:
    inner = frame(*tags, IP(src="10.1.0.5", dst="10.2.0.9") / TCP(sport=40000, dport=443))
    packet = decode_contrail(flow_mirrored(inner))
    assert packet.vlans == vlans
    assert (packet.src, packet.dst, packet.proto, packet.sport, packet.dport) == (
        "10.1.0.5",
        "10.2.0.9",
        6,
        40000,
        443,
    )


def test_an_ipv6_frame_gives_its_transport_through_extension_headers() -> None:
    inner = frame(
        IPv6(src="2001:db8::5", dst="2001:db8:1::9")
        / IPv6ExtHdrFragment(offset=0, m=1, id=7)
        / UDP(sport=1000, dport=2000)
        / b"data"
    )
    packet = decode_contrail(flow_mirrored(inner))
    assert (packet.src, packet.dst, packet.proto, packet.sport, packet.dport) == (
        "2001:db8::5",
        "2001:db8:1::9",
        17,
        1000,
        2000,
    )


def test_a_later_ipv6_fragment_has_no_ports() -> None:
    inner = frame(
        IPv6(src="2001:db8::5", dst="2001:db8:1::9")
        / IPv6ExtHdrFragment(offset=100, m=0, id=7, nh=17)
        / b"rest of the datagram"
    )
    packet = decode_contrail(flow_mirrored(inner))
    assert (packet.proto, packet.sport, packet.dport) == (17, None, None)


def test_a_frame_that_is_not_ip_decodes_without_addresses() -> None:
    inner = frame(ARP(psrc="10.1.0.5", pdst="10.1.0.1"))
    packet = decode_contrail(flow_mirrored(inner))
    assert packet.ethertype == 0x0806
    assert (packet.src, packet.dst, packet.proto, packet.sport, packet.dport) == (None,) * 5


def test_ethernet_padding_after_the_ip_packet_is_the_frame_as_sent() -> None:
    inner = frame(IP(src="10.1.0.5", dst="10.2.0.9") / ICMP()) + bytes(18)
    packet = decode_contrail(flow_mirrored(inner))
    assert packet.length == len(inner) == 60
    assert packet.proto == 1


def _ipv4_frame_with(total_length: int) -> bytes:
    inner = bytearray(udp_frame())
    struct.pack_into("!H", inner, 16, total_length)
    return bytes(inner)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", DecodeFailure.NO_END_OF_TLVS),
        (b"\x03", DecodeFailure.NO_END_OF_TLVS),
        (b"\x03\x10short", DecodeFailure.NO_END_OF_TLVS),
        (contrail_header(capture_host=VROUTER)[:-2], DecodeFailure.NO_END_OF_TLVS),
        (b"\x01\x03\x0a\x00\x00\xff\x00" + bytes(60), DecodeFailure.BAD_TLV),
        (b"\x02\x05" + bytes(5) + b"\xff\x00" + bytes(60), DecodeFailure.BAD_TLV),
        (b"\x03\x01a\x03\x01b\xff\x00" + bytes(60), DecodeFailure.BAD_TLV),
        (b"\xff\x01\x00" + bytes(60), DecodeFailure.BAD_TLV),
        (b"\xff\x00", DecodeFailure.NO_MIRRORED_PACKET),
        (b"\xff\x00" + bytes(13), DecodeFailure.TRUNCATED_FRAME),
        (b"\xff\x00" + bytes(12) + b"\x81\x00\x00", DecodeFailure.TRUNCATED_FRAME),
        (
            b"\xff\x00" + bytes(12) + b"\x81\x00\x00\x01" * (MAX_VLAN_TAGS + 1) + bytes(40),
            DecodeFailure.TRUNCATED_FRAME,
        ),
        (
            b"\xff\x00" + bytes(12) + b"\x08\x00" + b"\x45" + bytes(10),
            DecodeFailure.TRUNCATED_INNER_HEADER,
        ),
        (
            b"\xff\x00" + bytes(12) + b"\x08\x00" + b"\x65" + bytes(40),
            DecodeFailure.BAD_INNER_HEADER,
        ),
        (
            b"\xff\x00" + bytes(12) + b"\x08\x00" + b"\x43" + bytes(40),
            DecodeFailure.BAD_INNER_HEADER,
        ),
        (b"\xff\x00" + _ipv4_frame_with(1000), DecodeFailure.INCONSISTENT_LENGTH),
        (b"\xff\x00" + _ipv4_frame_with(10), DecodeFailure.INCONSISTENT_LENGTH),
        (
            b"\xff\x00" + bytes(12) + b"\x86\xdd" + b"\x60" + bytes(20),
            DecodeFailure.TRUNCATED_INNER_HEADER,
        ),
        (
            b"\xff\x00" + bytes(12) + b"\x86\xdd" + b"\x40" + bytes(50),
            DecodeFailure.BAD_INNER_HEADER,
        ),
        (
            b"\xff\x00" + bytes(12) + b"\x86\xdd" + b"\x60\x00\x00\x00\x01\x00" + bytes(34),
            DecodeFailure.INCONSISTENT_LENGTH,
        ),
        (
            # A hop-by-hop header that claims more than the packet holds.
            b"\xff\x00"
            + bytes(12)
            + b"\x86\xdd"
            + b"\x60\x00\x00\x00\x00\x08\x00\x40"
            + bytes(32)
            + b"\x11\x05"
            + bytes(6),
            DecodeFailure.TRUNCATED_INNER_HEADER,
        ),
    ],
)
def test_malformed_input_raises_the_decode_error_with_its_reason(
    payload: bytes, reason: DecodeFailure
) -> None:
    with pytest.raises(DecodeError) as raised:
        decode_contrail(payload)
    assert raised.value.reason is reason
    assert raised.value.mid is None
    assert raised.value.sid is None


@given(
    st.sampled_from([b"", b"\xff\x00", b"\xff\x00" + bytes(12) + b"\x08\x00\x45"]).flatmap(
        lambda prefix: st.binary(max_size=300).map(lambda rest: prefix + rest)
    )
)
def test_any_bytes_decode_or_raise_only_the_decode_error(payload: bytes) -> None:
    # Anything else escaping (IndexError, struct.error...) fails the test.
    with contextlib.suppress(DecodeError):
        decode_contrail(payload)
    looks_like_contrail(payload)


@given(
    host=st.ip_addresses(v=4).map(str) | st.none(),
    flags=st.integers(0, 0xFFFFFFFF) | st.none(),
    source_vn=st.binary(max_size=255) | st.none(),
    dest_vn=st.binary(max_size=255) | st.none(),
    extra=st.lists(st.tuples(st.integers(5, 254), st.binary(max_size=255)), max_size=3),
)
def test_every_header_the_builder_makes_decodes_to_its_values(
    host: str | None,
    flags: int | None,
    source_vn: bytes | None,
    dest_vn: bytes | None,
    extra: list[tuple[int, bytes]],
) -> None:
    inner = udp_frame()
    header = contrail_header(
        capture_host=host, flags=flags, source_vn=source_vn, dest_vn=dest_vn, extra_tlvs=extra
    )
    packet = decode_contrail(header + inner)
    assert packet.capture_host == host
    assert packet.flags == flags
    assert packet.source_vn == (
        None if source_vn is None else source_vn.decode("ascii", "backslashreplace")
    )
    assert packet.dest_vn == (
        None if dest_vn is None else dest_vn.decode("ascii", "backslashreplace")
    )
    assert packet.unknown_tlvs == tuple(extra)
    assert packet.frame == inner


@pytest.mark.parametrize(
    "arguments",
    [
        {"flags": -1},
        {"flags": 1 << 32},
        {"source_vn": "x" * 256},
        {"extra_tlvs": [(255, b"")]},
        {"extra_tlvs": [(-1, b"")]},
        {"capture_host": "not an address"},
    ],
)
def test_the_builder_refuses_what_a_tlv_cannot_hold(arguments: dict[str, object]) -> None:
    with pytest.raises((ValueError, OSError)):
        contrail_header(**arguments)  # type: ignore[arg-type]


def test_detection_tells_contrail_from_jmirror_and_from_ordinary_udp() -> None:
    contrail = flow_mirrored(udp_frame())
    jmirror = struct.pack("!II", 0x300, 0x90) + bytes(
        IP(src="10.1.0.5", dst="10.2.0.9") / UDP(sport=1, dport=2)
    )
    dns = bytes(DNS(qd=DNSQR(qname="example.net")))
    assert looks_like_contrail(contrail)
    assert not looks_like_jmirror(contrail)
    assert looks_like_jmirror(jmirror)
    assert not looks_like_contrail(jmirror)
    assert not looks_like_contrail(dns)
    assert looks_like_contrail(b"\xff\x00" + udp_frame())
    assert not looks_like_contrail(b"\xff\x00" + bytes(60))  # ethertype 0: no frame


def test_detection_wants_the_ipv4_checksum_unless_told_it_was_rewritten() -> None:
    inner = bytearray(udp_frame())
    inner[26:30] = bytes((192, 0, 2, 99))  # the source rewritten, checksum left
    packet = decode_contrail(flow_mirrored(bytes(inner)))
    assert not is_plausible_contrail(packet)
    assert is_plausible_contrail(packet, checksums=False)


def test_a_chain_of_unknown_tlvs_is_not_contrail() -> None:
    header = contrail_header(source_vn="vn", extra_tlvs=[(9, b"a"), (10, b"b")])
    assert not looks_like_contrail(header + udp_frame())


def test_evidence_options_keep_the_header_for_wireshark_and_byte_for_byte(
    tmp_path: Path,
) -> None:
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark is not installed")
    inner = frame(Dot1Q(vlan=7), IP(src="10.1.0.5", dst="10.2.0.9") / UDP(sport=5353, dport=53))
    payloads = [
        flow_mirrored(inner),
        flow_mirrored(inner, flags=PASS_MIRROR),
        contrail_header(source_vn="vn\nwith a line break") + inner,
        contrail_header(extra_tlvs=[(9, b"\x01\x02")]) + inner,
    ]
    capture = pcapng_section_header("test") + pcapng_interface_description(LinkType.ETHERNET)
    for number, payload in enumerate(payloads):
        packet = decode_contrail(payload)
        options = evidence_options(packet, payload)
        capture += enhanced_packet_block(
            0, 1_790_000_000_000_000_000 + number, packet.frame, options
        )
    path = tmp_path / "contrail.pcapng"
    path.write_bytes(capture)

    fields = ["frame.comment", "frame.packet_flags_direction", "vlan.id", "ip.src", "udp.dstport"]
    command = [tshark, "-r", str(path), "-T", "fields", "-E", "separator=|"]
    for name in fields:
        command += ["-e", name]
    shown = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rows = [line.split("|") for line in shown.splitlines()]
    assert rows == [
        [
            f"Juniper header: capture host {VROUTER}; ingress; actions pass, mirror "
            f"(flags 0x400000a0); source VN {SOURCE_VN}; destination VN {DEST_VN}",
            "0x00000001",  # inbound
            "7",
            "10.1.0.5",
            "53",
        ],
        [
            f"Juniper header: capture host {VROUTER}; egress; actions pass, mirror "
            f"(flags 0x000000a0); source VN {SOURCE_VN}; destination VN {DEST_VN}",
            "0x00000002",  # outbound
            "7",
            "10.1.0.5",
            "53",
        ],
        ["Juniper header: source VN vn\\x0awith a line break", "", "7", "10.1.0.5", "53"],
        ["Juniper header: TLV 9 0102", "", "7", "10.1.0.5", "53"],
    ]
    with path.open("rb") as stream:
        assert [data for _, _, _, data in iter_frames(stream)] == [inner] * 4
    # The custom option holds the header exactly: the datagram can be rebuilt.
    for payload in payloads:
        header = payload[: decode_contrail(payload).header_length]
        assert struct.pack("<I", JUNIPER_PEN) + header in capture
