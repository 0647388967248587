"""The pcap and pcapng formats as the product writes and reads them: standard library only.

One definition of each fact the store (which writes session files), the export engine
(which reads them and writes pcap and pcapng), the capture-file reader (which reads any
capture) and the packet page share: link types, magic numbers, the snap length, and the
file and record headers.

The product's own files are little-endian nanosecond pcap (:data:`FILE_HEADER`,
:data:`RECORD_HEADER`); the reader also takes the other magics and byte orders.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Final


class LinkType(IntEnum):
    """Link-layer header types as capture files record them (tcpdump.org/linktypes.html).

    The store writes :attr:`RAW` and :attr:`PPP_HDLC` only; the others are what the
    capture-file reader follows down to IP.
    """

    NULL = 0
    """BSD loopback: a 4-byte address family in the writer's byte order."""
    ETHERNET = 1
    RAW_DLT12 = 12
    """DLT_RAW written unmapped by old libpcaps (not OpenBSD)."""
    RAW_DLT14 = 14
    """DLT_RAW written unmapped on OpenBSD and BSD/OS."""
    PPP_HDLC = 50
    """PPP in HDLC-like framing (RFC 1662): how the store keeps a PPP session's frames."""
    RAW = 101
    """Raw IPv4 or IPv6: how the store keeps mirrored IP packets."""
    LOOP = 108
    """OpenBSD loopback: the address family in network byte order."""
    LINUX_SLL = 113
    IPV4 = 228
    IPV6 = 229
    LINUX_SLL2 = 276


SNAPLEN: Final = 262144
"""The snap length written in every header, and the largest record a reader accepts
(libpcap's own bound): anything larger is corruption. No UDP datagram comes near it."""

MICROSECOND_MAGIC: Final = 0xA1B2C3D4
NANOSECOND_MAGIC: Final = 0xA1B23C4D
"""The magic of the files the product writes: times in nanoseconds."""
MODIFIED_MAGIC: Final = 0xA1B2CD34
"""Kuznetzov's modified pcap, which nothing here reads."""
VERSION: Final = (2, 4)

FILE_HEADER: Final = struct.Struct("<IHHiIII")
"""magic, major and minor version, thiszone, sigfigs, snaplen, link type"""
RECORD_HEADER: Final = struct.Struct("<IIII")
"""seconds, nanoseconds (microseconds under the microsecond magic), included length,
original length"""
FILE_HEADER_LENGTH: Final = FILE_HEADER.size
RECORD_HEADER_LENGTH: Final = RECORD_HEADER.size


def file_header(linktype: int) -> bytes:
    """The header of a little-endian nanosecond pcap file of ``linktype``."""
    return FILE_HEADER.pack(NANOSECOND_MAGIC, *VERSION, 0, 0, SNAPLEN, linktype)


# pcapng (pcapng.com): the block types and options that are written or read here.
PCAPNG_SECTION_HEADER: Final = 0x0A0D0D0A
"""The Section Header Block's type: also the first four bytes of every pcapng file."""
PCAPNG_BYTE_ORDER_MAGIC: Final = 0x1A2B3C4D
PCAPNG_INTERFACE: Final = 0x00000001
PCAPNG_PACKET: Final = 0x00000002
"""The obsolete Packet Block, still written by old tools."""
PCAPNG_SIMPLE_PACKET: Final = 0x00000003
PCAPNG_ENHANCED_PACKET: Final = 0x00000006
OPTION_END: Final = 0
OPTION_COMMENT: Final = 1
OPTION_SHB_USERAPPL: Final = 4
OPTION_IF_NAME: Final = 2
OPTION_IF_DESCRIPTION: Final = 3
OPTION_IF_TSRESOL: Final = 9
OPTION_IF_TSOFFSET: Final = 14
OPTION_EPB_FLAGS: Final = 2
"""An Enhanced Packet Block's flags word; its two low bits are the direction."""
EPB_INBOUND: Final = 1
EPB_OUTBOUND: Final = 2
OPTION_CUSTOM_BINARY: Final = 2989
"""A custom option with binary content that may be copied into other files, after a
Private Enterprise Number that says whose it is."""
JUNIPER_PEN: Final = 2636
"""Juniper Networks' Private Enterprise Number (IANA): the owner of the custom option
that keeps a Contrail datagram's Juniper header."""

# pcapng blocks as written here: little-endian.
_U32 = struct.Struct("<I")
_OPTION_HEAD = struct.Struct("<HH")
_SHB_BODY = struct.Struct("<IHHq")  # byte-order magic, version 1.0, section length unknown
_IDB_BODY = struct.Struct("<HHI")  # link type, reserved, snaplen
# interface, time high, time low, captured length, original length
_EPB_BODY = struct.Struct("<IIIII")
_OPTIONS_END: Final = _OPTION_HEAD.pack(OPTION_END, 0)


def pcapng_option(code: int, value: bytes) -> bytes:
    """One option: code, length, value padded to 32 bits."""
    return _OPTION_HEAD.pack(code, len(value)) + value + bytes(-len(value) & 3)


def pcapng_block(block_type: int, body: bytes) -> bytes:
    """A block: type, total length, body (already padded), total length again."""
    length = 12 + len(body)
    return _U32.pack(block_type) + _U32.pack(length) + body + _U32.pack(length)


def pcapng_section_header(application: str, comment: str = "") -> bytes:
    """A Section Header Block naming the writing application, with an optional comment."""
    options = pcapng_option(OPTION_COMMENT, comment.encode()) if comment else b""
    options += pcapng_option(OPTION_SHB_USERAPPL, application.encode()) + _OPTIONS_END
    body = _SHB_BODY.pack(PCAPNG_BYTE_ORDER_MAGIC, 1, 0, -1) + options
    return pcapng_block(PCAPNG_SECTION_HEADER, body)


def pcapng_interface_description(linktype: int, name: str = "", description: str = "") -> bytes:
    """An Interface Description Block of ``linktype`` with nanosecond timestamps."""
    options = b""
    if name:
        options += pcapng_option(OPTION_IF_NAME, name.encode())
    if description:
        options += pcapng_option(OPTION_IF_DESCRIPTION, description.encode())
    options += pcapng_option(OPTION_IF_TSRESOL, bytes([9])) + _OPTIONS_END
    return pcapng_block(PCAPNG_INTERFACE, _IDB_BODY.pack(linktype, 0, SNAPLEN) + options)


def enhanced_packet_block(interface: int, time_ns: int, data: bytes, options: bytes = b"") -> bytes:
    """An Enhanced Packet Block of interface ``interface`` (nanosecond timestamps) holding
    ``data`` whole; ``options`` are :func:`pcapng_option` results, without the end."""
    body = _EPB_BODY.pack(interface, time_ns >> 32, time_ns & 0xFFFFFFFF, len(data), len(data))
    body += data + bytes(-len(data) & 3)
    if options:
        body += options + _OPTIONS_END
    return pcapng_block(PCAPNG_ENHANCED_PACKET, body)
