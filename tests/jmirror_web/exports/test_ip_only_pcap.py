"""The IP-only pcap (``pcap-ip``): a session mixing PPP and raw IP files as one pcap of
raw IP packets, the PPP framing removed and PPP control left out; a conversion whose
counts the digest keeps for the manifest."""

from __future__ import annotations

import io
import subprocess
import zipfile
from pathlib import Path

import pytest
from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6
from scapy.utils import rdpcap

from jmirror_web.exports.engine import check
from jmirror_web.exports.request import (
    ExportError,
    ExportFormat,
    ExportRequest,
    PacketFilter,
    SourceFile,
    Window,
)
from receiver.pcap import LinkType, enhanced_packet_block
from receiver.store import LINKTYPE_ETHERNET, LINKTYPE_PPP_HDLC, LINKTYPE_RAW, PcapStore
from tests.jmirror_web.exports.test_engine import (
    KEY_A,
    KEY_B,
    LCP,
    T0,
    TSHARK,
    export,
    frames,
    ipv4,
    ipv6,
    ppp,
    session,
    store_files,
)

PAP_ACK = ppp(0xC023, bytes.fromhex("0201000500"))
IPCP = ppp(0x8021, bytes.fromhex("0101000a0306c0000201"))

# A subscriber session as the demo stores it: PPP control, then IP inside PPP (full
# framing, and address/control omitted with a one-byte protocol), and bare IP beside.
IN_PPP_V4 = ipv4("192.0.2.10", "198.51.100.1", ports=(40000, 53))
IN_PPP_V6 = ipv6("2001:db8::10", "2001:db8::53", ports=(40001, 53))
COMPRESSED_V4 = ipv4("192.0.2.10", "198.51.100.2", ports=(40002, 443), payload=b"x" * 40)
BARE_V4 = ipv4("192.0.2.10", "198.51.100.3", ports=(40003, 80), payload=b"GET /")
BARE_V6 = ipv6("2001:db8::10", "2001:db8::80", ports=(40004, 80))
MIXED = [
    (KEY_A, T0, LCP, LINKTYPE_PPP_HDLC),
    (KEY_A, T0 + 10, PAP_ACK, LINKTYPE_PPP_HDLC),
    (KEY_A, T0 + 20, IPCP, LINKTYPE_PPP_HDLC),
    (KEY_A, T0 + 30, BARE_V4, LINKTYPE_RAW),
    (KEY_A, T0 + 40, ppp(0x0021, IN_PPP_V4), LINKTYPE_PPP_HDLC),
    (KEY_A, T0 + 40, BARE_V6, LINKTYPE_RAW),  # same time: the PPP file sorts first here
    (KEY_A, T0 + 50, ppp(0x0057, IN_PPP_V6), LINKTYPE_PPP_HDLC),
    (KEY_A, T0 + 60, ppp(0x21, COMPRESSED_V4, compressed=True), LINKTYPE_PPP_HDLC),
    (KEY_A, T0 + 70, LCP, LINKTYPE_PPP_HDLC),
]
# The IP payloads in time order (ties as the export breaks them: the earlier file first).
IP_PAYLOADS = [
    (T0 + 30, BARE_V4),
    (T0 + 40, IN_PPP_V4),
    (T0 + 40, BARE_V6),
    (T0 + 50, IN_PPP_V6),
    (T0 + 60, COMPRESSED_V4),
]


def test_a_session_mixing_ppp_and_raw_ip_becomes_one_pcap_of_its_ip_packets(
    tmp_path: Path,
) -> None:
    files = store_files(tmp_path, MIXED)[KEY_A]
    assert {f.linktype for f in files} == {LINKTYPE_PPP_HDLC, LINKTYPE_RAW}
    data, digest, _ = export(ExportRequest([session(files)], ExportFormat.PCAP_IP))

    assert frames(data) == [(t, LINKTYPE_RAW, packet) for t, packet in IP_PAYLOADS]
    assert (digest.packets, digest.ppp_converted, digest.raw_ip_copied) == (5, 3, 2)
    assert digest.ppp_left_out == 4  # LCP twice, PAP, IPCP
    # The digest's times are the first and last packets written, not the control around.
    assert (digest.first_ns, digest.last_ns) == (T0 + 30, T0 + 60)
    # Another reader (scapy) sees raw IP packets with their lengths less the framing.
    read = rdpcap(io.BytesIO(data))
    assert [bytes(packet) for packet in read] == [packet for _, packet in IP_PAYLOADS]
    assert [type(packet) for packet in read] == [IP, IP, IPv6, IPv6, IP]
    # Every record's original length is its captured length (nothing was cut).
    assert [packet.wirelen for packet in read] == [len(packet) for _, packet in IP_PAYLOADS]


def test_the_conversion_keeps_the_window_and_the_filter(tmp_path: Path) -> None:
    files = store_files(tmp_path, MIXED)[KEY_A]
    request = ExportRequest(
        [session(files)],
        ExportFormat.PCAP_IP,
        Window(T0 + 35, T0 + 65),
        PacketFilter(ports=frozenset({53})),
    )
    data, digest, _ = export(request)
    assert frames(data) == [(T0 + 40, LINKTYPE_RAW, IN_PPP_V4), (T0 + 50, LINKTYPE_RAW, IN_PPP_V6)]
    # Control packets the filter dropped were never the conversion's to leave out.
    assert (digest.ppp_converted, digest.raw_ip_copied, digest.ppp_left_out) == (2, 0, 0)


