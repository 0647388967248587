"""iter_capture_datagrams reads a capture as iter_udp_datagrams(iter_frames(...)) does.

Its one-loop path for pcap files of Ethernet frames must give the same datagrams, the
same skip counts and the same error, at the same point, for any file: whole, cut short
anywhere, or with a record length damaged.
"""

from __future__ import annotations

import io
import struct
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether

from receiver.pcap_reader import (
    CaptureError,
    iter_capture_datagrams,
    iter_frames,
    iter_udp_datagrams,
)

_BIG = IP(src="192.0.2.1", dst="198.51.100.10", id=7) / UDP(sport=1, dport=2) / (b"f" * 600)
TEMPLATES = [
    bytes(Ether() / IP(src="192.0.2.1", dst="198.51.100.10") / UDP(sport=5, dport=6) / b"x"),
    bytes(Ether() / IP(src="192.0.2.2", dst="198.51.100.10") / UDP(sport=5, dport=7) / (b"y" * 90)),
    bytes(Ether() / IP() / UDP(sport=5, dport=6))[:40],  # cut inside the UDP header
    bytes(Ether() / IP(src="192.0.2.3") / TCP()),
    bytes(Ether() / Dot1Q(vlan=3) / IP() / UDP() / b"vlan"),
    bytes(Ether() / IPv6() / UDP() / b"six"),
    bytes(Ether() / IP(options=b"\x01\x01\x01\x00") / UDP() / b"options"),
    bytes(Ether() / IP() / UDP(len=4) / b"bad udp length"),
    *(bytes(Ether() / piece) for piece in fragment(_BIG, fragsize=256)),
    bytes(Ether() / IP(src="192.0.2.4") / UDP(sport=5, dport=8) / b"p") + b"\x00" * 14,  # padded
    b"\x00" * 10,
    bytes(Ether(type=0x0806) / (b"\x00" * 28)),
]


def _pcap(records: list[bytes], order: str, nanoseconds: bool, linktype: int = 1) -> bytes:
    magic = 0xA1B23C4D if nanoseconds else 0xA1B2C3D4
    parts = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 262144, linktype)]
    for number, frame in enumerate(records):
        parts.append(
            struct.pack(order + "IIII", 1_790_000_000 + number, number * 7, len(frame), len(frame))
        )
        parts.append(frame)
    return b"".join(parts)


def _outcome(read: object, data: bytes) -> tuple[list[object], Counter[str], str | None]:
    skipped: Counter[str] = Counter()
    datagrams: list[object] = []
    try:
        for datagram in read(io.BytesIO(data), skipped):  # type: ignore[operator]
            datagrams.append(datagram)
    except CaptureError as error:
        return datagrams, skipped, str(error)
    return datagrams, skipped, None


def _chained(stream: io.BytesIO, skipped: Counter[str]) -> object:
    return iter_udp_datagrams(iter_frames(stream), skipped)


@settings(max_examples=600, deadline=None)
@given(
    st.lists(st.integers(0, len(TEMPLATES) - 1), max_size=40),
    st.sampled_from(["<", ">"]),
    st.booleans(),
    st.sampled_from([1, 101]),
    st.one_of(st.none(), st.integers(0, 4000)),
    st.one_of(st.none(), st.tuples(st.integers(0, 4000), st.integers(0, 255))),
)
def test_the_one_loop_reader_reads_what_the_two_generators_read(
    picks: list[int],
    order: str,
    nanoseconds: bool,
    linktype: int,
    cut: int | None,
    damage: tuple[int, int] | None,
):
    data = bytearray(_pcap([TEMPLATES[pick] for pick in picks], order, nanoseconds, linktype))
    if damage is not None and damage[0] < len(data):
        data[damage[0]] = damage[1]
    if cut is not None:
        data = data[: 24 + cut]
    assert _outcome(iter_capture_datagrams, bytes(data)) == _outcome(_chained, bytes(data))


def test_a_whole_capture_reads_every_kind_of_frame_alike():
    data = _pcap(TEMPLATES * 3, "<", False)
    datagrams, skipped, error = _outcome(iter_capture_datagrams, data)
    assert (datagrams, skipped, error) == _outcome(_chained, data)
    assert error is None
    # Fast path, general path and reassembly all yielded something, and skips counted.
    assert {datagram[5] for datagram in datagrams} >= {6, 7, 8, 2}  # type: ignore[index]
    assert min(skipped[reason] for reason in ("not_udp", "fragment", "truncated")) > 0


@pytest.mark.parametrize("data", [b"", b"\xd4\xc3\xb2\xa1\x02\x00", b"not a capture at all"])
def test_a_file_that_is_no_capture_fails_at_once_as_iter_frames_does(data: bytes):
    with pytest.raises(CaptureError) as ours:
        iter_capture_datagrams(io.BytesIO(data), Counter())
    with pytest.raises(CaptureError) as theirs:
        iter_frames(io.BytesIO(data))
    assert str(ours.value) == str(theirs.value)
