"""Tests for receiver.pcap_reader: pcap/pcapng records, link layers, outer IP/UDP, reassembly.

Captures are built here byte by byte, so every field is under the test's control; tshark,
where installed, checks that the builders and the reader agree with Wireshark.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import socket
import struct
import subprocess
import tracemalloc
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver.pcap_reader import (
    MAX_FRAME,
    MAX_PENDING_DATAGRAMS,
    SKIP_REASONS,
    CaptureError,
    iter_frames,
    iter_udp_datagrams,
)
from tests.receiver.router_captures import Capture, capture_params, present_real_captures

TSHARK = shutil.which("tshark")

ROUTER = "192.0.2.1"
MEDIATION = "198.51.100.10"
ROUTER6 = "2001:db8::1"
MEDIATION6 = "2001:db8:0:1::a"
T0 = 1_700_000_000_000_000_000  # a capture time in ns, a whole second
MAC = bytes.fromhex("00005e005301 00005e005302")

needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")


# Packets


def udp(payload: bytes = b"jmirror", sport: int = 6502, dport: int = 6502) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def ipv4(
    payload: bytes,
    src: str = ROUTER,
    dst: str = MEDIATION,
    *,
    protocol: int = 17,
    ident: int = 1,
    offset: int = 0,
    more: bool = False,
    options: bytes = b"",
) -> bytes:
    header_length = 20 + len(options)
    flags_offset = (0x2000 if more else 0) | offset // 8
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x40 | header_length // 4,
        0,
        header_length + len(payload),
        ident,
        flags_offset,
        255,
        protocol,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    return header + options + payload


def ipv6(
    payload: bytes,
    src: str = ROUTER6,
    dst: str = MEDIATION6,
    *,
    next_header: int = 17,
    extensions: Sequence[tuple[int, bytes]] = (),
) -> bytes:
    """``extensions``: (type, body) pairs in order; each body is padded to the header's unit."""
    chain = b""
    types = [kind for kind, _ in extensions] + [next_header]
    for (kind, body), following in zip(extensions, types[1:], strict=True):
        if kind == 44:
            chain += bytes([following, 0]) + body
        elif kind == 51:
            body += bytes(-(len(body) + 2) % 4)
            chain += bytes([following, (len(body) + 2) // 4 - 2]) + body
        else:
            body += bytes(-(len(body) + 2) % 8)
            chain += bytes([following, (len(body) + 2) // 8 - 1]) + body
    header = struct.pack(
        "!IHBB16s16s",
        0x6000_0000 | 0x12345,
        len(chain) + len(payload),
        types[0],
        64,
        socket.inet_pton(socket.AF_INET6, src),
        socket.inet_pton(socket.AF_INET6, dst),
    )
    return header + chain + payload


def ether(
    packet: bytes, ethertype: int = 0x0800, tags: Iterable[int] = (), fcs: bool = False
) -> bytes:
    """An Ethernet frame padded to the 60-byte minimum, as captured on the wire."""
    frame = MAC
    for tag in tags:
        frame += struct.pack("!HH", tag, 100)
    frame += struct.pack("!H", ethertype) + packet
    frame += bytes(max(0, 60 - len(frame)))
    if fcs:
        frame += b"\xde\xad\xbe\xef"
    return frame


def ipv4_fragments(
    payload: bytes, size: int, ident: int = 7, src: str = ROUTER, protocol: int = 17
) -> list[bytes]:
    """An IPv4 datagram's payload cut the way a router cuts it: ``size`` bytes per fragment."""
    return [
        ipv4(
            payload[start : start + size],
            src,
            protocol=protocol,
            ident=ident,
            offset=start,
            more=start + size < len(payload),
        )
        for start in range(0, len(payload), size)
    ]


def ipv6_fragments(payload: bytes, size: int, ident: int = 9, next_header: int = 17) -> list[bytes]:
    pieces = []
    for start in range(0, len(payload), size):
        more = start + size < len(payload)
        header = struct.pack("!HI", start | more, ident)
        pieces.append(
            ipv6(payload[start : start + size], next_header=next_header, extensions=[(44, header)])
        )
    return pieces


# Capture files


def pcap(
    frames: Iterable[bytes | tuple[int, bytes]],
    linktype: int = 1,
    *,
    nano: bool = False,
    order: str = "<",
    snaplen: int = 65535,
) -> bytes:
    """A pcap file; a frame without a time is captured 1 ms after the previous one."""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    time_ns = T0
    for item in frames:
        if isinstance(item, tuple):
            time_ns, frame = item
        else:
            time_ns, frame = time_ns + 1_000_000, item
        seconds, fraction = divmod(time_ns, 1_000_000_000)
        if not nano:
            fraction //= 1000
        out.append(struct.pack(order + "IIII", seconds, fraction, len(frame), len(frame)) + frame)
    return b"".join(out)


def block(order: str, block_type: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)
    length = 12 + len(body)
    return struct.pack(order + "II", block_type, length) + body + struct.pack(order + "I", length)


def option(order: str, code: int, value: bytes) -> bytes:
    return struct.pack(order + "HH", code, len(value)) + value + bytes(-len(value) % 4)


def section_header(order: str = "<", major: int = 1) -> bytes:
    return block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, major, 0, -1))


def interface(
    order: str = "<",
    linktype: int = 1,
    tsresol: int | None = None,
    tsoffset: int | None = None,
    snaplen: int = 0,
) -> bytes:
    options = b""
    if tsresol is not None:
        options += option(order, 9, bytes([tsresol]))
    if tsoffset is not None:
        options += option(order, 14, struct.pack(order + "q", tsoffset))
    if options:
        options += option(order, 0, b"")
    return block(order, 1, struct.pack(order + "HHI", linktype, 0, snaplen) + options)


def enhanced_packet(order: str, interface_id: int, ticks: int, frame: bytes) -> bytes:
    header = struct.pack(
        order + "IIIII", interface_id, ticks >> 32, ticks & 0xFFFFFFFF, len(frame), len(frame)
    )
    return block(order, 6, header + frame)


def simple_packet(order: str, frame: bytes, original_length: int | None = None) -> bytes:
    length = len(frame) if original_length is None else original_length
    return block(order, 3, struct.pack(order + "I", length) + frame)


def obsolete_packet(order: str, interface_id: int, ticks: int, frame: bytes) -> bytes:
    header = struct.pack(
        order + "HHIIII", interface_id, 0, ticks >> 32, ticks & 0xFFFFFFFF, len(frame), len(frame)
    )
    return block(order, 2, header + frame)


def frames_of(data: bytes) -> list[tuple[int, int, int, bytes]]:
    return list(iter_frames(io.BytesIO(data)))


def datagrams_of(
    data: bytes | Iterable[tuple[int, int, int, bytes]],
) -> tuple[list[tuple[int, int, str, str, int, int, bytes]], Counter[str]]:
    skipped: Counter[str] = Counter()
    frames = iter_frames(io.BytesIO(data)) if isinstance(data, bytes) else data
    return list(iter_udp_datagrams(frames, skipped)), skipped


def frames_counted(skipped: Counter[str]) -> int:
    """The frames behind ``skipped``: every reason counts frames but one, which counts
    datagrams."""
    return sum(count for reason, count in skipped.items() if reason != "fragments_incomplete")


def epoch_ns(text: str) -> int:
    seconds, _, fraction = text.partition(".")
    return int(seconds) * 1_000_000_000 + int(fraction.ljust(9, "0")[:9])


def tshark_rows(path: Path, *fields: str) -> list[list[str]]:
    """tshark's fields per frame; a field a frame has several of keeps the outer (first)."""
    assert TSHARK is not None
    command = [TSHARK, "-r", str(path), "-T", "fields"]
    for field in fields:
        command += ["-e", field]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return [
        [value.split(",")[0] for value in line.split("\t")] for line in result.stdout.splitlines()
    ]


# pcap


@pytest.mark.parametrize("order", ["<", ">"], ids=["little_endian", "big_endian"])
def test_it_reads_a_microsecond_pcap_in_either_byte_order(order: str):
    data = pcap([(T0 + 123_456_000, b"one"), (T0 + 2_000_001_000, b"two")], 228, order=order)

    assert frames_of(data) == [
        (1, T0 + 123_456_000, 228, b"one"),
        (2, T0 + 2_000_001_000, 228, b"two"),
    ]


@pytest.mark.parametrize("order", ["<", ">"], ids=["little_endian", "big_endian"])
def test_it_reads_a_nanosecond_pcap_in_either_byte_order(order: str):
    data = pcap([(T0 + 123_456_789, b"one"), (T0 + 999_999_999, b"")], 1, nano=True, order=order)

    assert frames_of(data) == [(1, T0 + 123_456_789, 1, b"one"), (2, T0 + 999_999_999, 1, b"")]


def test_it_reads_the_link_type_without_the_fcs_flags_of_the_upper_bits():
    data = pcap([b"frame"], 0x1000_0000 | 0x0400_0000 | 1)

    assert frames_of(data)[0][2] == 1


def test_a_pcap_with_a_header_and_no_records_has_no_frames():
    assert frames_of(pcap([])) == []


def test_it_accepts_a_record_of_256_kib_and_rejects_a_larger_one():
    assert len(frames_of(pcap([bytes(MAX_FRAME)]))[0][3]) == MAX_FRAME

    with pytest.raises(CaptureError) as error:
        frames_of(pcap([b"ok", bytes(MAX_FRAME + 1)]))

    assert str(error.value) == "record length 262145 exceeds 262144 at byte 42 after frame 1"


def test_it_reads_a_stream_that_returns_a_few_bytes_at_a_time():
    class Trickle(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            chunk = self.data.read(min(len(buffer), 7))
            buffer[: len(chunk)] = chunk
            return len(chunk)

    frames = [ether(ipv4(udp(bytes([n % 256]) * n))) for n in range(0, 300, 37)]
    data = pcap(frames)

    read = list(iter_frames(Trickle(data)))  # type: ignore[arg-type]

    assert [frame for _, _, _, frame in read] == frames


def test_it_reads_records_across_its_read_chunks():
    frames = [ether(ipv4(udp(bytes([n % 256]) * (n % 1400)))) for n in range(3000)]

    read = frames_of(pcap(frames))

    assert [number for number, _, _, _ in read] == list(range(1, 3001))
    assert [frame for _, _, _, frame in read] == frames


# pcapng


def test_it_reads_pcapng_sections_of_either_byte_order_with_interfaces_of_their_own():
    first = ether(ipv4(udp(b"1")))
    second = ipv4(udp(b"2"))
    third = ipv6(udp(b"3"))
    fourth = ether(ipv6(udp(b"4")), 0x86DD)
    data = (
        section_header("<")
        + interface("<", 1, tsresol=9)
        + interface("<", 101, tsresol=0x80 | 20)
        + enhanced_packet("<", 1, 1_700_000_000 * 2**20 + 2**19, second)
        + enhanced_packet("<", 0, T0 + 5, first)
        + section_header(">")
        + interface(">", 229, tsresol=3, tsoffset=-100)
        + interface(">", 1)
        + enhanced_packet(">", 1, T0 // 1000 + 7, fourth)
        + enhanced_packet(">", 0, T0 // 1_000_000 + 42, third)
    )

    assert frames_of(data) == [
        (1, T0 + 500_000_000, 101, second),
        (2, T0 + 5, 1, first),
        (3, T0 + 7000, 1, fourth),
        (4, T0 + 42_000_000 - 100_000_000_000, 229, third),
    ]


@pytest.mark.parametrize(
    ("tsresol", "ticks", "expected"),
    [
        (6, 1_700_000_000_123_456, T0 + 123_456_000),
        (9, T0 + 1, T0 + 1),
        (12, 1000 * 10**12 + 1999, 1000 * 10**9 + 1),
        (0, 1_700_000_000, T0),
        (0x80 | 20, 1_700_000_000 * 2**20 + 1, T0 + 953),  # 1e9 / 2**20 = 953.67 ns
        (0x80 | 30, 1_700_000_000 * 2**30 + 2**29 + 2**28, T0 + 750_000_000),
        (0x80 | 0, 1_700_000_000, T0),
    ],
    ids=["micro", "nano", "pico", "seconds", "2^-20", "2^-30", "2^0"],
)
def test_it_converts_every_timestamp_resolution_to_nanoseconds(
    tsresol: int, ticks: int, expected: int
):
    data = section_header() + interface(tsresol=tsresol) + enhanced_packet("<", 0, ticks, b"x")

    assert frames_of(data)[0][1] == expected


def test_interfaces_without_a_resolution_count_microseconds():
    data = section_header() + interface() + enhanced_packet("<", 0, 1_700_000_000_000_001, b"x")

    assert frames_of(data)[0][1] == T0 + 1000


def test_it_applies_the_interface_timestamp_offset():
    data = (
        section_header()
        + interface(tsresol=9, tsoffset=1_000_000_000)
        + enhanced_packet("<", 0, 700_000_000_000_000_001, b"x")
    )

    assert frames_of(data)[0][1] == T0 + 1


def test_a_new_section_forgets_the_interfaces_of_the_one_before():
    data = (
        section_header()
        + interface(linktype=101)
        + interface(linktype=1)
        + section_header()
        + interface(linktype=228)
        + enhanced_packet("<", 0, 0, b"x")
        + enhanced_packet("<", 1, 0, b"y")
    )

    frames = iter_frames(io.BytesIO(data))

    assert next(frames)[2] == 228
    with pytest.raises(CaptureError) as error:
        next(frames)
    assert str(error.value) == "pcapng packet on interface 1 of 1 at byte 152 after frame 1"


def test_simple_packet_blocks_belong_to_interface_zero_and_have_no_time():
    frame = ether(ipv4(udp(b"simple")))
    data = (
        section_header()
        + interface(linktype=1, snaplen=50)
        + simple_packet("<", frame[:50], original_length=len(frame))
        + simple_packet("<", b"abc")
    )

    assert frames_of(data) == [(1, 0, 1, frame[:50]), (2, 0, 1, b"abc")]


def test_packets_of_interleaved_interfaces_and_simple_packets_keep_their_link_types():
    data = (
        section_header()
        + interface(linktype=101, tsresol=9)
        + interface(linktype=1, tsresol=9, tsoffset=1)
        + enhanced_packet("<", 1, 5, b"a")
        + simple_packet("<", b"b")
        + enhanced_packet("<", 1, 6, b"c")
        + enhanced_packet("<", 0, 7, b"d")
        + interface(linktype=113)
        + enhanced_packet("<", 1, 8, b"e")
        + enhanced_packet("<", 2, 9, b"f")
    )

    assert frames_of(data) == [
        (1, 1_000_000_005, 1, b"a"),
        (2, 0, 101, b"b"),
        (3, 1_000_000_006, 1, b"c"),
        (4, 7, 101, b"d"),
        (5, 1_000_000_008, 1, b"e"),
        (6, 9000, 113, b"f"),
    ]


def test_it_reads_the_obsolete_packet_block():
    data = (
        section_header(">")
        + interface(">", 101)
        + interface(">", 1, tsresol=9)
        + obsolete_packet(">", 1, T0, b"old")
    )

    assert frames_of(data) == [(1, T0, 1, b"old")]


def test_it_skips_the_blocks_it_does_not_need():
    name_resolution = block("<", 4, struct.pack("<HH4s", 1, 4 + 8, bytes(4)) + b"router\x00\x00")
    statistics = block("<", 5, struct.pack("<III", 0, 1, 2))
    custom = block("<", 0x40000BAD, struct.pack("<I", 32473) + b"anything")
    unknown = block("<", 0x0000_0123, b"")
    data = (
        section_header()
        + name_resolution
        + interface(tsresol=9)
        + custom
        + enhanced_packet("<", 0, T0, b"a")
        + statistics
        + unknown
        + enhanced_packet("<", 0, T0 + 1, b"b")
    )

    assert frames_of(data) == [(1, T0, 1, b"a"), (2, T0 + 1, 1, b"b")]


def test_it_skips_a_block_bigger_than_its_buffer_without_holding_it():
    secrets = block("<", 0x0A, struct.pack("<II", 0x544C534B, 3 * 2**20) + bytes(3 * 2**20))
    data = section_header() + interface() + secrets + enhanced_packet("<", 0, 0, b"after")

    tracemalloc.start()
    try:
        frames = list(iter_frames(io.BufferedReader(io.BytesIO(data))))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert frames == [(1, 0, 1, b"after")]
    assert peak < 2 * 2**20 + 2**20 // 2


# Damaged and foreign files


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file: not a pcap or pcapng file"),
        (b"GIF89a....", "not a pcap or pcapng file (starts with 0x47494638)"),
        (b"\x7f", "not a pcap or pcapng file (starts with 0x7f)"),
        (b"\xd4\xc3\xb2\xa1\x02\x00", "truncated pcap file header (6 of 24 bytes)"),
        (
            b"\x34\xcd\xb2\xa1" + bytes(20),
            "unsupported pcap variant (Kuznetzov's modified pcap, magic 0xa1b2cd34)",
        ),
        (b"\x0a\x0d\x0d\x0a\x1c\x00", "truncated pcapng section header (6 bytes)"),
        (
            b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00\x01\x02\x03\x04" + bytes(16),
            "pcapng section header with bad byte-order magic 0x01020304 at byte 0",
        ),
    ],
    ids=["empty", "gif", "one_byte", "short_pcap", "modified_pcap", "short_pcapng", "bad_bom"],
)
def test_what_is_not_a_capture_is_refused_when_the_reader_is_created(data: bytes, message: str):
    with pytest.raises(CaptureError) as error:
        iter_frames(io.BytesIO(data))

    assert str(error.value) == message


@pytest.mark.parametrize(
    ("tail", "message"),
    [
        (block("<", 6, b""), "pcapng block length 12 too small at byte 84 after frame 1"),
        (
            struct.pack("<II", 6, 8) + bytes(8),
            "pcapng block length 8 too small at byte 84 after frame 1",
        ),
        (
            struct.pack("<II", 6, 34) + bytes(30),
            "pcapng block length 34 not a multiple of 4 at byte 84 after frame 1",
        ),
        (
            struct.pack("<II", 6, 400_000) + bytes(400_000),
            "pcapng block length 400000 exceeds 327680 at byte 84 after frame 1",
        ),
        (
            struct.pack("<II", 6, 36) + bytes(24) + struct.pack("<I", 40),
            "pcapng block trailer does not match its length at byte 84 after frame 1",
        ),
        (
            block("<", 6, struct.pack("<IIIII", 0, 0, 0, 99, 4) + b"abcd"),
            "pcapng packet of 99 bytes overruns its block at byte 84 after frame 1",
        ),
        (section_header("<", major=2), "unsupported pcapng version 2 at byte 84 after frame 1"),
        (b"\x06\x00\x00\x00\x20\x00", "truncated pcapng block header at byte 84 after frame 1"),
        (
            enhanced_packet("<", 0, 0, b"abcdefgh")[:-1],
            "truncated pcapng block at byte 84 after frame 1",
        ),
    ],
    ids=[
        "empty_packet_block",
        "tiny_block",
        "unaligned",
        "huge",
        "bad_trailer",
        "overrun",
        "version",
        "short_header",
        "short_block",
    ],
)
def test_a_damaged_pcapng_block_raises_after_the_frames_before_it(tail: bytes, message: str):
    data = section_header() + interface() + enhanced_packet("<", 0, 0, b"good") + tail
    frames = iter_frames(io.BytesIO(data))

    assert next(frames) == (1, 0, 1, b"good")
    with pytest.raises(CaptureError) as error:
        next(frames)
    assert str(error.value) == message


def test_a_packet_before_any_interface_is_an_error():
    with pytest.raises(CaptureError, match=r"^pcapng packet on interface 0 of 0 at byte 28 "):
        frames_of(section_header() + enhanced_packet("<", 0, 0, b"x"))
    with pytest.raises(CaptureError, match=r"^pcapng simple packet before any interface "):
        frames_of(section_header() + simple_packet("<", b"x"))


def _laid_out(pieces: list[tuple[bytes, bool]]) -> tuple[bytes, list[int], list[int]]:
    """Join (bytes, holds a frame) pieces; return the file, where each piece ends, and
    where each frame's piece ends."""
    ends: list[int] = []
    frame_ends: list[int] = []
    position = 0
    for piece, holds_a_frame in pieces:
        position += len(piece)
        ends.append(position)
        if holds_a_frame:
            frame_ends.append(position)
    return b"".join(piece for piece, _ in pieces), ends, frame_ends


def _small_pcap() -> tuple[bytes, list[int], list[int]]:
    frames = [
        ether(ipv4(udp(b"a" * 5))),
        ether(ipv6(udp(b"b" * 70)), 0x86DD),
        ether(ipv4(udp(b"c" * 3)), tags=[0x8100]),
    ]
    data = pcap(frames)
    header = [(data[:24], False)]
    records = []
    position = 24
    for frame in frames:
        records.append((data[position : position + 16 + len(frame)], True))
        position += 16 + len(frame)
    return _laid_out(header + records)


def _small_pcapng() -> tuple[bytes, list[int], list[int]]:
    return _laid_out(
        [
            (section_header(">"), False),
            (interface(">", 1, tsresol=9), False),
            (enhanced_packet(">", 0, T0, ether(ipv4(udp(b"a" * 5)))), True),
            (block(">", 5, bytes(12)), False),
            (interface(">", 101), False),
            (enhanced_packet(">", 1, 0, ipv4(udp(b"b"))), True),
            (simple_packet(">", ether(ipv4(udp(b"c")))), True),
            (section_header("<"), False),
            (interface("<", 228), False),
            (enhanced_packet("<", 0, 0, ipv4(udp(b"d"))), True),
        ]
    )


@pytest.mark.parametrize("build", [_small_pcap, _small_pcapng], ids=["pcap", "pcapng"])
def test_a_capture_cut_at_any_byte_yields_exactly_its_complete_frames_then_raises(build):
    data, boundaries, frame_ends = build()
    everything = frames_of(data)
    assert len(everything) == len(frame_ends)

    for cut in range(len(data) + 1):
        read: list[tuple[int, int, int, bytes]] = []
        try:
            read.extend(iter_frames(io.BytesIO(data[:cut])))
        except CaptureError:
            assert cut not in boundaries, cut
        else:
            assert cut in boundaries, cut
        complete = [frame for frame, end in zip(everything, frame_ends, strict=True) if end <= cut]
        assert read == complete, cut


def test_datagrams_of_a_truncated_capture_come_before_the_error_and_pending_ones_are_counted():
    fragments = ipv4_fragments(udp(bytes(100)), 48)
    data = pcap([ether(ipv4(udp(b"whole"))), ether(fragments[0]), ether(fragments[1])])
    skipped: Counter[str] = Counter()
    datagrams = iter_udp_datagrams(iter_frames(io.BytesIO(data[:-5])), skipped)

    assert next(datagrams)[6] == b"whole"
    with pytest.raises(CaptureError, match=r"^truncated record data at byte 198 after frame 2$"):
        next(datagrams)
    assert skipped == Counter({"fragment": 1, "fragments_incomplete": 1})


def _valid_capture_frames() -> list[bytes]:
    fragments = ipv4_fragments(udp(bytes(range(200))), 64)
    return [
        ether(ipv4(udp(b"x" * 30))),
        ether(fragments[1]),
        ether(fragments[0]),
        ether(fragments[2]),
        ether(ipv6(udp(b"y" * 9)), 0x86DD, tags=[0x88A8, 0x8100]),
        ether(fragments[3]),
    ]


VALID_CAPTURE_FRAMES = _valid_capture_frames()


def _valid_captures() -> list[bytes]:
    frames = VALID_CAPTURE_FRAMES
    return [
        pcap(frames),
        pcap(frames, nano=True, order=">"),
        section_header()
        + interface(tsresol=9)
        + b"".join(enhanced_packet("<", 0, T0 + n, frame) for n, frame in enumerate(frames))
        + section_header(">")
        + interface(">", 101)
        + enhanced_packet(">", 0, 1, ipv4(udp()))
        + simple_packet(">", ipv4(udp())),
    ]


VALID_CAPTURES = _valid_captures()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    capture=st.sampled_from(VALID_CAPTURES),
    changes=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=6),
    cut=st.integers(0, 2000) | st.none(),
)
def test_a_corrupted_capture_raises_nothing_but_capture_error(
    capture: bytes, changes: list[tuple[int, int]], cut: int | None
):
    damaged = bytearray(capture)
    for position, value in changes:
        damaged[position % len(damaged)] = value
    data = bytes(damaged[:cut])
    frames: list[tuple[int, int, int, bytes]] = []
    with contextlib.suppress(CaptureError):
        frames.extend(iter_frames(io.BytesIO(data)))
    skipped: Counter[str] = Counter()
    datagrams = 0
    with contextlib.suppress(CaptureError):
        for _ in iter_udp_datagrams(iter_frames(io.BytesIO(data)), skipped):
            datagrams += 1

    assert [number for number, *_ in frames] == list(range(1, len(frames) + 1))
    assert datagrams + frames_counted(skipped) == len(frames)


# Link layers


def _frame_for(linktype: int, packet: bytes, version: int, family: int = 0) -> bytes:
    ethertype = 0x0800 if version == 4 else 0x86DD
    family = family or (2 if version == 4 else 24)
    if linktype == 1:
        return ether(packet, ethertype)
    if linktype == 113:
        return struct.pack("!HHH8sH", 0, 1, 6, MAC[:8], ethertype) + packet
    if linktype == 276:
        return struct.pack("!HHIHBB8s", ethertype, 0, 2, 1, 0, 6, MAC[:8]) + packet
    if linktype in (12, 14, 101, 228, 229):
        return packet
    if linktype == 0:
        return struct.pack("<I", family) + packet
    if linktype == 108:
        return struct.pack(">I", family) + packet
    raise AssertionError(linktype)


LINK_LAYERS = [
    pytest.param(1, 4, 0, id="ethernet_ipv4"),
    pytest.param(1, 6, 0, id="ethernet_ipv6"),
    pytest.param(113, 4, 0, id="linux_sll_ipv4"),
    pytest.param(113, 6, 0, id="linux_sll_ipv6"),
    pytest.param(276, 4, 0, id="linux_sll2_ipv4"),
    pytest.param(276, 6, 0, id="linux_sll2_ipv6"),
    pytest.param(101, 4, 0, id="raw_ipv4"),
    pytest.param(101, 6, 0, id="raw_ipv6"),
    pytest.param(12, 4, 0, id="raw_dlt12_ipv4"),
    pytest.param(14, 6, 0, id="raw_dlt14_ipv6"),
    pytest.param(228, 4, 0, id="ipv4"),
    pytest.param(229, 6, 0, id="ipv6"),
    pytest.param(0, 4, 2, id="null_ipv4"),
    pytest.param(0, 6, 24, id="null_ipv6_netbsd_openbsd"),
    pytest.param(0, 6, 28, id="null_ipv6_freebsd"),
    pytest.param(0, 6, 30, id="null_ipv6_macos"),
    pytest.param(108, 4, 2, id="loop_ipv4"),
    pytest.param(108, 6, 24, id="loop_ipv6"),
]


@pytest.mark.parametrize(("linktype", "version", "family"), LINK_LAYERS)
def test_it_finds_the_udp_datagram_behind_each_link_layer(linktype: int, version: int, family: int):
    packet = (
        ipv4(udp(b"payload", 1234, 30030)) if version == 4 else ipv6(udp(b"payload", 1234, 30030))
    )
    frame = _frame_for(linktype, packet, version, family)

    datagrams, skipped = datagrams_of(pcap([(T0, frame)], linktype))

    src, dst = (ROUTER, MEDIATION) if version == 4 else (ROUTER6, MEDIATION6)
    assert datagrams == [(1, T0, src, dst, 1234, 30030, b"payload")]
    assert skipped == Counter()


def test_a_bsd_loopback_family_is_read_in_either_byte_order():
    little = struct.pack("<I", 30) + ipv6(udp(b"a"))
    big = struct.pack(">I", 2) + ipv4(udp(b"b"))

    datagrams, _ = datagrams_of(pcap([little, big], 0))

    assert [payload for *_, payload in datagrams] == [b"a", b"b"]


def test_openbsd_loopback_written_as_link_type_12_is_recognised():
    frame = struct.pack(">I", 2) + ipv4(udp(b"loop"))

    datagrams, _ = datagrams_of(pcap([frame], 12))

    assert datagrams[0][6] == b"loop"


@pytest.mark.parametrize(
    "tags",
    [[0x8100], [0x88A8, 0x8100], [0x9100, 0x8100], [0x88A8, 0x8100, 0x8100]],
    ids=["802.1q", "qinq", "legacy_qinq", "three_tags"],
)
def test_it_looks_through_vlan_tags(tags: list[int]):
    frame = ether(ipv4(udp(b"tagged")), tags=tags)

    datagrams, _ = datagrams_of(pcap([frame]))

    assert datagrams[0][2:] == (ROUTER, MEDIATION, 6502, 6502, b"tagged")


def test_it_looks_through_a_vlan_tag_behind_a_cooked_header():
    frame = struct.pack("!HHH8sHHH", 0, 1, 6, MAC[:8], 0x8100, 5, 0x0800) + ipv4(udp(b"sll"))

    datagrams, _ = datagrams_of(pcap([frame], 113))

    assert datagrams[0][6] == b"sll"


def test_it_trims_ethernet_padding_and_fcs_to_the_ip_and_udp_lengths():
    frame = ether(ipv4(udp(b"hi")), fcs=True)
    assert len(frame) == 64

    datagrams, _ = datagrams_of(pcap([frame]))

    assert datagrams[0][6] == b"hi"


def test_it_trims_to_the_udp_length_when_the_ip_packet_is_longer():
    packet = ipv4(udp(b"short") + b"trailer")

    datagrams, _ = datagrams_of(pcap([packet], 101))

    assert datagrams[0][6] == b"short"


def test_it_reads_ipv4_headers_with_options():
    packet = ipv4(udp(b"options"), options=b"\x94\x04\x00\x00" + b"\x01" * 4)

    for linktype, frame in [(1, ether(packet)), (228, packet)]:
        datagrams, _ = datagrams_of(pcap([frame], linktype))
        assert datagrams[0][2:] == (ROUTER, MEDIATION, 6502, 6502, b"options")


def test_it_skips_ipv6_extension_headers():
    packet = ipv6(
        udp(b"extended"),
        extensions=[
            (0, b"\x01\x04\x00\x00\x00\x00"),
            (43, b"\x00\x00" + bytes(4)),
            (51, bytes(14)),
            (60, b"\x01\x02\x00\x00"),
        ],
    )

    datagrams, skipped = datagrams_of(pcap([ether(packet, 0x86DD)]))

    assert datagrams == [(1, T0 + 1_000_000, ROUTER6, MEDIATION6, 6502, 6502, b"extended")]
    assert skipped == Counter()


@pytest.mark.parametrize(
    ("src", "text"),
    [
        ("2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
        ("2001:db8:0:1:0:0:0:1", "2001:db8:0:1::1"),
        ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
        ("fe80::", "fe80::"),
        ("::", "::"),
    ],
)
def test_ipv6_addresses_are_compressed_as_tshark_shows_them(src: str, text: str):
    datagrams, _ = datagrams_of(pcap([ipv6(udp(), src=src)], 229))

    assert datagrams[0][2] == text


# What is skipped, and why


@pytest.mark.parametrize(
    ("linktype", "frame", "reason"),
    [
        pytest.param(1, MAC + b"\x08\x06" + bytes(28), "not_ip", id="arp"),
        pytest.param(1, MAC + b"\x00\x2e" + bytes(46), "not_ip", id="ieee802.3_length"),
        pytest.param(1, MAC + b"\x81\x00\x00\x05", "truncated", id="vlan_tag_cut"),
        pytest.param(1, MAC, "truncated", id="no_ethertype"),
        pytest.param(1, ether(ipv4(b"\x08\x00" + bytes(6), protocol=1)), "not_udp", id="icmp"),
        pytest.param(1, ether(ipv6(bytes(20), next_header=6), 0x86DD), "not_udp", id="ipv6_tcp"),
        pytest.param(1, ether(ipv6(bytes(8), next_header=50), 0x86DD), "not_udp", id="ipv6_esp"),
        pytest.param(1, ether(ipv4(udp(b"x" * 200))[:100]), "truncated", id="ipv4_snapped"),
        pytest.param(1, ether(ipv6(udp(b"x" * 200)), 0x86DD)[:100], "truncated", id="ipv6_snapped"),
        pytest.param(1, MAC + b"\x08\x00" + b"\x45" + bytes(10), "truncated", id="ipv4_header_cut"),
        pytest.param(
            1,
            ether(b"\x4f" + ipv4(udp())[1:]),
            "bad_ip_header",
            id="ipv4_header_longer_than_total_length",
        ),
        pytest.param(1, ether(b"\x44" + ipv4(udp())[1:]), "bad_ip_header", id="ipv4_ihl_below_5"),
        pytest.param(
            1,
            ether(b"\x65" + ipv4(udp())[1:]),
            "bad_ip_header",
            id="ipv6_version_under_ipv4_ethertype",
        ),
        pytest.param(
            1,
            ether(ipv4(udp())[:2] + b"\x00\x13" + ipv4(udp())[4:]),
            "bad_ip_header",
            id="ipv4_total_below_header",
        ),
        pytest.param(
            1,
            ether(b"\x40" + ipv6(udp())[1:], 0x86DD),
            "bad_ip_header",
            id="ipv4_version_under_ipv6_ethertype",
        ),
        pytest.param(
            1,
            ether(ipv6(b"", next_header=0), 0x86DD),
            "bad_ip_header",
            id="ipv6_extension_header_missing",
        ),
        pytest.param(
            1,
            ether(ipv6(b"\x11\x05" + bytes(6), next_header=0), 0x86DD),
            "bad_ip_header",
            id="ipv6_extension_header_overrun",
        ),
        pytest.param(
            1,
            ether(ipv4(struct.pack("!HHHH", 1, 2, 7, 0))),
            "bad_udp_length",
            id="udp_length_below_8",
        ),
        pytest.param(
            1,
            ether(ipv4(struct.pack("!HHHH", 1, 2, 9, 0))),
            "bad_udp_length",
            id="udp_length_beyond_ip",
        ),
        pytest.param(1, ether(ipv4(b"\x00\x01\x00")), "bad_udp_length", id="udp_header_cut"),
        pytest.param(101, b"", "truncated", id="raw_empty"),
        pytest.param(101, b"\x50" + bytes(40), "bad_ip_header", id="raw_version_5"),
        pytest.param(228, ipv6(udp()), "bad_ip_header", id="ipv4_linktype_with_ipv6"),
        pytest.param(229, ipv4(udp()), "bad_ip_header", id="ipv6_linktype_with_ipv4"),
        pytest.param(0, b"\x02\x00", "truncated", id="null_cut"),
        pytest.param(0, struct.pack("<I", 7) + ipv4(udp()), "not_ip", id="null_unknown_family"),
        pytest.param(
            113,
            struct.pack("!HHH8sH", 0, 824, 0, bytes(8), 0x0800) + ipv4(udp()),
            "not_ip",
            id="sll_netlink",
        ),
        pytest.param(113, bytes(10), "truncated", id="sll_cut"),
        pytest.param(276, bytes(19), "truncated", id="sll2_cut"),
        pytest.param(147, ipv4(udp()), "unsupported_linktype", id="user_linktype"),
    ],
)
def test_a_frame_without_a_datagram_is_counted_under_its_reason(
    linktype: int, frame: bytes, reason: str
):
    datagrams, skipped = datagrams_of(pcap([frame], linktype))

    assert datagrams == []
    assert skipped == Counter({reason: 1})


def test_every_reason_it_counts_is_listed():
    assert set(SKIP_REASONS) == {
        "unsupported_linktype",
        "not_ip",
        "truncated",
        "bad_ip_header",
        "not_udp",
        "bad_udp_length",
        "fragment",
        "fragment_duplicate",
        "fragment_overlap",
        "fragment_too_large",
        "fragments_incomplete",
    }


# Outer fragments


PAYLOAD = bytes(range(256)) * 6  # a full-size mirrored packet's worth


def _fragment_frames(order: list[int], size: int = 512) -> tuple[list[bytes], bytes]:
    datagram = udp(PAYLOAD, 6502, 30030)
    pieces = [ether(piece) for piece in ipv4_fragments(datagram, size)]
    return [pieces[index] for index in order], PAYLOAD


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [0, 3, 1, 2]], ids=str)
def test_it_reassembles_outer_ipv4_fragments_in_any_order(order: list[int]):
    frames, payload = _fragment_frames(order)

    datagrams, skipped = datagrams_of(
        pcap([(T0 + n * 1000, frame) for n, frame in enumerate(frames)])
    )

    assert datagrams == [(4, T0 + 3000, ROUTER, MEDIATION, 6502, 30030, payload)]
    assert skipped == Counter({"fragment": 3})


