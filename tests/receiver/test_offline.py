"""The decode command's fast paths print what the general ones would.

``receiver.offline.decode_lines`` writes the common datagram's line without a packet
object and takes a certain datagram past the FlowJudge's generator: these tests hold
both to the general path (decode_datagram and json_line; FlowJudge.offer for every
datagram), byte for byte.
"""

from __future__ import annotations

import io
import struct
from collections import Counter
from collections.abc import Iterator

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from receiver.contrail import ContrailPacket, contrail_header
from receiver.detection import (
    CERTAIN,
    JMIRROR,
    FlowJudge,
    certain_if_jmirror,
    classify,
)
from receiver.jmirror import DecodeError, decode_datagram
from receiver.offline import _jmirror_ipv4_line, decode_capture, decode_lines, json_line
from receiver.pcap_reader import iter_frames, iter_udp_datagrams


def _ipv4(
    proto: int, fragment: int, options: bytes, body: bytes, fix_checksum: bool, src: int
) -> bytes:
    header_length = 20 + len(options)
    header = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x40 | header_length // 4,
            0,
            header_length + len(body),
            7,
            fragment,
            64,
            proto,
            0,
            src.to_bytes(4, "big"),
            bytes((203, 0, 113, 9)),
        )
        + options
    )
    if fix_checksum:
        total = sum(struct.unpack(f"!{header_length // 2}H", header))
        while total > 0xFFFF:
            total = (total & 0xFFFF) + (total >> 16)
        header[10:12] = struct.pack("!H", ~total & 0xFFFF)
    return bytes(header) + body


jmirror_ipv4_payloads = st.builds(
    lambda mid, sid, inner, cut: (struct.pack("!II", mid, sid) + inner)[: len(inner) + 8 - cut],
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.builds(
        _ipv4,
        st.sampled_from([6, 17, 1, 132, 33, 136, 50, 255]),
        st.sampled_from([0, 0x4000, 0x2000, 0x0001, 0x2010]),
        st.sampled_from([b"", b"\x94\x04\x00\x00"]),
        st.binary(max_size=40),
        st.booleans(),
        st.integers(0, 2**32 - 1),
    ),
    st.sampled_from([0, 0, 0, 1, 3]),
)


@settings(max_examples=1500, deadline=None)
@given(jmirror_ipv4_payloads, st.integers(0, 2**63), st.integers(1, 65535))
def test_the_quick_line_is_json_line_of_the_decoded_packet(payload: bytes, time_ns: int, port: int):
    line = _jmirror_ipv4_line(42, time_ns, "192.0.2.1", port, payload)
    try:
        packet = decode_datagram(payload)
    except DecodeError:
        assert line is None
        return
    if line is not None:
        assert line == json_line(42, time_ns, "192.0.2.1", port, packet)
    else:
        # Only what decode_datagram's IPv4 fast path would not take is left out.
        assert len(payload) < 32 or payload[8] != 0x45


@settings(max_examples=1500, deadline=None)
@given(jmirror_ipv4_payloads)
def test_a_payload_certain_by_its_header_that_decodes_is_certain_jmirror(payload: bytes):
    if not certain_if_jmirror(payload):
        return
    try:
        packet = decode_datagram(payload)
    except DecodeError:
        return
    assert classify(payload) == (CERTAIN, JMIRROR, packet)


def test_some_generated_payloads_take_the_quick_paths():
    """The properties above are not vacuous."""
    payload = struct.pack("!II", 0x300, 0x90) + _ipv4(17, 0, b"", b"\x00\x35" * 4, True, 1)
    assert certain_if_jmirror(payload)
    assert _jmirror_ipv4_line(1, 0, "192.0.2.1", 30030, payload) is not None
    broken = payload[:18] + bytes([payload[18] ^ 1]) + payload[19:]
    assert not certain_if_jmirror(broken)


ROUTERS = ("192.0.2.1", "192.0.2.3", "192.0.2.4")


