"""From an IP header to the transport protocol and its ports: sans-I/O, standard library only.

One definition of the IP facts the decoder, the packet summaries, the export filter and
the capture-file reader share: which protocols carry ports, which IPv6 next headers are
extension headers and how long each is, and the walk over them. The decoder's result
(the ports the browser shows) and the export's port filter therefore agree by
construction.

The sets are of plain ints: a membership test per packet then finds the small int by
identity, where enum members would be compared one by one.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final


class IPProtocol(IntEnum):
    """IP protocol (and IPv6 next header) numbers the product names (IANA)."""

    HOP_BY_HOP = 0
    ICMP = 1
    IGMP = 2
    IPIP = 4
    TCP = 6
    UDP = 17
    DCCP = 33
    IPV6 = 41
    ROUTING = 43
    FRAGMENT = 44
    GRE = 47
    ESP = 50
    AH = 51
    ICMPV6 = 58
    NO_NEXT_HEADER = 59
    DESTINATION_OPTIONS = 60
    OSPF = 89
    PIM = 103
    VRRP = 112
    L2TP = 115
    SCTP = 132
    MOBILITY = 135
    UDP_LITE = 136
    HIP = 139
    SHIM6 = 140


PORT_PROTOCOLS: Final[frozenset[int]] = frozenset(
    int(protocol)
    for protocol in (
        IPProtocol.TCP,
        IPProtocol.UDP,
        IPProtocol.DCCP,
        IPProtocol.SCTP,
        IPProtocol.UDP_LITE,
    )
)
"""Transport protocols whose header starts with the source and destination port."""

IPV6_FRAGMENT: Final = int(IPProtocol.FRAGMENT)
IPV6_AUTHENTICATION: Final = int(IPProtocol.AH)
"""Its length counts 4-byte units beyond the first 8; the other extension headers' count
8-byte units."""
IPV6_EXTENSIONS: Final[frozenset[int]] = frozenset(
    int(protocol)
    for protocol in (
        IPProtocol.HOP_BY_HOP,
        IPProtocol.ROUTING,
        IPProtocol.DESTINATION_OPTIONS,
        IPProtocol.MOBILITY,
        IPProtocol.HIP,
        IPProtocol.SHIM6,
    )
)
"""Extension headers laid out as next header (1 byte), then the length in 8-byte units
beyond the first 8."""
IPV6_HEADER_CHAIN: Final[frozenset[int]] = IPV6_EXTENSIONS | {IPV6_FRAGMENT, IPV6_AUTHENTICATION}
"""Every next header that is followed by another header rather than the transport:
what receiver/_fastpath.c's ipv6_header_chain() also lists (a test holds them equal)."""

# What skip_ipv6_extensions steps over: every chained header except the fragment header.
_SKIPPED: Final = IPV6_EXTENSIONS | {IPV6_AUTHENTICATION}


def skip_ipv6_extensions(
    data: bytes | bytearray, next_header: int, position: int, end: int
) -> tuple[int, int]:
    """Step over IPv6 extension headers up to the transport header or a fragment header.

    ``next_header`` names the header at ``position`` (40 bytes after the IPv6 header's
    start, for the first); ``end`` is where the packet ends. Returns the next header
    where the walk stopped and where that header starts: a transport protocol, or
    :data:`IPV6_FRAGMENT` (what to do with a fragment is the caller's: look past a first
    one, reassemble...; its 8 bytes are not checked). The position is -1 when the headers
    run past ``end``; the next header is then the one that does, or the one after a
    header whose length runs past ``end``.
    """
    # Every header is at least 8 bytes: the walk ends within the packet. Literals rather
    # than the named constants: the decoder runs this per packet with extension headers.
    while next_header in _SKIPPED:
        if position + 8 > end:
            return next_header, -1
        following = data[position]
        if next_header == 51:
            position += (data[position + 1] + 2) * 4
        else:
            position += (data[position + 1] + 1) * 8
        next_header = following
    if position > end:
        return next_header, -1
    return next_header, position