def test_the_datagram_comes_with_the_number_and_time_of_the_frame_that_completes_it():
    frames, _ = _fragment_frames([0, 1, 2, 3])
    other = ether(ipv4(udp(b"between")))
    data = pcap(
        [
            (T0, frames[0]),
            (T0 + 10_000, other),
            (T0 + 20_000, frames[1]),
            (T0 + 30_000, frames[2]),
            (T0 + 40_000, frames[3]),
        ]
    )

    datagrams, _ = datagrams_of(data)

    assert [(number, time_ns, payload[:3]) for number, time_ns, *_, payload in datagrams] == [
        (2, T0 + 10_000, b"bet"),
        (5, T0 + 40_000, PAYLOAD[:3]),
    ]


def test_fragments_of_different_datagrams_are_kept_apart():
    first = [ether(p) for p in ipv4_fragments(udp(b"A" * 300), 160, ident=1)]
    second = [ether(p) for p in ipv4_fragments(udp(b"B" * 300), 160, ident=2)]
    other_router = [
        ether(p) for p in ipv4_fragments(udp(b"C" * 300), 160, ident=1, src="192.0.2.9")
    ]
    frames = [first[0], second[0], other_router[0], second[1], other_router[1], first[1]]

    datagrams, skipped = datagrams_of(pcap(frames))

    assert [(number, src, payload[:1]) for number, _, src, _, _, _, payload in datagrams] == [
        (4, ROUTER, b"B"),
        (5, "192.0.2.9", b"C"),
        (6, ROUTER, b"A"),
    ]
    assert skipped == Counter({"fragment": 3})


