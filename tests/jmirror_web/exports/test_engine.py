"""The export engine: stored pcap files in, pcap / pcapng / zip out, with its digest."""

from __future__ import annotations

import hashlib
import io
import ipaddress
import shutil
import struct
import subprocess
import threading
import zipfile
from collections.abc import Generator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jmirror_web.exports.engine import check, stream_export
from jmirror_web.exports.reading import read_linktype
from jmirror_web.exports.request import (
    CHUNK_BYTES,
    ExportError,
    ExportFormat,
    ExportRequest,
    PacketFilter,
    SessionSource,
    SourceError,
    SourceFile,
    Window,
    filter_text,
)
from jmirror_web.exports.writers import ExportDigest
from receiver.jmirror import decode_datagram
from receiver.pcap_reader import iter_frames
from receiver.store import LINKTYPE_PPP_HDLC, LINKTYPE_RAW, PcapStore, SessionKey

TSHARK = shutil.which("tshark")
CAPINFOS = shutil.which("capinfos")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")

T0 = 1_700_000_000_123_456_789  # 2023-11-14T22:13:20.123456789Z
SECOND = 1_000_000_000
KEY_A = SessionKey(liid="LIID-1", router="192.0.2.1", mid=0x300, sid=0x90)
KEY_B = SessionKey(liid="LIID-1", router="192.0.2.1", mid=0x300, sid=0x91)

Packet = tuple[int, int, bytes]  # time_ns, linktype, bytes


def addr(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def ipv4(
    src: str = "10.0.0.1",
    dst: str = "10.0.0.2",
    protocol: int = 17,
    ports: tuple[int, int] = (5353, 53),
    payload: bytes = b"",
    fragment_offset: int = 0,
) -> bytes:
    transport = struct.pack("!HH", *ports) + struct.pack("!HH", 8 + len(payload), 0) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(transport), 1, fragment_offset, 64, protocol, 0,
        addr(src), addr(dst),
    )  # fmt: skip
    return header + transport


def ipv6(
    src: str = "2001:db8::1",
    dst: str = "2001:db8::2",
    protocol: int = 17,
    ports: tuple[int, int] = (5353, 53),
    extensions: bytes = b"",
    first_header: int | None = None,
) -> bytes:
    transport = struct.pack("!HHHH", *ports, 8, 0)
    next_header = protocol if first_header is None else first_header
    return (
        struct.pack(
            "!IHBB16s16s",
            0x60000000,
            len(extensions) + len(transport),
            next_header,
            64,
            addr(src),
            addr(dst),
        )
        + extensions
        + transport
    )


def ppp(protocol: int, payload: bytes, *, compressed: bool = False) -> bytes:
    if compressed:  # address/control omitted, one-byte protocol (ACFC + PFC)
        return bytes([protocol]) + payload
    return struct.pack("!BBH", 0xFF, 0x03, protocol) + payload


LCP = ppp(0xC021, bytes.fromhex("0101000a0506deadbeef"))


def store_files(
    root: Path,
    packets: list[tuple[SessionKey, int, bytes, int]],
    rotate_bytes: int = 256 * 2**20,
) -> dict[SessionKey, list[SourceFile]]:
    """Write packets with the real store; the SourceFiles a caller would build from rows."""
    store = PcapStore(root, rotate_bytes=rotate_bytes)
    for key, time_ns, data, linktype in packets:
        store.write(key, time_ns, data, linktype)
    files: dict[SessionKey, list[SourceFile]] = {}
    for closed in store.close_all():
        assert closed.session is not None
        files.setdefault(closed.session, []).append(
            SourceFile(root / closed.path, closed.linktype, closed.first_ns, closed.last_ns)
        )
    return files


def session(files: list[SourceFile], name: str = "LIID-1 session 1") -> SessionSource:
    return SessionSource(name=name, description="mid 0x300 sid 0x90", files=files)


def export(request: ExportRequest) -> tuple[bytes, ExportDigest, list[bytes]]:
    digest = ExportDigest()
    check(request)
    chunks = list(stream_export(request, digest))
    return b"".join(chunks), digest, chunks


def frames(data: bytes) -> list[Packet]:
    return [
        (time_ns, linktype, frame) for _, time_ns, linktype, frame in iter_frames(io.BytesIO(data))
    ]


Options = dict[int, bytes]


