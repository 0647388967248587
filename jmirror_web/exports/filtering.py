"""Which stored files and packets an export keeps: the request's window narrowed to each
session's own, the files whose recorded times meet it, and the packet filter (addresses,
ports, IP protocols) tested on the mirrored (inner) packet of each stored record: the IP
packet itself (raw IP), inside PPP (jmirror), or inside Ethernet after any VLAN tags
(CN2).

:func:`matcher` runs once per stored packet when a filter is set: it stays one closure
over module globals, with the port check inline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from jmirror_web.exports.request import PacketFilter, SourceFile, Window
from receiver.contrail import (
    ETHERNET_HEADER,
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    ETHERTYPE_QINQ,
    ETHERTYPE_QINQ_LEGACY,
    ETHERTYPE_VLAN,
    MAX_VLAN_TAGS,
)
from receiver.ip import PORT_PROTOCOLS, transport
from receiver.jmirror import PPPProtocol
from receiver.pcap import LinkType

# Plain ints for the per-packet comparisons.
_LINKTYPE_RAW: Final = int(LinkType.RAW)
_LINKTYPE_PPP_HDLC: Final = int(LinkType.PPP_HDLC)
_LINKTYPE_ETHERNET: Final = int(LinkType.ETHERNET)
_VLAN_TAGS: Final = frozenset({ETHERTYPE_VLAN, ETHERTYPE_QINQ, ETHERTYPE_QINQ_LEGACY})
# The inner packet, for the filter.
_PPP_IPV4: Final = int(PPPProtocol.IPV4)
_PPP_IPV6: Final = int(PPPProtocol.IPV6)

# A test of one stored packet: (buffer, start, end, link type).
Match = Callable[[bytearray, int, int, int], bool]


def narrowed(window: Window, inner: Window | None) -> Window:
    """The part of ``window`` inside ``inner`` (possibly empty: start at or after end)."""
    if inner is None:
        return window
    starts = [each for each in (window.start_ns, inner.start_ns) if each is not None]
    ends = [each for each in (window.end_ns, inner.end_ns) if each is not None]
    return Window(max(starts) if starts else None, min(ends) if ends else None)


def may_meet(source: SourceFile, window: Window) -> bool:
    """False when the file's recorded times show it entirely outside the window, or the
    window is empty."""
    start, end = window.start_ns, window.end_ns
    if start is not None and end is not None and start >= end:
        return False
    before = (
        source.last_ns is not None
        and window.start_ns is not None
        and source.last_ns < window.start_ns
    )
    after = (
        source.first_ns is not None
        and window.end_ns is not None
        and source.first_ns >= window.end_ns
    )
    return not (before or after)


def matcher(packet_filter: PacketFilter) -> Match | None:
    """A test of one stored packet ``(buffer, start, end, linktype)`` against the filter,
    or None when the filter is empty (every packet wanted)."""
    if packet_filter.empty:
        return None
    addresses = frozenset(address.packed for address in packet_filter.addresses)
    ports = packet_filter.ports
    protocols = packet_filter.protocols

    def match(buffer: bytearray, start: int, end: int, linktype: int) -> bool:
        # Raw IP first: the most common, and one comparison for it.
        if linktype == _LINKTYPE_RAW:
            pass
        elif linktype == _LINKTYPE_PPP_HDLC:
            start = ppp_ip_start(buffer, start, end)
            if start < 0:
                return False
        elif linktype == _LINKTYPE_ETHERNET:
            start = _ethernet_ip_start(buffer, start, end)
            if start < 0:
                return False
        else:
            return False
        found = transport(buffer, start, end)
        if found is None:
            return False
        protocol, position = found
        if protocols and protocol not in protocols:
            return False
        if addresses:
            if buffer[start] >> 4 == 4:
                source = bytes(buffer[start + 12 : start + 16])
                destination = bytes(buffer[start + 16 : start + 20])
            else:
                source = bytes(buffer[start + 8 : start + 24])
                destination = bytes(buffer[start + 24 : start + 40])
            if source not in addresses and destination not in addresses:
                return False
        if ports:
            # What receiver.ip.ports reads, inline: this runs per stored packet.
            if position < 0 or position + 4 > end or protocol not in PORT_PROTOCOLS:
                return False
            if (
                buffer[position] << 8 | buffer[position + 1] not in ports
                and buffer[position + 2] << 8 | buffer[position + 3] not in ports
            ):
                return False
        return True

    return match


def ppp_ip_start(buffer: bytearray, start: int, end: int) -> int:
    """Where the IP packet in a stored PPP frame starts, -1 when it carries none (PPP
    control, garbage).

    PPP in HDLC framing may omit its address and control fields and shorten its protocol
    field to one byte (ACFC, PFC)."""
    if end - start >= 2 and buffer[start] == 0xFF and buffer[start + 1] == 0x03:
        start += 2
    if start >= end:
        return -1
    protocol = buffer[start]
    if protocol & 1:
        start += 1
    elif start + 2 <= end:
        protocol = protocol << 8 | buffer[start + 1]
        start += 2
    else:
        return -1
    if protocol not in (_PPP_IPV4, _PPP_IPV6):
        return -1
    return start


def carries_ip(buffer: bytearray, start: int, end: int, linktype: int) -> bool:
    """A :data:`Match` of the stored packets an IP-only pcap (``ExportFormat.PCAP_IP``)
    writes: raw IP packets, and PPP frames carrying IPv4 or IPv6."""
    if linktype == _LINKTYPE_RAW:
        return end > start
    return linktype == _LINKTYPE_PPP_HDLC and 0 <= ppp_ip_start(buffer, start, end) < end


def _ethernet_ip_start(buffer: bytearray, start: int, end: int) -> int:
    """Where the IP packet in a stored Ethernet frame (a CN2 vRouter's) starts, after any
    VLAN tags (802.1Q, 802.1ad, the older 0x9100), as ``receiver.contrail`` decodes
    them; -1 when it carries none (ARP, more than MAX_VLAN_TAGS tags, cut short)."""
    position = start + ETHERNET_HEADER - 2  # the ethertype
    for _tag in range(MAX_VLAN_TAGS + 1):
        if position + 2 > end:
            return -1
        ethertype = buffer[position] << 8 | buffer[position + 1]
        if ethertype not in _VLAN_TAGS:
            if ethertype in (ETHERTYPE_IPV4, ETHERTYPE_IPV6):
                return position + 2
            return -1
        position += 4
    return -1