def test_a_duplicate_fragment_is_counted_and_the_datagram_yielded_once():
    frames, payload = _fragment_frames([0, 1, 1, 2, 0, 3])

    datagrams, skipped = datagrams_of(pcap(frames))

    assert [(number, data) for number, *_, data in datagrams] == [(6, payload)]
    assert skipped == Counter({"fragment": 3, "fragment_duplicate": 2})


def test_a_capture_that_sees_every_fragment_twice_yields_each_datagram_once():
    frames, payload = _fragment_frames([0, 0, 1, 1, 2, 2, 3, 3])

    datagrams, skipped = datagrams_of(pcap(frames))

    assert [(number, data) for number, *_, data in datagrams] == [(7, payload)]
    assert skipped == Counter({"fragment": 3, "fragment_duplicate": 4})


def test_a_reused_ip_id_after_completion_starts_a_new_datagram():
    old = [ether(p) for p in ipv4_fragments(udp(b"old" * 100), 160)]
    new = [ether(p) for p in ipv4_fragments(udp(b"new" * 100), 160)]

    datagrams, skipped = datagrams_of(pcap(old + new))

    assert [payload[:3] for *_, payload in datagrams] == [b"old", b"new"]
    assert skipped == Counter({"fragment": 2})


def test_a_datagram_missing_a_fragment_is_counted_once_at_the_end():
    frames, _ = _fragment_frames([0, 2, 3])

    datagrams, skipped = datagrams_of(pcap(frames))

    assert datagrams == []
    assert skipped == Counter({"fragment": 3, "fragments_incomplete": 1})