def parse_pcapng(
    data: bytes,
) -> tuple[Options, list[tuple[int, Options]], list[tuple[int, int, bytes]]]:
    """SHB options, IDBs (link type, options) and EPBs (interface, time, data), read by
    hand and strictly (every length and trailer checked)."""

    def options(body: bytes) -> dict[int, bytes]:
        found: dict[int, bytes] = {}
        position = 0
        while position < len(body):
            code, length = struct.unpack_from("<HH", body, position)
            if code == 0:
                assert position + 4 == len(body)
                break
            found[code] = body[position + 4 : position + 4 + length]
            position += 4 + length + (-length & 3)
        return found

    shb: dict[int, bytes] = {}
    interfaces: list[tuple[int, dict[int, bytes]]] = []
    packets: list[tuple[int, int, bytes]] = []
    position = 0
    while position < len(data):
        block_type, length = struct.unpack_from("<II", data, position)
        assert length % 4 == 0
        assert struct.unpack_from("<I", data, position + length - 4)[0] == length
        body = data[position + 8 : position + length - 4]
        if block_type == 0x0A0D0D0A:
            magic, major, minor, section = struct.unpack_from("<IHHq", body)
            assert (magic, major, minor, section) == (0x1A2B3C4D, 1, 0, -1)
            shb = options(body[16:])
        elif block_type == 1:
            linktype, _, snaplen = struct.unpack_from("<HHI", body)
            assert snaplen == 262144
            interfaces.append((linktype, options(body[8:])))
        else:
            assert block_type == 6
            interface, high, low, captured, original = struct.unpack_from("<IIIII", body)
            assert captured == original
            assert 20 + captured + (-captured & 3) == len(body)
            packets.append((interface, high << 32 | low, body[20 : 20 + captured]))
        position += length
    assert position == len(data)
    return shb, interfaces, packets


def raw_packets(count: int, start: int = T0, step: int = 1_000) -> list[tuple[int, bytes]]:
    return [(start + i * step, ipv4(payload=bytes([i % 256]) * (i % 300))) for i in range(count)]


# Pcap output


def test_a_pcap_export_is_the_stored_packets_in_order_over_rotated_files(tmp_path):
    packets = raw_packets(3000)
    files = store_files(tmp_path, [(KEY_A, t, d, LINKTYPE_RAW) for t, d in packets], 100_000)[KEY_A]
    assert len(files) > 5
    request = ExportRequest([session(files[::-1])], ExportFormat.PCAP)  # any order in

    data, digest, chunks = export(request)

    assert frames(data) == [(t, LINKTYPE_RAW, d) for t, d in packets]
    assert data[:4] == struct.pack("<I", 0xA1B23C4D)
    assert struct.unpack_from("<I", data, 20)[0] == LINKTYPE_RAW
    assert digest.sha256 == hashlib.sha256(data).hexdigest()
    assert (digest.size, digest.packets) == (len(data), 3000)
    assert (digest.first_ns, digest.last_ns) == (packets[0][0], packets[-1][0])
    assert digest.complete
    assert all(isinstance(chunk, bytes) and 0 < len(chunk) <= CHUNK_BYTES for chunk in chunks)


def test_chunks_never_exceed_the_chunk_size_and_complete_comes_after_the_last(tmp_path):
    packets = [(T0 + i, ipv4(payload=bytes(1400))) for i in range(2500)]  # about 3.6 MB
    files = store_files(tmp_path, [(KEY_A, t, d, LINKTYPE_RAW) for t, d in packets])[KEY_A]
    for form in (ExportFormat.PCAP, ExportFormat.PCAPNG, ExportFormat.ZIP):
        digest = ExportDigest()
        iterator = stream_export(ExportRequest([session(files)], form), digest)
        chunks: list[bytes] = []
        for chunk in iterator:
            assert not digest.complete
            assert digest.size == sum(map(len, chunks)) + len(chunk)
            chunks.append(chunk)
        assert digest.complete
        assert len(chunks) >= 3
        assert all(len(chunk) <= CHUNK_BYTES for chunk in chunks)
        assert all(chunks)
        data = b"".join(chunks)
        assert digest.sha256 == hashlib.sha256(data).hexdigest()
        assert digest.packets == 2500
        if form is ExportFormat.ZIP:
            [member] = zipfile.ZipFile(io.BytesIO(data)).namelist()
            data = zipfile.ZipFile(io.BytesIO(data)).read(member)
        assert frames(data) == [(t, LINKTYPE_RAW, d) for t, d in packets]


def test_a_window_keeps_its_start_and_drops_its_end(tmp_path):
    packets = raw_packets(10, step=SECOND)
    files = store_files(tmp_path, [(KEY_A, t, d, LINKTYPE_RAW) for t, d in packets])[KEY_A]
    window = Window(T0 + 3 * SECOND, T0 + 7 * SECOND)

    data, digest, _ = export(ExportRequest([session(files)], ExportFormat.PCAP, window))

    assert frames(data) == [(t, LINKTYPE_RAW, d) for t, d in packets[3:7]]
    assert (digest.packets, digest.first_ns, digest.last_ns) == (
        4,
        T0 + 3 * SECOND,
        T0 + 6 * SECOND,
    )


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (None, T0 + 2 * SECOND, slice(0, 2)),
        (T0 + 8 * SECOND + 1, None, slice(9, 10)),
        (T0 + SECOND - 1, T0 + SECOND + 1, slice(1, 2)),
    ],
)
def test_a_window_open_on_one_side_or_between_packets(tmp_path, start, end, expected):
    packets = raw_packets(10, step=SECOND)
    files = store_files(tmp_path, [(KEY_A, t, d, LINKTYPE_RAW) for t, d in packets])[KEY_A]
    request = ExportRequest([session(files)], ExportFormat.PCAPNG, Window(start, end))

    data, _, _ = export(request)

    assert frames(data) == [(t, LINKTYPE_RAW, d) for t, d in packets[expected]]


