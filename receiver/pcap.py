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