def test_fragments_more_than_30_seconds_apart_are_not_joined():
    late, _ = _fragment_frames([0, 1, 2, 3])
    other = [ether(p) for p in ipv4_fragments(udp(b"other"), 8, ident=99)]
    data = pcap(
        [
            (T0, late[0]),
            (T0 + 1, late[1]),
            (T0 + 31_000_000_000, other[0]),
            (T0 + 31_000_000_001, other[1]),
            (T0 + 31_000_000_002, late[2]),
            (T0 + 31_000_000_003, late[3]),
        ]
    )

    datagrams, skipped = datagrams_of(data)

    assert [payload for *_, payload in datagrams] == [b"other"]
    assert skipped == Counter({"fragment": 5, "fragments_incomplete": 2})


def test_at_most_1024_datagrams_are_held_and_the_oldest_is_evicted():
    count = MAX_PENDING_DATAGRAMS + 1
    pieces = [ipv4_fragments(udp(b"%05d" % n * 4), 16, ident=n) for n in range(count)]
    frames = [ether(first) for first, _ in pieces]
    frames += [ether(pieces[-1][1]), ether(pieces[0][1])]

    datagrams, skipped = datagrams_of(pcap(frames))

    assert [payload[:5] for *_, payload in datagrams] == [b"01024"]
    assert skipped == Counter({"fragment": count + 1, "fragments_incomplete": count})