@pytest.mark.parametrize("form", [ExportFormat.PCAP, ExportFormat.PCAPNG])
def test_an_empty_window_gives_a_valid_empty_file(tmp_path, form):
    packets = raw_packets(10, step=SECOND)
    files = store_files(tmp_path, [(KEY_A, t, d, LINKTYPE_RAW) for t, d in packets])[KEY_A]
    window = Window(T0 + SECOND + 1, T0 + 2 * SECOND)  # between two packets

    data, digest, _ = export(ExportRequest([session(files)], form, window))

    assert frames(data) == []
    assert (digest.packets, digest.first_ns, digest.last_ns) == (0, None, None)
    assert digest.complete
    assert digest.size == len(data)
    if form is ExportFormat.PCAP:
        assert data == struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, LINKTYPE_RAW)
    else:
        _, interfaces, epbs = parse_pcapng(data)
        assert (len(interfaces), epbs) == (1, [])


def test_files_outside_the_window_by_their_recorded_times_are_not_opened(tmp_path):
    packets = raw_packets(5, step=SECOND)
    files = store_files(tmp_path, [(KEY_A, t, d, LINKTYPE_RAW) for t, d in packets])[KEY_A]
    gone = [
        SourceFile(tmp_path / "gone-before.pcap", LINKTYPE_RAW, T0 - 9 * SECOND, T0 - SECOND),
        SourceFile(tmp_path / "gone-after.pcap", LINKTYPE_RAW, T0 + 5 * SECOND, T0 + 9 * SECOND),
    ]
    request = ExportRequest([session(gone + files)], ExportFormat.PCAP, Window(T0, T0 + 5 * SECOND))

    _, digest, _ = export(request)

    assert digest.packets == 5
    with pytest.raises(SourceError, match=r"^The stored file gone-before\.pcap is missing\.$"):
        check(ExportRequest([session(gone + files)], ExportFormat.PCAP))


# Pcapng output


def test_a_pcapng_export_has_the_comment_application_interface_and_nanosecond_packets(tmp_path):
    packets = raw_packets(200)
    files = store_files(tmp_path, [(KEY_A, t, d, LINKTYPE_RAW) for t, d in packets], 10_000)[KEY_A]
    comment = "Case 2026/17, warrant W-5 — exported by alice"
    request = ExportRequest([session(files)], ExportFormat.PCAPNG, comment=comment)

    data, digest, _ = export(request)

    shb, interfaces, epbs = parse_pcapng(data)
    assert shb == {1: comment.encode(), 4: b"jmirror-web"}
    assert interfaces == [
        (LINKTYPE_RAW, {2: b"LIID-1 session 1", 3: b"mid 0x300 sid 0x90", 9: b"\x09"})
    ]
    assert epbs == [(0, t, d) for t, d in packets]
    assert frames(data) == [(t, LINKTYPE_RAW, d) for t, d in packets]
    assert digest.sha256 == hashlib.sha256(data).hexdigest()
    assert (digest.size, digest.packets) == (len(data), 200)


def test_overlapping_files_of_two_link_types_merge_by_time_with_an_interface_each(tmp_path):
    written = []
    for i in range(400):
        if i % 3 == 0:
            written.append(
                (KEY_A, T0 + i, ppp(0x0021, ipv4(payload=bytes([i % 256]))), LINKTYPE_PPP_HDLC)
            )
        elif i % 7 == 0:
            written.append((KEY_A, T0 + i, LCP, LINKTYPE_PPP_HDLC))
        else:
            written.append((KEY_A, T0 + i, ipv4(payload=bytes([i % 256])), LINKTYPE_RAW))
    files = store_files(tmp_path, written, rotate_bytes=3_000)[KEY_A]
    assert {f.linktype for f in files} == {LINKTYPE_RAW, LINKTYPE_PPP_HDLC}

    data, digest, _ = export(ExportRequest([session(files)], ExportFormat.PCAPNG))

    _, interfaces, epbs = parse_pcapng(data)
    assert [linktype for linktype, _ in interfaces] == [LINKTYPE_PPP_HDLC, LINKTYPE_RAW]
    interface_of = {LINKTYPE_PPP_HDLC: 0, LINKTYPE_RAW: 1}
    assert epbs == [(interface_of[linktype], t, d) for _, t, d, linktype in written]
    assert frames(data) == [(t, linktype, d) for _, t, d, linktype in written]
    assert digest.packets == 400


def test_a_pcap_export_of_mixed_link_types_is_refused_with_a_hint(tmp_path):
    written = [(KEY_A, T0, ipv4(), LINKTYPE_RAW), (KEY_A, T0 + 1, LCP, LINKTYPE_PPP_HDLC)]
    files = store_files(tmp_path, written)[KEY_A]
    request = ExportRequest([session(files)], ExportFormat.PCAP)
    message = (
        r"^These packets mix link types \(PPP and raw IP\), which one pcap file cannot hold: "
        r"export as pcapng instead, or as pcap-ip \(pcap of the IP packets only, their PPP "
        r"framing removed: a conversion, said so in its manifest\)\.$"
    )

    with pytest.raises(ExportError, match=message):
        check(request)
    with pytest.raises(ExportError, match=message):
        next(stream_export(request, ExportDigest()))
    # A window that keeps only one of the link types is fine.
    [raw] = [f for f in files if f.linktype == LINKTYPE_RAW]
    check(ExportRequest([session(files)], ExportFormat.PCAP, Window(None, T0 + 1)))
    assert raw.first_ns == T0