def _frames() -> Iterator[bytes]:
    """Certain jmirror datagrams interleaved with a flow whose inner checksums were
    broken by rewriting (held until the flow is judged), a flow that ends undecided,
    Contrail, noise and undecodable datagrams: certain ones are then held behind
    candidates and must come out in capture order."""
    for index in range(90):
        inner = bytes(
            IP(src=f"10.0.0.{index % 5}", dst="203.0.113.5")
            / (UDP(sport=1000 + index, dport=53) if index % 2 else TCP(sport=index, dport=443))
            / (b"x" * index)
        )
        kind = index % 6
        if kind in (0, 3):
            router, port, payload = ROUTERS[0], 30030, struct.pack("!II", 0x300, 1) + inner
        elif kind == 1:
            rewritten = inner[:12] + bytes([inner[12] ^ 0x55]) + inner[13:]
            router, port, payload = ROUTERS[1], 40000, struct.pack("!II", 0x301, 2) + rewritten
        elif kind == 2:
            frame = bytes(Ether() / IP(src="10.2.0.1", dst="10.2.0.2") / UDP(sport=1, dport=2))
            header = contrail_header(capture_host="10.1.1.1", flags=0xA0, source_vn="vn-a")
            router, port, payload = ROUTERS[2], 8099, header + frame
        elif kind == 4:
            router, port, payload = "198.51.100.9", 5353 + index, bytes([index]) * (index + 1)
        else:
            # Certain by its header but cut short: it fails to decode.
            router, port, payload = ROUTERS[0], 30030, (struct.pack("!II", 0x300, 1) + inner)[:-2]
        yield bytes(
            Ether()
            / IP(src=router, dst="198.51.100.10")
            / UDP(sport=port, dport=port, chksum=0)
            / payload
        )
    rewritten = bytes(IP(src="10.9.9.9", dst="10.9.9.8", chksum=1) / UDP())
    for _ in range(3):
        yield bytes(
            Ether()
            / IP(src="192.0.2.9", dst="198.51.100.10")
            / UDP(sport=41000, dport=41000)
            / (struct.pack("!II", 0x309, 9) + rewritten)
        )


def _capture() -> bytes:
    """A microsecond pcap of :func:`_frames`."""
    records = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for number, frame in enumerate(_frames()):
        records.append(struct.pack("<IIII", 1_790_000_000 + number, number, len(frame), len(frame)))
        records.append(frame)
    return b"".join(records)


def _by_offer_alone(capture: bytes) -> tuple[list[str], Counter[str], Counter[str]]:
    """The reference: every datagram through FlowJudge.offer, each packet by json_line."""
    skipped: Counter[str] = Counter()
    judge = FlowJudge(skipped)
    lines: list[str] = []
    formats: Counter[str] = Counter()
    items = []
    for frame, time_ns, router, _, _, port, payload in iter_udp_datagrams(
        iter_frames(io.BytesIO(capture)), skipped
    ):
        items.extend(judge.offer(frame, time_ns, router, port, payload))
    items.extend(judge.finish())
    for item in items:
        lines.append(json_line(*item))
        formats["contrail" if type(item[4]) is ContrailPacket else "jmirror"] += 1
    return lines, skipped, formats


def test_without_ports_the_lines_are_those_of_the_judge_alone_in_capture_order():
    capture = _capture()
    expected, expected_skipped, expected_formats = _by_offer_alone(capture)
    skipped: Counter[str] = Counter()
    decoded: Counter[str] = Counter()
    lines = list(decode_lines(io.BytesIO(capture), [], skipped, decoded))
    assert lines == expected
    assert skipped == expected_skipped
    assert +decoded == +expected_formats
    assert set(expected_formats) == {"jmirror", "contrail"}
    # The rewritten flow's datagrams were held and the certain ones queued behind them.
    assert any('"port": 40000' in line for line in lines)
    frames = [int(line.split(",", 1)[0].split(": ")[1]) for line in lines]
    assert frames == sorted(frames)
    skipped_by_capture: Counter[str] = Counter()
    by_capture = [
        json_line(*item) for item in decode_capture(io.BytesIO(capture), [], skipped_by_capture)
    ]
    assert by_capture == expected
    assert skipped_by_capture == expected_skipped


def test_with_ports_the_lines_are_those_of_decode_capture():
    capture = _capture()
    for ports, contrail_ports in (([30030, 40000], [8099]), ([41000], []), ([], [8099])):
        skipped: Counter[str] = Counter()
        expected = [
            json_line(*item)
            for item in decode_capture(io.BytesIO(capture), ports, skipped, contrail_ports)
        ]
        ours: Counter[str] = Counter()
        decoded: Counter[str] = Counter()
        lines = list(decode_lines(io.BytesIO(capture), ports, ours, decoded, contrail_ports))
        assert lines == expected
        assert ours == skipped
        assert sum(decoded.values()) == len(expected)
        assert decoded["contrail"] == sum('"format": "contrail"' in line for line in lines)