def test_overlapping_fragments_that_disagree_drop_the_datagram():
    datagram = udp(bytes(range(48)))
    first = ipv4(datagram[:32], offset=0, more=True)
    liar = ipv4(b"X" * 16 + datagram[32:48], offset=16, more=True)
    rest = ipv4(datagram[48:], offset=48)

    datagrams, skipped = datagrams_of(pcap([ether(first), ether(liar), ether(rest)]))

    assert datagrams == []
    assert skipped == Counter({"fragment": 2, "fragment_overlap": 1, "fragments_incomplete": 1})


def test_overlapping_fragments_that_agree_are_joined():
    datagram = udp(bytes(range(48)))
    pieces = [
        ipv4(datagram[:32], offset=0, more=True),
        ipv4(datagram[16:48], offset=16, more=True),
        ipv4(datagram[40:], offset=40),
    ]

    datagrams, skipped = datagrams_of(pcap([ether(piece) for piece in pieces]))

    assert [payload for *_, payload in datagrams] == [bytes(range(48))]
    assert skipped == Counter({"fragment": 2})


@pytest.mark.parametrize(
    "pieces",
    [
        [(0, 16, True), (32, 16, False), (40, 16, False)],
        [(32, 16, False), (0, 56, True)],
        [(40, 16, False), (0, 32, True), (32, 8, False)],
    ],
    ids=["two_ends", "data_beyond_the_end", "end_before_data"],
)
def test_fragments_that_disagree_on_the_length_drop_the_datagram(
    pieces: list[tuple[int, int, bool]],
):
    data = bytes(64)
    frames = [ether(ipv4(data[o : o + n], offset=o, more=m)) for o, n, m in pieces]

    datagrams, skipped = datagrams_of(pcap(frames))

    assert datagrams == []
    assert skipped["fragment_overlap"] == 1