def test_an_intercept_export_gives_each_session_its_interface_and_keeps_ties_in_session_order(
    tmp_path,
):
    written = []
    for i in range(100):
        written.append((KEY_B, T0 + i * 10, ipv6(ports=(i, 80)), LINKTYPE_RAW))
        written.append(
            (KEY_A, T0 + i * 10 + (5 if i % 2 else 0), ipv4(ports=(i, 80)), LINKTYPE_RAW)
        )
    files = store_files(tmp_path, written)
    sessions = [
        SessionSource("A", "session A", files[KEY_A]),
        SessionSource("B", "session B", files[KEY_B]),
    ]

    data, digest, _ = export(ExportRequest(sessions, ExportFormat.PCAPNG, comment="x"))

    _, interfaces, epbs = parse_pcapng(data)
    assert [(linktype, opts[2]) for linktype, opts in interfaces] == [
        (LINKTYPE_RAW, b"A"),
        (LINKTYPE_RAW, b"B"),
    ]
    expected = sorted(
        ((t, 0 if key == KEY_A else 1, d) for key, t, d, _ in written), key=lambda p: p[:2]
    )
    assert epbs == [(interface, t, d) for t, interface, d in expected]
    assert digest.packets == 200
    # The same packets as one pcap (one link type): merged by time, ties in session order.
    pcap, _, _ = export(ExportRequest(sessions, ExportFormat.PCAP))
    assert frames(pcap) == [(t, LINKTYPE_RAW, d) for t, _, d in expected]


