"""The options of one stored pcapng packet, for the packet page (no Django, no Scapy).

The receiver stores a Contrail session's Ethernet frames as pcapng Enhanced Packet Blocks
whose options keep the vRouter's Juniper header (``receiver.contrail.evidence_options``):
the direction in ``epb_flags``, the header's facts as a comment, and the header's bytes in
a custom option (2989) of Juniper's Private Enterprise Number (2636). The packet page finds
the packet with ``receiver.pcap_reader.iter_frames`` (which gives no options), then reads
the same packet's block here: :func:`read_packet_options` walks the file's blocks by their
lengths, counting packet blocks as ``iter_frames`` numbers frames, and parses the options
of the one asked for.

Stored bytes are not trusted: every length is checked against what holds it, blocks and
options are bounded (:data:`MAX_BLOCK`, :data:`MAX_OPTIONS`, :data:`MAX_COMMENT_CHARS`),
and anything that does not add up gives no options (or ``damaged``) rather than an error.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import BinaryIO, Final

from receiver.pcap import (
    EPB_INBOUND,
    EPB_OUTBOUND,
    JUNIPER_PEN,
    OPTION_COMMENT,
    OPTION_CUSTOM_BINARY,
    OPTION_END,
    OPTION_EPB_FLAGS,
    PCAPNG_BYTE_ORDER_MAGIC,
    PCAPNG_ENHANCED_PACKET,
    PCAPNG_PACKET,
    PCAPNG_SECTION_HEADER,
    PCAPNG_SIMPLE_PACKET,
    SNAPLEN,
)

# A packet block as pcap_reader bounds it: the largest frame and 64 KiB of options.
MAX_BLOCK: Final = SNAPLEN + 65536
MAX_OPTIONS: Final = 256
MAX_COMMENTS: Final = 8
MAX_COMMENT_CHARS: Final = 1000

_SECTION_MAGIC: Final = PCAPNG_SECTION_HEADER.to_bytes(4, "big")
_ORDERS: Final = {
    PCAPNG_BYTE_ORDER_MAGIC.to_bytes(4, "little"): "<",
    PCAPNG_BYTE_ORDER_MAGIC.to_bytes(4, "big"): ">",
}
_PACKET_BLOCKS: Final = frozenset({PCAPNG_ENHANCED_PACKET, PCAPNG_PACKET, PCAPNG_SIMPLE_PACKET})
# After the block type and length: interface, time high and low, captured and original length.
_EPB_FIELDS: Final = 20
_DIRECTIONS: Final = {EPB_INBOUND: "inbound", EPB_OUTBOUND: "outbound"}


@dataclass(frozen=True)
class PacketOptions:
    """What an Enhanced Packet Block's options say of its packet."""

    direction: str | None
    """``inbound`` or ``outbound`` from ``epb_flags``; None when not given (or 0)."""
    comments: tuple[str, ...]
    juniper_header: bytes | None
    """The Juniper header's bytes (TLVs and end marker) as the vRouter sent them: the
    custom option of Juniper's enterprise number, without the number."""
    damaged: bool = False
    """The options did not parse to their end (what came before is kept)."""


def read_packet_options(stream: BinaryIO, index: int, data: bytes) -> PacketOptions | None:
    """The options of packet ``index`` (from 1, as ``iter_frames`` numbers them) of a
    pcapng file, when it is an Enhanced Packet Block holding exactly ``data`` (the bytes
    ``iter_frames`` gave for it: the check that both read the same packet). None for a
    pcap file, another kind of block, or a file whose blocks do not add up."""
    found = _packet_block(stream, index)
    if found is None:
        return None
    order, body = found
    interface_etc = struct.Struct(order + "IIIII")
    _interface, _high, _low, captured, _original = interface_etc.unpack_from(body, 0)
    data_end = _EPB_FIELDS + captured
    options_end = len(body) - 4  # the block's trailing length
    if data_end > options_end or body[_EPB_FIELDS:data_end] != data:
        return None
    return parse_options(order, body[data_end + (-captured & 3) : options_end])


def _packet_block(stream: BinaryIO, index: int) -> tuple[str, bytes] | None:
    """The byte order and the body (from the interface id to the trailing length) of
    the ``index``-th packet block, if it is an Enhanced Packet Block."""
    head = stream.read(12)
    if len(head) < 12 or head[:4] != _SECTION_MAGIC:
        return None  # a pcap file (or not a capture): no options
    order = ""
    number = 0
    while len(head) == 12:
        if head[:4] == _SECTION_MAGIC:
            # The section type reads the same in both orders; its byte-order magic says
            # how to read its length and every block up to the next section.
            section_order = _ORDERS.get(head[8:12])
            if section_order is None:
                return None
            order = section_order
        block_type, length = struct.unpack(order + "II", head[:8])
        if length < 12 or length & 3:
            return None
        if block_type in _PACKET_BLOCKS:
            number += 1
            if number == index:
                if block_type != PCAPNG_ENHANCED_PACKET or not 32 <= length <= MAX_BLOCK:
                    return None
                body = head[8:] + stream.read(length - 12)
                return (order, body) if len(body) == length - 8 else None
        stream.seek(length - 12, io.SEEK_CUR)
        head = stream.read(12)
    return None


def parse_options(order: str, area: bytes) -> PacketOptions:
    """An Enhanced Packet Block's options area (``order``: the section's byte order)."""
    option_head = struct.Struct(order + "HH")
    u32 = struct.Struct(order + "I")
    direction: str | None = None
    comments: list[str] = []
    header: bytes | None = None
    damaged = False
    position = count = 0
    while position + 4 <= len(area):
        code, length = option_head.unpack_from(area, position)
        position += 4
        if code == OPTION_END:
            break
        count += 1
        if position + length > len(area) or count > MAX_OPTIONS:
            damaged = True
            break
        value = area[position : position + length]
        position += length + (-length & 3)
        if code == OPTION_EPB_FLAGS and length == 4:
            direction = _DIRECTIONS.get(u32.unpack(value)[0] & 3)
        elif code == OPTION_COMMENT and len(comments) < MAX_COMMENTS:
            text = value.decode("utf-8", "replace")
            if len(text) > MAX_COMMENT_CHARS:
                text = text[:MAX_COMMENT_CHARS] + "…"
            comments.append(text)
        elif (
            code == OPTION_CUSTOM_BINARY
            and length >= 4
            and header is None
            and u32.unpack_from(value)[0] == JUNIPER_PEN
        ):
            header = value[4:]
    else:
        damaged = position != len(area)
    return PacketOptions(direction, tuple(comments), header, damaged)


# A vRouter's header is at most about 530 bytes (two 4-byte TLVs, two VN names of 255,
# the end marker); more is not a header to hand to Scapy, TLV by TLV.
MAX_JUNIPER_HEADER: Final = 2048
_END_OF_TLVS: Final = 0xFF


def juniper_header_problem(header: bytes) -> str | None:
    """Why ``header`` is not a Juniper header to put back before its frame (a TLV chain
    ending with ``FF 00`` exactly at its end), or None when it is."""
    if len(header) > MAX_JUNIPER_HEADER:
        return f"{len(header)} bytes, more than a Juniper header holds ({MAX_JUNIPER_HEADER})"
    position = 0
    while position + 2 <= len(header):
        kind, length = header[position], header[position + 1]
        if kind == _END_OF_TLVS:
            if length == 0 and position + 2 == len(header):
                return None
            break
        position += 2 + length
    return "its TLVs do not end with FF 00 at its end"