def test_a_fragment_beyond_65535_bytes_is_refused():
    frames = [
        ether(ipv4(udp(bytes(8)), offset=0, more=True)),
        ether(ipv4(bytes(16), offset=65520)),
    ]

    datagrams, skipped = datagrams_of(pcap(frames))

    assert datagrams == []
    assert skipped == Counter({"fragment": 1, "fragment_too_large": 1})


def test_fragments_of_other_protocols_are_not_held():
    frames = [ether(piece) for piece in ipv4_fragments(bytes(64), 32, protocol=1)]

    datagrams, skipped = datagrams_of(pcap(frames))

    assert datagrams == []
    assert skipped == Counter({"not_udp": 2})


def test_a_reassembled_datagram_with_a_bad_udp_length_is_counted_on_its_last_frame():
    datagram = struct.pack("!HHHH", 1, 2, 500, 0) + bytes(40)
    frames = [ether(piece) for piece in ipv4_fragments(datagram, 24)]

    datagrams, skipped = datagrams_of(pcap(frames))

    assert datagrams == []
    assert skipped == Counter({"fragment": 1, "bad_udp_length": 1})


@pytest.mark.parametrize("order", [[0, 1, 2], [2, 0, 1]], ids=str)
def test_it_reassembles_outer_ipv6_fragments(order: list[int]):
    pieces = ipv6_fragments(udp(PAYLOAD, 5000, 5001), 600)
    frames = [ether(pieces[index], 0x86DD) for index in order]

    datagrams, skipped = datagrams_of(pcap(frames))

    assert datagrams == [(3, T0 + 3_000_000, ROUTER6, MEDIATION6, 5000, 5001, PAYLOAD)]
    assert skipped == Counter({"fragment": 2})