def test_large_interleaved_files_merge_and_window_exactly_across_read_buffers(tmp_path):
    """Files of several MB (many reads each), two link types in bursts, a window that
    starts and ends inside a read: the bulk path and the careful path must agree."""
    written = []
    time_ns = T0
    for burst in range(400):
        linktype = LINKTYPE_RAW if burst % 2 else LINKTYPE_PPP_HDLC
        for i in range(1 + burst * 7 % 23):
            inner = ipv4(ports=(burst, i), payload=bytes(1 + (burst * 31 + i * 17) % 1400))
            data = inner if linktype == LINKTYPE_RAW else ppp(0x0021, inner)
            written.append((KEY_A, time_ns, data, linktype))
            time_ns += 1_000
    files = store_files(tmp_path, written, rotate_bytes=1_000_000)[KEY_A]
    assert sum(f.path.stat().st_size for f in files) > 3 * CHUNK_BYTES
    assert len(files) >= 4
    times = [t for _, t, _, _ in written]
    window = Window(times[len(times) // 5] + 1, times[4 * len(times) // 5])
    expected = [(t, lt, d) for _, t, d, lt in written if window.contains(t)]

    data, digest, _ = export(ExportRequest([session(files)], ExportFormat.PCAPNG, window))

    assert frames(data) == expected
    assert digest.packets == len(expected)
    # One link type alone as pcap: the bulk path with the window's edges inside reads.
    raw = [f for f in files if f.linktype == LINKTYPE_RAW]
    pcap, _, _ = export(ExportRequest([session(raw)], ExportFormat.PCAP, window))
    assert frames(pcap) == [p for p in expected if p[1] == LINKTYPE_RAW]
    whole, _, _ = export(ExportRequest([session(raw)], ExportFormat.PCAP))
    assert frames(whole) == [(t, lt, d) for _, t, d, lt in written if lt == LINKTYPE_RAW]


# Filter


def test_the_filter_matches_addresses_ports_and_protocols_inside_ppp_and_raw_ip(tmp_path):
    hop_by_hop = bytes([17, 0]) + bytes(6)  # next header UDP, 8 bytes
    later_fragment = bytes([17, 0]) + struct.pack("!H", 185 << 3 | 1) + bytes(4)
    raw, framed = LINKTYPE_RAW, LINKTYPE_PPP_HDLC
    candidates = [
        ("v4 udp", ipv4("192.0.2.7", "10.0.0.2", 17, (5000, 53)), raw),
        ("v4 tcp", ipv4("10.0.0.1", "192.0.2.7", 6, (443, 40000)), raw),
        ("v4 other", ipv4("10.0.0.1", "10.0.0.3", 6, (443, 40000)), raw),
        ("v4 later fragment", ipv4("192.0.2.7", "10.0.0.2", 17, (53, 53), b"", 185), raw),
        ("v6 udp", ipv6("2001:db8::7", "2001:db8::2", 17, (5000, 53)), raw),
        ("v6 hop-by-hop udp", ipv6(ports=(53, 9), extensions=hop_by_hop, first_header=0), raw),
        ("v6 later fragment", ipv6(ports=(53, 9), extensions=later_fragment, first_header=44), raw),
        ("ppp v4 tcp", ppp(0x0021, ipv4("192.0.2.7", "10.9.9.9", 6, (22, 53))), framed),
        ("ppp v6 icmp", ppp(0x0057, ipv6("2001:db8::7", "2001:db8::9", 58, (0x8000, 0))), framed),
        ("ppp compressed v4", ppp(0x21, ipv4("192.0.2.7", ports=(1, 53)), compressed=True), framed),
        ("ppp lcp", LCP, framed),
    ]  # fmt: skip
    written = [(KEY_A, T0 + i, data, lt) for i, (_, data, lt) in enumerate(candidates)]
    files = store_files(tmp_path, written)[KEY_A]

    def kept(packet_filter: PacketFilter) -> list[str]:
        request = ExportRequest([session(files)], ExportFormat.PCAPNG, packet_filter=packet_filter)
        data, digest, _ = export(request)
        by_bytes = {data: name for name, data, _ in candidates}
        names = [by_bytes[frame] for _, _, frame in frames(data)]
        assert digest.packets == len(names)
        return names

    v4 = ipaddress.ip_address("192.0.2.7")
    v6 = ipaddress.ip_address("2001:db8::7")
    assert kept(PacketFilter(addresses=frozenset({v4}))) == [
        "v4 udp", "v4 tcp", "v4 later fragment", "ppp v4 tcp", "ppp compressed v4",
    ]  # fmt: skip
    assert kept(PacketFilter(addresses=frozenset({v6}))) == ["v6 udp", "ppp v6 icmp"]
    assert kept(PacketFilter(ports=frozenset({53}))) == [
        "v4 udp", "v6 udp", "v6 hop-by-hop udp", "ppp v4 tcp", "ppp compressed v4",
    ]  # fmt: skip
    assert kept(PacketFilter(protocols=frozenset({6}))) == ["v4 tcp", "v4 other", "ppp v4 tcp"]
    assert kept(PacketFilter(protocols=frozenset({58}))) == ["ppp v6 icmp"]
    assert kept(PacketFilter(protocols=frozenset({17}))) == [
        "v4 udp", "v4 later fragment", "v6 udp", "v6 hop-by-hop udp", "v6 later fragment",
        "ppp compressed v4",
    ]  # fmt: skip
    every = PacketFilter(
        addresses=frozenset({v4}), ports=frozenset({53}), protocols=frozenset({17})
    )
    assert kept(every) == ["v4 udp", "ppp compressed v4"]
    assert kept(PacketFilter(ports=frozenset({9999}))) == []
    assert len(kept(PacketFilter())) == len(candidates)


def test_the_port_filter_matches_every_protocol_whose_ports_the_decoder_shows(tmp_path):
    protocols = {33: "dccp", 132: "sctp", 136: "udp-lite"}
    candidates = [
        (f"{version} {name}", inner(protocol=protocol, ports=(40000, 5060)))
        for protocol, name in protocols.items()
        for version, inner in (("v4", ipv4), ("v6", ipv6))
    ]
    for _, data in candidates:
        shown = decode_datagram(struct.pack("!II", 0x300, 0x90) + data)
        assert (shown.sport, shown.dport) == (40000, 5060)
    written = [(KEY_A, T0 + i, data, LINKTYPE_RAW) for i, (_, data) in enumerate(candidates)]
    files = store_files(tmp_path, written)[KEY_A]
    request = ExportRequest(
        [session(files)], ExportFormat.PCAPNG, packet_filter=PacketFilter(ports=frozenset({5060}))
    )

    data, digest, _ = export(request)

    by_bytes = {data: name for name, data in candidates}
    assert [by_bytes[frame] for _, _, frame in frames(data)] == [name for name, _ in candidates]
    assert digest.packets == len(candidates)


# Zip


def test_a_zip_export_has_a_member_per_session_with_its_own_digest(tmp_path):
    written = [(KEY_A, T0 + i, ipv4(ports=(i, 1)), LINKTYPE_RAW) for i in range(50)]
    written += [
        (KEY_B, T0 + i, ppp(0x0021, ipv4(ports=(i, 2))), LINKTYPE_PPP_HDLC) for i in range(30)
    ]
    files = store_files(tmp_path, written, rotate_bytes=1_000)
    sessions = [
        SessionSource("LIID-1 / sid 0x90", "a", files[KEY_A]),
        SessionSource("../LIID-1 / sid 0x91", "b", files[KEY_B]),
    ]
    for member_format, names in [
        (ExportFormat.PCAPNG, ["LIID-1___sid_0x90.pcapng", "_LIID-1___sid_0x91.pcapng"]),
        (ExportFormat.PCAP, ["LIID-1___sid_0x90.pcap", "_LIID-1___sid_0x91.pcap"]),
    ]:
        request = ExportRequest(
            sessions, ExportFormat.ZIP, comment="c", member_format=member_format
        )

        data, digest, _ = export(request)

        archive = zipfile.ZipFile(io.BytesIO(data))
        assert archive.testzip() is None
        assert archive.namelist() == names
        assert all(info.compress_type == zipfile.ZIP_STORED for info in archive.infolist())
        first, second = (archive.read(name) for name in names)
        assert frames(first) == [(t, lt, d) for key, t, d, lt in written if key == KEY_A]
        assert frames(second) == [(t, lt, d) for key, t, d, lt in written if key == KEY_B]
        assert digest.members == {
            names[0]: (hashlib.sha256(first).hexdigest(), len(first), 50),
            names[1]: (hashlib.sha256(second).hexdigest(), len(second), 30),
        }
        assert digest.sha256 == hashlib.sha256(data).hexdigest()
        assert (digest.size, digest.packets) == (len(data), 80)
        assert (digest.first_ns, digest.last_ns) == (T0, T0 + 49)
        assert archive.getinfo(names[0]).date_time == (2023, 11, 14, 22, 13, 20)


def test_a_zip_of_pcap_members_refuses_a_session_that_mixes_link_types(tmp_path):
    written = [(KEY_A, T0, ipv4(), LINKTYPE_RAW), (KEY_A, T0 + 1, LCP, LINKTYPE_PPP_HDLC)]
    files = store_files(tmp_path, written)[KEY_A]
    request = ExportRequest(
        [session(files, "S1")], ExportFormat.ZIP, member_format=ExportFormat.PCAP
    )
    with pytest.raises(ExportError, match=r"^Session S1 mixes link types \(PPP and raw IP\)"):
        check(request)
    with pytest.raises(
        ExportError, match=r"^A zip export holds pcap, pcapng or pcap-ip files, not zip"
    ):
        check(ExportRequest([session(files)], ExportFormat.ZIP, member_format=ExportFormat.ZIP))


# Errors


def test_an_export_without_sessions_is_refused():
    with pytest.raises(
        ExportError, match=r"^There is nothing to export: choose at least one session\.$"
    ):
        check(ExportRequest([], ExportFormat.PCAPNG))


def test_a_missing_or_foreign_file_is_a_source_error_before_anything_is_yielded(tmp_path):
    (tmp_path / "usec.pcap").write_bytes(
        struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) + bytes(32)
    )
    (tmp_path / "short.pcap").write_bytes(b"\x4d\x3c\xb2\xa1")
    cases = [
        ("missing.pcap", r"^The stored file missing\.pcap is missing\.$"),
        (
            "usec.pcap",
            r"^The stored file usec\.pcap is not a nanosecond pcap file \(it starts with "
            r"0xd4c3b2a1\)\.$",
        ),
        ("short.pcap", r"^The stored file short\.pcap is shorter than a pcap file header\.$"),
    ]  # fmt: skip
    for name, message in cases:
        request = ExportRequest([session([SourceFile(tmp_path / name, 0)])], ExportFormat.PCAP)
        with pytest.raises(SourceError, match=message):
            check(request)
        digest = ExportDigest()
        with pytest.raises(SourceError, match=message):
            next(stream_export(request, digest))
        assert digest.size == 0
        with pytest.raises(SourceError, match=message):
            read_linktype(tmp_path / name)


def test_a_file_cut_inside_a_record_raises_after_yielding_the_good_part(tmp_path):
    packets = [(T0 + i, ipv4(payload=bytes(1000))) for i in range(3000)]  # about 3 MB
    [file] = store_files(tmp_path, [(KEY_A, t, d, LINKTYPE_RAW) for t, d in packets])[KEY_A]
    content = file.path.read_bytes()
    record = 16 + len(packets[0][1])
    cut = 24 + 2500 * record + 100
    file.path.write_bytes(content[:cut])
    digest = ExportDigest()
    received: list[bytes] = []

    chunks = stream_export(ExportRequest([session([file])], ExportFormat.PCAP), digest)
    with pytest.raises(SourceError) as raised:
        received.extend(chunks)

    assert str(raised.value) == (
        f"The stored file {file.path.name} is truncated: it ends inside the record at byte "
        f"{24 + 2500 * record}."
    )
    assert str(tmp_path) not in str(raised.value)
    assert not digest.complete
    assert digest.size == sum(map(len, received)) > 0
    assert digest.sha256 == hashlib.sha256(b"".join(received)).hexdigest()


def test_a_garbage_record_header_in_the_middle_is_a_source_error_with_its_offset(tmp_path):
    packets = raw_packets(20)
    [file] = store_files(tmp_path, [(KEY_A, t, d, LINKTYPE_RAW) for t, d in packets])[KEY_A]
    content = bytearray(file.path.read_bytes())
    offset = 24 + sum(16 + len(d) for _, d in packets[:7])
    content[offset + 8 : offset + 12] = struct.pack("<I", 1 << 20)  # included length
    file.path.write_bytes(content)

    for form in ExportFormat:
        with pytest.raises(
            SourceError,
            match=rf"^The stored file {file.path.name} is corrupt at byte {offset}: its record "
            r"header is not valid\.$",
        ):
            b"".join(stream_export(ExportRequest([session([file])], form), ExportDigest()))


def test_a_file_being_written_is_read_up_to_its_last_whole_record(tmp_path):
    packets = raw_packets(20)
    [file] = store_files(tmp_path, [(KEY_A, t, d, LINKTYPE_RAW) for t, d in packets])[KEY_A]
    content = file.path.read_bytes()
    part = file.path.with_name(file.path.name + ".part")
    part.write_bytes(content + content[24:40])  # a record header, its data not yet written
    file.path.unlink()

    # The row names the final path; the engine finds the .part.
    data, digest, _ = export(ExportRequest([session([file])], ExportFormat.PCAP))
    assert frames(data) == [(t, LINKTYPE_RAW, d) for t, d in packets]
    assert digest.packets == 20
    assert read_linktype(file.path) == LINKTYPE_RAW


def test_read_linktype_reads_the_header(tmp_path):
    written = [(KEY_A, T0, LCP, LINKTYPE_PPP_HDLC)]
    [file] = store_files(tmp_path, written)[KEY_A]
    assert read_linktype(file.path) == LINKTYPE_PPP_HDLC


# Other tools


@needs_tshark
@pytest.mark.tshark
@pytest.mark.parametrize("form", [ExportFormat.PCAP, ExportFormat.PCAPNG])
def test_tshark_reads_the_export_with_every_packet(tmp_path, form):
    assert TSHARK is not None
    written = [(KEY_A, T0 + i * 1_001, ipv4(ports=(i, 53)), LINKTYPE_RAW) for i in range(300)]
    files = store_files(tmp_path, written, rotate_bytes=5_000)[KEY_A]
    data, _, _ = export(
        ExportRequest([session(files)], form, Window(T0, T0 + 200 * 1_001), comment="Case 17")
    )
    path = tmp_path / f"export.{form}"
    path.write_bytes(data)

    result = subprocess.run(
        [TSHARK, "-r", str(path), "-T", "fields", "-e", "frame.time_epoch", "-e", "udp.srcport"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip

    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert len(rows) == 200
    assert rows[199] == ["1700000000.123655988", "199"]
    assert "cut short" not in result.stderr
    if form is ExportFormat.PCAPNG and CAPINFOS is not None:
        info = subprocess.run([CAPINFOS, str(path)], capture_output=True, text=True, check=True)
        assert "Capture comment:     Case 17" in info.stdout
        assert "jmirror-web" in info.stdout
        assert "Number of packets:   200" in info.stdout


# Against a reference


@st.composite
def scenarios(draw):
    count = draw(st.integers(0, 40))
    packets = []
    seen = set()
    for i in range(count):
        time_ns = T0 + draw(st.integers(0, 50)) * 1000  # equal times are likely
        src = draw(st.sampled_from(["10.0.0.1", "10.0.0.2", "2001:db8::1"]))
        protocol = draw(st.sampled_from([6, 17, 1]))
        port = draw(st.sampled_from([53, 80, 443]))
        key = draw(st.sampled_from([KEY_A, KEY_B]))
        framed = draw(st.booleans())
        if (key, time_ns) in seen:
            # A session's two files (raw IP, PPP) do not record how equal times interleaved.
            continue
        seen.add((key, time_ns))
        if ":" in src:
            inner = ipv6(src, "2001:db8::ff", 58 if protocol == 1 else protocol, (port, 9999))
        else:
            inner = ipv4(src, "10.0.0.254", protocol, (port, 9999), payload=bytes([i]))
        data = ppp(0x0057 if ":" in src else 0x0021, inner) if framed else inner
        packets.append((key, time_ns, data, LINKTYPE_PPP_HDLC if framed else LINKTYPE_RAW))
    packets.sort(key=lambda p: p[1])  # the store receives in time order
    start = draw(st.none() | st.integers(0, 50).map(lambda n: T0 + n * 1000))
    end = draw(st.none() | st.integers(0, 50).map(lambda n: T0 + n * 1000))
    packet_filter = PacketFilter(
        addresses=frozenset(
            draw(st.sets(st.sampled_from(["10.0.0.1", "2001:db8::1"])).map(
                lambda s: {ipaddress.ip_address(a) for a in s}))
        ),
        ports=frozenset(draw(st.sets(st.sampled_from([53, 80])))),
        protocols=frozenset(draw(st.sets(st.sampled_from([6, 17])))),
    )  # fmt: skip
    return packets, Window(start, end), packet_filter


def reference_keeps(data: bytes, linktype: int, packet_filter: PacketFilter) -> bool:
    """A plain reading of the test packets above (no fragments or extension headers)."""
    if packet_filter.empty:
        return True
    if linktype == LINKTYPE_PPP_HDLC:
        data = data[4:]
    if data[0] >> 4 == 4:
        protocol, src, dst, ports_at = data[9], data[12:16], data[16:20], 20
    else:
        protocol, src, dst, ports_at = data[6], data[8:24], data[24:40], 40
    ports = struct.unpack_from("!HH", data, ports_at) if protocol in (6, 17) else ()
    addresses = {a.packed for a in packet_filter.addresses}
    return (
        (not packet_filter.protocols or protocol in packet_filter.protocols)
        and (not addresses or src in addresses or dst in addresses)
        and (not packet_filter.ports or any(p in packet_filter.ports for p in ports))
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(scenarios())
def test_exports_match_a_naive_reference_for_any_packets_window_and_filter(
    tmp_path_factory, scenario
):
    packets, window, packet_filter = scenario
    root = tmp_path_factory.mktemp("store")
    files = store_files(root, packets, rotate_bytes=300)
    sessions = [SessionSource(str(key.sid), "", files.get(key, [])) for key in (KEY_A, KEY_B)]
    order = {KEY_A: 0, KEY_B: 1}
    expected = sorted(
        (
            (t, order[key], linktype, data)
            for key, t, data, linktype in packets
            if window.contains(t) and reference_keeps(data, linktype, packet_filter)
        ),
        key=lambda p: p[:2],
    )
    request = ExportRequest(sessions, ExportFormat.PCAPNG, window, packet_filter)

    data, digest, _ = export(request)

    assert frames(data) == [(t, linktype, d) for t, _, linktype, d in expected]
    assert digest.packets == len(expected)
    assert digest.first_ns == (expected[0][0] if expected else None)
    assert digest.last_ns == (expected[-1][0] if expected else None)
    assert digest.sha256 == hashlib.sha256(data).hexdigest()


def test_an_export_closed_early_stops_its_hashing_thread_and_keeps_a_digest(tmp_path):
    packets = [(T0 + i, ipv4(payload=bytes(1400))) for i in range(2000)]
    files = store_files(tmp_path, [(KEY_A, t, d, LINKTYPE_RAW) for t, d in packets])[KEY_A]
    digest = ExportDigest()
    iterator = stream_export(ExportRequest([session(files)], ExportFormat.PCAPNG), digest)
    assert isinstance(iterator, Generator)  # what Django's StreamingHttpResponse closes
    first = next(iterator)
    assert any(thread.name.startswith("export-sha256") for thread in threading.enumerate())

    iterator.close()

    assert not any(thread.name.startswith("export-sha256") for thread in threading.enumerate())
    assert digest.sha256 == hashlib.sha256(first).hexdigest()
    assert digest.size == len(first)
    assert not digest.complete


def test_zip_members_of_sessions_with_the_same_name_get_distinct_names(tmp_path):
    written = [(KEY_A, T0, ipv4(), LINKTYPE_RAW), (KEY_B, T0 + 1, ipv6(), LINKTYPE_RAW)]
    files = store_files(tmp_path, written)
    sessions = [session(files[KEY_A], "LIID-1"), session(files[KEY_B], "LIID-1")]

    data, digest, _ = export(ExportRequest(sessions, ExportFormat.ZIP))

    assert zipfile.ZipFile(io.BytesIO(data)).namelist() == ["LIID-1.pcapng", "LIID-1-2.pcapng"]
    assert list(digest.members) == ["LIID-1.pcapng", "LIID-1-2.pcapng"]


def test_a_window_that_ends_before_it_starts_is_empty(tmp_path):
    files = store_files(tmp_path, [(KEY_A, T0, ipv4(), LINKTYPE_RAW)])[KEY_A]
    window = Window(T0 + 1, T0)

    data, digest, _ = export(ExportRequest([session(files)], ExportFormat.PCAP, window))

    assert (len(data), digest.packets) == (24, 0)


def test_formats_given_as_plain_strings_work_as_the_enum(tmp_path):
    written = [(KEY_A, T0 + i, ipv4(ports=(i, 1)), LINKTYPE_RAW) for i in range(5)]
    files = store_files(tmp_path, written)[KEY_A]
    request = ExportRequest([session(files, "S")], "zip", member_format="pcap")  # type: ignore[arg-type]

    data, digest, _ = export(request)

    assert zipfile.ZipFile(io.BytesIO(data)).namelist() == ["S.pcap"]
    assert digest.packets == 5
    with pytest.raises(ExportError, match=r"^Unknown export format 'tar': choose pcap, pcapng"):
        check(ExportRequest([session(files)], "tar"))  # type: ignore[arg-type]


@pytest.mark.skipif(shutil.which("unzip") is None, reason="unzip is not installed")
def test_info_zip_unzip_accepts_the_streamed_zip64_archive(tmp_path):
    written = [(KEY_A, T0 + i, ipv4(ports=(i, 1)), LINKTYPE_RAW) for i in range(20)]
    written += [(KEY_B, T0 + i, ppp(0x0021, ipv4()), LINKTYPE_PPP_HDLC) for i in range(20)]
    files = store_files(tmp_path, written)
    sessions = [session(files[KEY_A], "first"), session(files[KEY_B], "second")]
    data, _, _ = export(ExportRequest(sessions, ExportFormat.ZIP))
    path = tmp_path / "export.zip"
    path.write_bytes(data)

    result = subprocess.run(["unzip", "-t", str(path)], capture_output=True, text=True)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "testing: first.pcapng" in result.stdout
    assert "testing: second.pcapng" in result.stdout
    assert "No errors detected" in result.stdout


def test_a_recorded_filter_reads_as_words() -> None:
    assert filter_text({"addresses": [], "ports": [], "protocols": []}) == "no filter"
    assert filter_text({}) == "no filter"
    assert (
        filter_text({"addresses": ["10.0.0.7", "2001:db8::1"], "ports": [], "protocols": [6]})
        == "addresses 10.0.0.7, 2001:db8::1; protocols 6 (tcp)"
    )
