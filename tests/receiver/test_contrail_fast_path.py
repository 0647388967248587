"""decode_contrail's fast path for flow mirroring reads what the general TLV loop reads."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from receiver.contrail import (
    ContrailPacket,
    _flow_mirroring_tlvs,
    _tlvs,
    contrail_header,
    decode_contrail,
)
from receiver.jmirror import DecodeError

FRAME = bytes.fromhex(
    "020000000002020000000001"
    "0800"
    "4500001c000100004011f9c80a0000050a000109"  # IPv4 UDP 10.0.0.5 > 10.0.1.9
    "9c4000350008 0000".replace(" ", "")
)


def _tlv(kind: int, value: bytes) -> bytes:
    return bytes((kind, len(value))) + value


@st.composite
def flow_mirroring_like(draw: st.DrawFn) -> bytes:
    """TLVs 1, 2, 3, 4 and the end marker as a vRouter writes them, then a frame; some
    with a length or a byte changed, or cut short, so that both paths see damage."""
    payload = (
        _tlv(1, draw(st.binary(min_size=4, max_size=4)))
        + _tlv(2, draw(st.binary(min_size=4, max_size=4)))
        + _tlv(3, draw(st.binary(max_size=60)))
        + _tlv(4, draw(st.binary(max_size=60)))
        + b"\xff\x00"
        + draw(st.sampled_from([FRAME, b"", FRAME[:20], b"\xff\x00" + FRAME]))
    )
    data = bytearray(payload)
    for _ in range(draw(st.integers(0, 2))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data))) if draw(st.booleans()) else None])


@settings(max_examples=3000, deadline=None)
@given(flow_mirroring_like())
def test_the_flow_mirroring_path_reads_what_the_general_loop_reads(payload: bytes):
    fast = _flow_mirroring_tlvs(payload)
    if fast is None:
        return
    assert fast == _tlvs(payload)


def test_a_vrouters_flow_mirroring_header_takes_the_fast_path():
    payload = (
        contrail_header(capture_host="10.1.1.1", flags=0x400000A0, source_vn="a", dest_vn="bb")
        + FRAME
    )
    assert _flow_mirroring_tlvs(payload) == (21, "10.1.1.1", 0x400000A0, "a", "bb", ())
    packet = decode_contrail(payload)
    assert (packet.capture_host, packet.actions, packet.direction) == (
        "10.1.1.1",
        ("pass", "mirror"),
        "ingress",
    )
    assert (packet.src, packet.dst, packet.proto, packet.sport, packet.dport) == (
        "10.0.0.5",
        "10.0.1.9",
        17,
        40000,
        53,
    )


@pytest.mark.parametrize(
    "header",
    [
        contrail_header(source_vn="a"),  # interface mirroring
        _tlv(1, b"\x0a\x01\x01\x01")
        + _tlv(2, b"\0\0\0\1")
        + _tlv(4, b"b")
        + _tlv(3, b"a")
        + b"\xff\0",
        contrail_header(capture_host="10.1.1.1", flags=1, source_vn="a", dest_vn="b")[:-2]
        + _tlv(9, b"x")
        + b"\xff\x00",
        b"\xff\x00",
    ],
)
def test_other_layouts_take_the_general_loop(header: bytes):
    assert _flow_mirroring_tlvs(header + FRAME) is None
    assert decode_contrail(header + FRAME).header_length == len(header)


def test_a_packet_is_frozen_compares_by_value_and_hashes():
    payload = contrail_header(capture_host="10.1.1.1", flags=0xA0, source_vn="a") + FRAME
    packet = decode_contrail(payload)
    with pytest.raises(dataclasses.FrozenInstanceError):
        packet.flags = 1  # type: ignore[misc]
    assert packet == decode_contrail(payload)
    assert hash(packet) == hash(decode_contrail(payload))
    assert packet != decode_contrail(payload[:-1] + b"\x01")
    assert dataclasses.replace(packet, flags=2).flags == 2
    assert isinstance(packet, ContrailPacket)


def test_damage_in_the_fast_layout_is_still_refused_with_its_reason():
    header = contrail_header(capture_host="10.1.1.1", flags=1, source_vn="a", dest_vn="b")
    with pytest.raises(DecodeError) as error:
        decode_contrail(header[:-1] + b"\x01" + FRAME)  # end marker with a value
    assert error.value.reason == "bad_tlv"
    assert struct.unpack_from("!BB", header, len(header) - 2) == (255, 0)