def test_an_ipv6_atomic_fragment_is_a_whole_datagram():
    packet = ipv6(udp(b"atomic"), extensions=[(44, struct.pack("!HI", 0, 5))])

    datagrams, _ = datagrams_of(pcap([packet], 229))

    assert datagrams[0][6] == b"atomic"


def test_reassembled_ipv6_fragments_of_another_protocol_are_not_udp():
    frames = [ether(piece, 0x86DD) for piece in ipv6_fragments(bytes(64), 32, next_header=6)]

    datagrams, skipped = datagrams_of(pcap(frames))

    assert datagrams == []
    assert skipped == Counter({"fragment": 1, "not_udp": 1})


@settings(max_examples=300, deadline=None)
@given(
    order=st.permutations(range(6)),
    duplicates=st.lists(st.integers(0, 5), max_size=4),
)
def test_fragments_in_any_order_with_duplicates_make_the_datagram_once(
    order: list[int], duplicates: list[int]
):
    pieces = [ether(piece) for piece in ipv4_fragments(udp(PAYLOAD), 264)]
    assert len(pieces) == 6
    sequence = [pieces[index] for index in order] + [pieces[index] for index in duplicates]

    datagrams, skipped = datagrams_of(pcap(sequence))

    assert [payload for *_, payload in datagrams] == [PAYLOAD]
    assert datagrams[0][0] == 6
    assert skipped == Counter({"fragment": 5, "fragment_duplicate": len(duplicates)}) - Counter()


# Properties over arbitrary frames


_SAMPLE_FRAMES = [
    (1, ether(ipv4(udp(b"a" * 40)))),
    (1, ether(ipv6(udp(b"b" * 40), extensions=[(0, bytes(6))]), 0x86DD, tags=[0x8100])),
    *[(1, ether(piece)) for piece in ipv4_fragments(udp(bytes(100)), 32)],
    *[(229, piece) for piece in ipv6_fragments(udp(bytes(100)), 48)],
    (113, _frame_for(113, ipv4(udp(), options=bytes(4)), 4)),
    (276, _frame_for(276, ipv6(udp()), 6)),
    (0, _frame_for(0, ipv4(udp()), 4)),
    (108, _frame_for(108, ipv6(udp()), 6)),
    (12, ipv4(udp())),
]


@settings(max_examples=1500, deadline=None)
@given(
    picks=st.lists(st.integers(0, len(_SAMPLE_FRAMES) - 1), min_size=1, max_size=12),
    changes=st.lists(st.tuples(st.integers(0, 11), st.integers(0, 200), st.integers(0, 255))),
    cuts=st.lists(st.tuples(st.integers(0, 11), st.integers(0, 200))),
    times=st.lists(st.integers(0, 100_000_000_000), min_size=12, max_size=12),
)
def test_any_damage_to_frames_is_counted_and_never_raises(
    picks: list[int],
    changes: list[tuple[int, int, int]],
    cuts: list[tuple[int, int]],
    times: list[int],
):
    frames = [bytearray(_SAMPLE_FRAMES[pick][1]) for pick in picks]
    for index, position, value in changes:
        frame = frames[index % len(frames)]
        if frame:
            frame[position % len(frame)] = value
    for index, length in cuts:
        del frames[index % len(frames)][length:]
    records = [
        (number, times[number - 1], _SAMPLE_FRAMES[pick][0], bytes(frame))
        for number, (pick, frame) in enumerate(zip(picks, frames, strict=True), 1)
    ]

    datagrams, skipped = datagrams_of(records)

    assert len(datagrams) + frames_counted(skipped) == len(records)
    assert set(skipped) <= set(SKIP_REASONS)
    for _, _, src, dst, sport, dport, payload in datagrams:
        assert isinstance(src, str)
        assert isinstance(dst, str)
        assert 0 <= sport < 65536
        assert 0 <= dport < 65536
        assert isinstance(payload, bytes)