def ipv6_transport(
    data: bytes | bytearray, next_header: int, position: int, end: int
) -> tuple[int, int]:
    """The transport protocol of an IPv6 packet and where its header starts, looking
    through extension headers and the fragment header of a first fragment.

    Arguments as :func:`skip_ipv6_extensions`. For a fragment other than the first
    (whose transport header is in the first), returns :data:`IPV6_FRAGMENT` and where the
    fragment header starts; the position is -1 when the headers run past ``end``.
    """
    next_header, position = skip_ipv6_extensions(data, next_header, position, end)
    while next_header == 44 and position >= 0:
        if position + 8 > end:
            return next_header, -1
        if (data[position + 2] << 8 | data[position + 3]) >> 3:
            return next_header, position
        next_header, position = skip_ipv6_extensions(data, data[position], position + 8, end)
    return next_header, position


def transport(data: bytes | bytearray, start: int, end: int) -> tuple[int, int] | None:
    """``(protocol, where the transport header starts)`` of the IPv4 or IPv6 packet in
    ``data[start:end]``, None when it is not one (or is cut inside its fixed header).

    The position is -1 when the packet does not hold the transport header: a fragment
    other than the first (the protocol is then its fragment header's next header), or
    IPv6 extension headers that run past ``end`` (the protocol is then the header that
    does). It may be up to ``end``: read ports with :func:`ports`.
    """
    if start >= end:
        return None
    version = data[start] >> 4
    if version == 4:
        if start + 20 > end:
            return None
        header_length = (data[start] & 0x0F) * 4
        if header_length < 20 or (data[start + 6] & 0x1F) << 8 | data[start + 7]:
            return data[start + 9], -1
        return data[start + 9], start + header_length
    if version == 6:
        if start + 40 > end:
            return None
        next_header = data[start + 6]
        if next_header not in IPV6_HEADER_CHAIN:
            return next_header, start + 40
        next_header, position = ipv6_transport(data, next_header, start + 40, end)
        if next_header == 44 and position >= 0:
            return data[position], -1
        return next_header, position
    return None


def ports(
    data: bytes | bytearray, protocol: int, position: int, end: int
) -> tuple[int, int] | None:
    """The source and destination port of the transport header at ``position`` (as
    :func:`transport` gives it), None when ``protocol`` has none or they are not there."""
    if position < 0 or position + 4 > end or protocol not in PORT_PROTOCOLS:
        return None
    return data[position] << 8 | data[position + 1], data[position + 2] << 8 | data[position + 3]


HIGHEST_ASSIGNED_IP_PROTOCOL: Final = 146


def assigned_ip_protocol(proto: int | None) -> bool:
    """Whether IANA has assigned ``proto`` (or kept it for experiments, 253 and 254):
    IPv6 has no header checksum, and this is the next best sign that a header is real."""
    return proto is not None and (proto <= HIGHEST_ASSIGNED_IP_PROTOCOL or proto in (253, 254))


def ipv4_header_checksum_ok(data: bytes | bytearray, offset: int) -> bool:
    """Whether the IPv4 header at ``offset`` sums to its checksum (the caller has
    checked that the header, by its own length, is in ``data``).

    The one's-complement sum of the header's 16-bit words folds to 0xFFFF exactly when
    the words are not all zero and their sum is a multiple of 0xFFFF. Read as one
    big-endian integer, the header is congruent to that sum modulo 0xFFFF (each word
    is weighted by a power of 0x10000, which is 1 modulo 0xFFFF), so one conversion and
    one remainder do the check: 0.2 us per header, where unpacking and summing the
    words measured 0.53 us (``manage.py decode`` checks every datagram's).
    """
    header = int.from_bytes(data[offset : offset + (data[offset] & 15) * 4], "big")
    return header != 0 and header % 0xFFFF == 0