def test_a_zip_of_ip_only_pcaps_converts_each_session(tmp_path: Path) -> None:
    written = [*MIXED, (KEY_B, T0 + 5, ppp(0x0021, BARE_V4), LINKTYPE_PPP_HDLC)]
    found = store_files(tmp_path, written)
    request = ExportRequest(
        [session(found[KEY_A], "S1"), session(found[KEY_B], "S2")],
        ExportFormat.ZIP,
        member_format=ExportFormat.PCAP_IP,
    )
    data, digest, _ = export(request)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.namelist() == ["S1.pcap", "S2.pcap"]
        assert frames(archive.read("S1.pcap")) == [(t, LINKTYPE_RAW, d) for t, d in IP_PAYLOADS]
        assert frames(archive.read("S2.pcap")) == [(T0 + 5, LINKTYPE_RAW, BARE_V4)]
    assert (digest.ppp_converted, digest.raw_ip_copied, digest.ppp_left_out) == (4, 2, 4)
    assert digest.packets == 6


def test_a_plain_pcap_of_mixed_link_types_points_to_pcapng_and_the_conversion(
    tmp_path: Path,
) -> None:
    files = store_files(tmp_path, MIXED)[KEY_A]
    with pytest.raises(ExportError) as refused:
        check(ExportRequest([session(files)], ExportFormat.PCAP))
    assert str(refused.value) == (
        "These packets mix link types (PPP and raw IP), which one pcap file cannot hold: "
        "export as pcapng instead, or as pcap-ip (pcap of the IP packets only, their PPP "
        "framing removed: a conversion, said so in its manifest)."
    )
    with pytest.raises(ExportError, match=r"choose pcapng for the zip's members, or as pcap-ip"):
        check(ExportRequest([session(files)], ExportFormat.ZIP, member_format=ExportFormat.PCAP))


def test_a_conversion_of_a_session_with_no_ip_packet_is_refused(tmp_path: Path) -> None:
    control_only = [(KEY_A, T0 + i, packet, LINKTYPE_PPP_HDLC) for i, packet in enumerate(
        [LCP, PAP_ACK, IPCP, ppp(0x0021, b"")]  # the last: IPv4 protocol, no packet
    )]  # fmt: skip
    files = store_files(tmp_path, control_only)[KEY_A]
    with pytest.raises(ExportError) as refused:
        check(ExportRequest([session(files, "S1")], ExportFormat.PCAP_IP))
    assert str(refused.value) == (
        "There is no IP packet to convert: session S1 holds only PPP control packets (LCP, "
        "PAP, CHAP, IPCP...) in this window. Export as pcap or pcapng to have them as stored."
    )
    # Its IP packets outside the window do not count either.
    mixed = store_files(tmp_path / "mixed", MIXED)[KEY_A]
    with pytest.raises(ExportError, match=r"^There is no IP packet to convert"):
        check(ExportRequest([session(mixed, "S1")], ExportFormat.PCAP_IP, Window(T0, T0 + 25)))


def test_a_conversion_refuses_ethernet_frames_it_does_not_convert(tmp_path: Path) -> None:
    store = PcapStore(tmp_path)
    for key, time_ns, data, linktype in MIXED:
        store.write(key, time_ns, data, linktype)
    frame = bytes(12) + b"\x08\x00" + BARE_V4
    store.write_block(KEY_A, T0 + 80, enhanced_packet_block(0, T0 + 80, frame), LINKTYPE_ETHERNET)
    files = [
        SourceFile(tmp_path / closed.path, closed.linktype, closed.first_ns, closed.last_ns)
        for closed in store.close_all()
    ]
    with pytest.raises(ExportError) as refused:
        check(ExportRequest([session(files, "S1")], ExportFormat.PCAP_IP))
    assert str(refused.value) == (
        "Session S1 holds Ethernet frames, which the IP-only pcap does not convert (it "
        "converts PPP to raw IP): export as pcapng instead."
    )
    # And a plain pcap of them offers pcapng alone.
    with pytest.raises(ExportError, match=r"export as pcapng instead\.$"):
        check(ExportRequest([session(files, "S1")], ExportFormat.PCAP))


@pytest.mark.tshark
def test_tshark_reads_the_conversion_as_raw_ip(tmp_path: Path) -> None:
    if TSHARK is None:
        pytest.skip("tshark is not installed (apt-get install tshark)")
    files = store_files(tmp_path, MIXED)[KEY_A]
    data, _, _ = export(ExportRequest([session(files)], ExportFormat.PCAP_IP))
    path = tmp_path / "converted.pcap"
    path.write_bytes(data)
    result = subprocess.run(
        [TSHARK, "-n", "-r", str(path), "-T", "fields", "-e", "frame.encap_type", "-e",
         "ip.dst", "-e", "ipv6.dst"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert rows == [
        ["7", "198.51.100.3", ""],
        ["7", "198.51.100.1", ""],
        ["7", "", "2001:db8::80"],
        ["7", "", "2001:db8::53"],
        ["7", "198.51.100.2", ""],
    ]
    assert int(LinkType.RAW) == LINKTYPE_RAW