# Memory


def test_reading_a_large_capture_does_not_hold_it_in_memory(tmp_path: Path):
    record = pcap([ether(ipv4(udp(bytes(150))))])[24:]
    path = tmp_path / "large.pcap"
    with path.open("wb") as out:
        out.write(pcap([]))
        for _ in range(20):
            out.write(record * 5000)
    size = path.stat().st_size
    assert size > 20_000_000

    tracemalloc.start()
    try:
        with path.open("rb") as stream:
            count = sum(1 for _ in iter_udp_datagrams(iter_frames(stream), Counter()))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert count == 100_000
    assert peak < 4 * 2**20, f"peak {peak} bytes for a {size}-byte file"


# Agreement with tshark


def _assert_agrees_with_tshark(path: Path) -> None:
    rows = tshark_rows(
        path,
        "frame.number",
        "frame.time_epoch",
        "ip.src",
        "ip.dst",
        "ipv6.src",
        "ipv6.dst",
        "udp.srcport",
        "udp.dstport",
    )
    with path.open("rb") as stream:
        frames = list(iter_frames(stream))
    with path.open("rb") as stream:
        datagrams, skipped = datagrams_of(iter_frames(stream))

    assert [(number, time_ns) for number, time_ns, _, _ in frames] == [
        (int(row[0]), epoch_ns(row[1])) for row in rows
    ]
    expected = [
        (int(row[0]), row[2] or row[4], row[3] or row[5], int(row[6]), int(row[7]))
        for row in rows
        if row[6]
    ]
    assert [
        (number, src, dst, sport, dport) for number, _, src, dst, sport, dport, _ in datagrams
    ] == (expected)
    assert len(datagrams) + frames_counted(skipped) == len(frames)


@pytest.mark.tshark
@pytest.mark.captures
@needs_tshark
@pytest.mark.parametrize("router_capture", capture_params(), indirect=True)
def test_the_router_captures_read_as_tshark_reads_them(router_capture: Capture):
    _assert_agrees_with_tshark(router_capture.path)


@pytest.mark.captures
@pytest.mark.parametrize("router_capture", capture_params(), indirect=True)
def test_the_router_captures_are_microsecond_ethernet_pcaps_with_their_snap_length(
    router_capture: Capture,
):
    with router_capture.path.open("rb") as stream:
        header = struct.unpack("<IHHiIII", stream.read(24))

    magic, major, minor, _, _, snaplen, linktype = header
    assert (magic, major, minor, linktype) == (0xA1B2C3D4, 2, 4, 1)
    assert snaplen == router_capture.of.snaplen


EDITCAP = shutil.which("editcap")


@pytest.mark.tshark
@pytest.mark.skipif(EDITCAP is None, reason="editcap (from Wireshark) is not installed")
@pytest.mark.parametrize("file_format", ["pcapng", "nsecpcap"])
def test_a_capture_rewritten_by_editcap_reads_the_same(
    tmp_path: Path, file_format: str, built_router_captures: dict[str, Capture]
):
    assert EDITCAP is not None
    generated = tmp_path / "generated.pcap"
    generated.write_bytes(pcap(VALID_CAPTURE_FRAMES))
    routers = [*built_router_captures.values(), *present_real_captures()]
    sources = {"generated": generated} | {f"{c.origin}-{c.path.stem}": c.path for c in routers}
    for label, source in sources.items():
        converted = tmp_path / f"{label}.{file_format}"
        subprocess.run([EDITCAP, "-F", file_format, str(source), str(converted)], check=True)

        with source.open("rb") as original, converted.open("rb") as rewritten:
            assert list(iter_frames(rewritten)) == list(iter_frames(original)), label


@pytest.mark.tshark
@needs_tshark
def test_a_capture_of_every_kind_reads_as_tshark_reads_it(tmp_path: Path):
    fragments = [ether(piece) for piece in ipv4_fragments(udp(PAYLOAD, 1000, 2000), 512)]
    fragments6 = ipv6_fragments(udp(PAYLOAD, 3000, 4000), 600)
    first_section = (
        section_header("<")
        + interface("<", 1, tsresol=9)
        + interface("<", 101, tsresol=0x80 | 20)
        + interface("<", 113, tsresol=6, tsoffset=3600)
        + enhanced_packet("<", 0, T0 + 1, ether(ipv4(udp(b"a", 1, 2)), tags=[0x8100]))
        + enhanced_packet("<", 1, 1_700_000_001 * 2**20 + 12345, ipv6(udp(b"b", 3, 4)))
        + enhanced_packet("<", 0, T0 + 3, fragments[2])
        + enhanced_packet("<", 2, T0 // 1000 + 4, _frame_for(113, ipv4(udp(b"c", 5, 6)), 4))
        + enhanced_packet("<", 0, T0 + 5, fragments[0])
        + enhanced_packet("<", 0, T0 + 6, fragments[1])
        + enhanced_packet("<", 1, 1_700_000_002 * 2**20, fragments6[1])
        + enhanced_packet("<", 1, 1_700_000_003 * 2**20, fragments6[0])
        + enhanced_packet("<", 0, T0 + 7, fragments[3])
        + enhanced_packet("<", 0, T0 + 8, fragments[1])
        + enhanced_packet("<", 1, 1_700_000_004 * 2**20, fragments6[2])
    )
    second_section = (
        section_header(">")
        + interface(">", 276, tsresol=9)
        + interface(">", 1, tsresol=0x80 | 10)
        + enhanced_packet(">", 1, 1_700_000_005 * 2**10 + 1, ether(ipv6(udp(b"d", 7, 8)), 0x86DD))
        + enhanced_packet(">", 0, T0 + 8, _frame_for(276, ipv6(udp(b"e", 9, 10)), 6))
        + enhanced_packet(">", 1, 1_700_000_006 * 2**10, ether(ipv4(udp(b"f"), options=bytes(8))))
        + enhanced_packet(
            ">", 1, 1_700_000_007 * 2**10, ether(ipv4(udp(b"g" * 9)), tags=[0x88A8, 0x8100])
        )
    )
    path = tmp_path / "every_kind.pcapng"
    path.write_bytes(first_section + second_section)

    _assert_agrees_with_tshark(path)


@pytest.mark.tshark
@needs_tshark
@pytest.mark.parametrize(
    ("nano", "order"), [(False, ">"), (True, "<")], ids=["micro_be", "nano_le"]
)
def test_pcap_times_agree_with_tshark(tmp_path: Path, nano: bool, order: str):
    frames = [
        (T0 + n * 123_456_789, ether(ipv4(udp(bytes(n), 40000 + n, 6502)))) for n in range(20)
    ]
    path = tmp_path / "times.pcap"
    path.write_bytes(pcap(frames, nano=nano, order=order))

    _assert_agrees_with_tshark(path)
