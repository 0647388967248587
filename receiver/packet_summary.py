"""One-line summaries of mirrored packets for the browser's live packet list: sans-I/O,
standard library only.

:func:`packet_row` gives what Wireshark shows in its Protocol and Info columns, where
that is cheap to work out from one packet on its own: no reassembly, no conversation
state (so TCP sequence numbers are the raw ones), and only the first DNS question.

The mirrored packet is the subscriber's traffic, so every byte of it is
attacker-controlled and ends up in a browser: every summary is built from bounds-checked
reads, never raises, and its info is printable ASCII of at most
:data:`~receiver.live_contract.INFO_LIMIT` characters. Text taken from the packet (DNS
names, PAP peer ids, HTTP request lines) has its other bytes escaped as ``\\xNN``.
Wireshark's arrow between ports is not ASCII, so ports read ``sport > dport`` as in
Wireshark before 2.0.

The live view asks for a few rows per session every 250 ms, not for every packet, so
this favours clarity over speed.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Mapping
from typing import Final

from receiver.contrail import ETHERNET_HEADER, ETHERTYPE_ARP, ContrailPacket
from receiver.ip import IPV6_FRAGMENT, PORT_PROTOCOLS, IPProtocol, ipv6_transport
from receiver.jmirror import JMirrorPacket
from receiver.live_contract import INFO_LIMIT, PacketRow

_PEER_TEXT_LIMIT: Final = 40
"""Longest rendering of one piece of packet text (peer id, message) inside the info."""
_DNS_NAME_TEXT_LIMIT: Final = 80
# A DNS name has at most 127 labels (255 bytes); anything needing more steps through
# labels and compression pointers is hostile or broken.
_DNS_NAME_STEPS: Final = 128
_DNS_NAME_MAX_BYTES: Final = 255
# An HTTP request or status line longer than this is not worth a summary.
_HTTP_LINE_SEARCH: Final = 2048


class _Malformed(Exception):
    """The packet ends before, or contradicts, a field a summary needs."""


def packet_row(time_ns: int, packet: JMirrorPacket) -> PacketRow:
    """The live list's row for ``packet``, received at ``time_ns`` (ns since the epoch).

    Never raises: a malformed or truncated packet still gets a row, whose info says so.
    """
    try:
        protocol, info = _summary(packet)
    except _Malformed:
        protocol = _FALLBACK_PROTOCOL.get(packet.inner, "unknown")
        info = f"{protocol} (malformed)"
    return PacketRow(
        time_ns=time_ns,
        src=packet.src,
        dst=packet.dst,
        sport=packet.sport,
        dport=packet.dport,
        protocol=protocol,
        length=len(packet.data),
        inner=packet.inner,
        info=_bounded(info),
    )


def contrail_packet_row(time_ns: int, packet: ContrailPacket) -> PacketRow:
    """:func:`packet_row` for a Contrail frame: its IP packet's summary (through VLAN
    tags), or its ethertype's; the direction the vRouter saw it go first."""
    start = ETHERNET_HEADER + 4 * len(packet.vlans)
    try:
        if packet.src is not None:
            protocol, info = _ip(packet.frame[start:])
        elif packet.ethertype == ETHERTYPE_ARP:
            protocol, info = _arp(packet.frame[start:])
        else:
            protocol, info = "Ethernet", f"ethertype 0x{packet.ethertype:04x}"
    except _Malformed:
        protocol = "IPv4" if packet.ethertype == 0x0800 else "Ethernet"
        info = f"{protocol} (malformed)"
    if packet.direction is not None:
        info = f"{packet.direction}: {info}"
    return PacketRow(
        time_ns=time_ns,
        src=packet.src,
        dst=packet.dst,
        sport=packet.sport,
        dport=packet.dport,
        protocol=protocol,
        length=packet.length,
        inner="ethernet",
        info=_bounded(info),
    )


def stored_frame_row(
    time_ns: int,
    linktype: int,
    data: bytes,
    src: str | None,
    dst: str | None,
    sport: int | None,
    dport: int | None,
) -> PacketRow:
    """The row of a stored Ethernet frame (a CN2 session's pcapng), its addresses and
    ports as its packet index found them: the same summary as the live list's, without
    the Juniper header's direction (that stays in the file's packet options)."""
    try:
        at = ETHERNET_HEADER
        kind = _u16(data, 12)
        while kind in (0x8100, 0x88A8):
            kind = _u16(data, at + 2)
            at += 4
        if kind in (0x0800, 0x86DD):
            protocol, info = _ip(data[at:])
        elif kind == ETHERTYPE_ARP:
            protocol, info = _arp(data[at:])
        else:
            protocol, info = "Ethernet", f"ethertype 0x{kind:04x}"
    except _Malformed:
        protocol, info = "Ethernet", "Ethernet (malformed)"
    return PacketRow(
        time_ns=time_ns,
        src=src,
        dst=dst,
        sport=sport,
        dport=dport,
        protocol=protocol,
        length=len(data),
        inner="ethernet" if linktype == 1 else f"link type {linktype}",
        info=_bounded(info),
    )


_ARP_OPERATIONS: Final = {1: "request", 2: "reply"}


def _arp(data: bytes) -> tuple[str, str]:
    """Wireshark's ARP info for IPv4 over Ethernet, the only ARP a VM sends."""
    if _u16(data, 0) != 1 or _u16(data, 2) != 0x0800 or _u8(data, 4) != 6 or _u8(data, 5) != 4:
        return "ARP", "ARP (not IPv4 over Ethernet)"
    operation = _u16(data, 6)
    if len(data) < 28:
        raise _Malformed
    sender = socket.inet_ntoa(data[14:18])
    target = socket.inet_ntoa(data[24:28])
    if operation == 1:
        return "ARP", f"Who has {target}? Tell {sender}"
    if operation == 2:
        return "ARP", f"{sender} is at {data[8:14].hex(':')}"
    return "ARP", f"ARP {_ARP_OPERATIONS.get(operation, f'operation {operation}')}"


_FALLBACK_PROTOCOL: Final[Mapping[str, str]] = {"ipv4": "IPv4", "ipv6": "IPv6", "ppp": "PPP"}


def _summary(packet: JMirrorPacket) -> tuple[str, str]:
    if packet.inner in ("ipv4", "ipv6"):
        return _ip(packet.data)
    if packet.inner == "ppp":
        return _ppp(packet.data)
    return "unknown", ""


# Reading fields: every read checks that the bytes are there.


def _u8(data: bytes, offset: int) -> int:
    if offset + 1 > len(data):
        raise _Malformed
    return data[offset]


def _u16(data: bytes, offset: int) -> int:
    if offset + 2 > len(data):
        raise _Malformed
    return int.from_bytes(data[offset : offset + 2], "big")


def _u32(data: bytes, offset: int) -> int:
    if offset + 4 > len(data):
        raise _Malformed
    return int.from_bytes(data[offset : offset + 4], "big")


def _escaped(raw: bytes, limit: int = _PEER_TEXT_LIMIT) -> str:
    """Packet text as printable ASCII: other bytes (control characters, UTF-8, NUL)
    become ``\\xNN`` and a backslash doubles, so the rendering is unambiguous."""
    pieces = []
    for byte in raw:
        if byte == 0x5C:
            pieces.append("\\\\")
        elif 0x20 <= byte < 0x7F:
            pieces.append(chr(byte))
        else:
            pieces.append(f"\\x{byte:02x}")
    text = "".join(pieces)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bounded(info: str) -> str:
    """The last line of defence: only printable ASCII, at most INFO_LIMIT characters,
    whatever a summariser produced."""
    printable = "".join(char if " " <= char <= "~" else "?" for char in info)
    if len(printable) <= INFO_LIMIT:
        return printable
    return printable[: INFO_LIMIT - 3] + "..."


# IP


# Names for the Protocol column of IP protocols summarised by name only (and for the
# protocol in a fragment's info); the rest show as "IPv4"/"IPv6" with their number.
_IP_PROTOCOL_NAMES: Final[Mapping[int, str]] = {
    1: "ICMP",
    2: "IGMP",
    4: "IPIP",
    6: "TCP",
    17: "UDP",
    33: "DCCP",
    41: "IPv6",
    47: "GRE",
    50: "ESP",
    51: "AH",
    58: "ICMPv6",
    89: "OSPF",
    103: "PIM",
    112: "VRRP",
    115: "L2TP",
    132: "SCTP",
    136: "UDP-Lite",
}


def _ip(data: bytes) -> tuple[str, str]:
    version = _u8(data, 0) >> 4
    if version == 4:
        return _ipv4(data)
    if version == 6:
        return _ipv6(data)
    raise _Malformed


def _ipv4(data: bytes) -> tuple[str, str]:
    header_length = (_u8(data, 0) & 15) * 4
    total_length = _u16(data, 2)
    identification = _u16(data, 4)
    fragment_offset = (_u16(data, 6) & 0x1FFF) * 8
    ttl = _u8(data, 8)
    proto = _u8(data, 9)
    if header_length < 20 or not header_length <= total_length <= len(data):
        raise _Malformed
    if fragment_offset:
        # The transport header is in the first fragment only; the receiver does not
        # reassemble, so say what Wireshark says when it cannot either.
        name = _IP_PROTOCOL_NAMES.get(proto, "IP")
        return "IPv4", (
            f"Fragmented IP protocol (proto={name} {proto}, off={fragment_offset}, "
            f"ID={identification:04x})"
        )
    return _transport(proto, data[header_length:total_length], "IPv4", f"ttl={ttl}")


def _ipv6(data: bytes) -> tuple[str, str]:
    payload_length = _u16(data, 4)
    next_header = _u8(data, 6)
    hop_limit = _u8(data, 7)
    end = 40 + payload_length
    if len(data) < end:
        raise _Malformed
    data = data[:end]
    next_header, position = ipv6_transport(data, next_header, 40, end)
    if position < 0:
        raise _Malformed
    if next_header == IPV6_FRAGMENT:
        # A fragment other than the first: its transport header is in the first.
        offset_and_more = _u16(data, position + 2)
        identification = _u32(data, position + 4)
        more = "y" if offset_and_more & 1 else "n"
        return "IPv6", (
            f"IPv6 fragment (off={offset_and_more & 0xFFF8} more={more} "
            f"ident=0x{identification:08x} nxt={data[position]})"
        )
    if next_header == IPProtocol.NO_NEXT_HEADER:
        return "IPv6", "IPv6 no next header"
    return _transport(next_header, data[position:], "IPv6", f"hop limit={hop_limit}")


def _transport(proto: int, segment: bytes, ip_name: str, hop_limit: str) -> tuple[str, str]:
    """The summary of the transport ``segment`` (everything after the IP headers).
    ``hop_limit`` is the IP TTL or hop limit as the ping summaries show it."""
    name = _IP_PROTOCOL_NAMES.get(proto)
    try:
        if proto == 6:
            return _tcp(segment)
        if proto == 17:
            return _udp(segment)
        if proto == 1:
            return "ICMP", _icmp(segment, hop_limit)
        if proto == 58:
            return "ICMPv6", _icmpv6(segment, hop_limit)
        if proto == 50:
            return "ESP", f"ESP (SPI=0x{_u32(segment, 0):08x})"
        if proto == 51:
            return "AH", f"AH (SPI=0x{_u32(segment, 4):08x})"
        if name is not None and proto in PORT_PROTOCOLS:
            return name, f"{_u16(segment, 0)} > {_u16(segment, 2)}"
    except _Malformed:
        return name or ip_name, f"{name or ip_name} (malformed)"
    if name is None:
        return ip_name, f"IP protocol {proto}"
    return name, ""


# TCP and HTTP

_TCP_FLAG_NAMES: Final = (
    (0x001, "FIN"),
    (0x002, "SYN"),
    (0x004, "RST"),
    (0x008, "PSH"),
    (0x010, "ACK"),
    (0x020, "URG"),
    (0x040, "ECE"),
    (0x080, "CWR"),
    (0x100, "AE"),
)
_TCP_ACK: Final = 0x010
_TCP_URG: Final = 0x020

# Only a complete request or status line counts: a payload that starts so is HTTP
# whatever the port, and anything less would be guessing.
_HTTP_REQUEST_LINE: Final = re.compile(
    rb"(?:GET|POST|HEAD|PUT|DELETE|OPTIONS|PATCH|CONNECT|TRACE) [^ \r\n]+ HTTP/1\.[01]"
)
_HTTP_STATUS_LINE: Final = re.compile(rb"HTTP/1\.[01] [1-5][0-9][0-9](?: [^\r\n]*)?")


def _tcp(segment: bytes) -> tuple[str, str]:
    sport = _u16(segment, 0)
    dport = _u16(segment, 2)
    sequence = _u32(segment, 4)
    acknowledgement = _u32(segment, 8)
    offset_and_flags = _u16(segment, 12)
    window = _u16(segment, 14)
    urgent = _u16(segment, 18)
    header_length = (offset_and_flags >> 12) * 4
    if not 20 <= header_length <= len(segment):
        raise _Malformed
    flags = offset_and_flags & 0x1FF
    payload = segment[header_length:]
    http_line = _http_first_line(payload)
    if http_line is not None:
        return "HTTP", _escaped(http_line, INFO_LIMIT)
    hello = _tls_hello(payload)
    if hello is not None:
        return hello
    names = ", ".join(name for bit, name in _TCP_FLAG_NAMES if flags & bit) or "<None>"
    fields = [f"{sport} > {dport} [{names}] Seq={sequence}"]
    if flags & _TCP_ACK:
        fields.append(f"Ack={acknowledgement}")
    fields.append(f"Win={window}")
    if flags & _TCP_URG:
        fields.append(f"Urg={urgent}")
    fields.append(f"Len={len(payload)}")
    return "TCP", " ".join(fields)


# TLS record versions as Wireshark's protocol column names them.
_TLS_VERSIONS: Final = {0x0300: "SSLv3", 0x0301: "TLSv1", 0x0302: "TLSv1.1", 0x0303: "TLSv1.2"}


def _tls_hello(payload: bytes) -> tuple[str, str] | None:
    """A TLS record starting with a Client or Server Hello, as Wireshark names it: the
    protocol by the record's version (a Server Hello's by the version it chose), "Client
    Hello" with its server name (SNI) when it carries one, "Server Hello". None for
    anything else (the segment is then summarised as TCP)."""
    if len(payload) < 11 or payload[0] != 0x16 or payload[1] != 0x03:
        return None
    kind = payload[5]
    if kind not in (1, 2):
        return None
    if kind == 2:
        version = _TLS_VERSIONS.get(_u16(payload, 9))
        return (version, "Server Hello") if version else None
    version = _TLS_VERSIONS.get(_u16(payload, 1))
    if version is None:
        return None
    name = tls_server_name(payload)
    shown = f" (SNI={_escaped(name, _DNS_NAME_TEXT_LIMIT)})" if name else ""
    return version, "Client Hello" + shown


def tls_server_name(payload: bytes) -> bytes:
    """The host name of the server_name extension (RFC 6066) of a ClientHello record at
    the start of ``payload``, as sent; b"" when there is none whole in this segment (or
    it is not a ClientHello). Never raises."""
    try:
        return _tls_server_name(payload)
    except _Malformed:
        return b""


def _tls_server_name(payload: bytes) -> bytes:
    if len(payload) < 9 or payload[0] != 0x16 or payload[5] != 1:
        return b""
    hello = payload[: min(len(payload), 5 + _u16(payload, 3))]
    at = 9 + 2 + 32  # record header, handshake header, version, random
    at += 1 + _u8(hello, at)  # session id
    at += 2 + _u16(hello, at)  # cipher suites
    at += 1 + _u8(hello, at)  # compression methods
    extensions_end = min(len(hello), at + 2 + _u16(hello, at))
    at += 2
    while at + 4 <= extensions_end:
        kind, length = _u16(hello, at), _u16(hello, at + 2)
        at += 4
        if kind == 0:
            list_end = min(at + length, at + 2 + _u16(hello, at))
            at += 2
            while at + 3 <= list_end:
                name_type, name_length = _u8(hello, at), _u16(hello, at + 1)
                raw = hello[at + 3 : at + 3 + name_length]
                if name_type == 0 and len(raw) == name_length:
                    return raw
                at += 3 + name_length
            return b""
        at += length
    return b""


def _http_first_line(payload: bytes) -> bytes | None:
    line_end = payload.find(b"\r\n", 0, _HTTP_LINE_SEARCH)
    if line_end < 0:
        return None
    line = payload[:line_end]
    if _HTTP_REQUEST_LINE.fullmatch(line) or _HTTP_STATUS_LINE.fullmatch(line):
        return line
    return None


# UDP and DNS

_DNS_PORT: Final = 53


def _udp(segment: bytes) -> tuple[str, str]:
    sport = _u16(segment, 0)
    dport = _u16(segment, 2)
    udp_length = _u16(segment, 4)
    # The UDP length bounds the payload when it is consistent (IP may carry padding);
    # a longer one is a first fragment's, whose Len is the whole datagram's, as
    # Wireshark shows it.
    payload = segment[8:udp_length] if 8 <= udp_length <= len(segment) else segment[8:]
    if _DNS_PORT in (sport, dport) and payload:
        return "DNS", _dns(payload)
    payload_length = udp_length - 8 if udp_length >= 8 else len(payload)
    return "UDP", f"{sport} > {dport} Len={payload_length}"


_DNS_OPCODES: Final[Mapping[int, str]] = {
    0: "Standard query",
    1: "Inverse query",
    2: "Server status request",
    4: "Zone change notification",
    5: "Dynamic update",
    6: "DNS Stateful operations (DSO)",
}
_DNS_RCODES: Final[Mapping[int, str]] = {
    1: "Format error",
    2: "Server failure",
    3: "No such name",
    4: "Not implemented",
    5: "Refused",
    6: "Name exists",
    7: "RRset exists",
    8: "RRset does not exist",
    9: "Not authoritative",
    10: "Name out of zone",
}
_DNS_TYPES: Final[Mapping[int, str]] = {
    1: "A",
    2: "NS",
    5: "CNAME",
    6: "SOA",
    12: "PTR",
    13: "HINFO",
    15: "MX",
    16: "TXT",
    28: "AAAA",
    33: "SRV",
    35: "NAPTR",
    39: "DNAME",
    41: "OPT",
    43: "DS",
    46: "RRSIG",
    47: "NSEC",
    48: "DNSKEY",
    50: "NSEC3",
    52: "TLSA",
    64: "SVCB",
    65: "HTTPS",
    99: "SPF",
    251: "IXFR",
    252: "AXFR",
    255: "ANY",
    257: "CAA",
}


def _dns(message: bytes) -> str:
    """The DNS info: operation, id, error if any, and the first question."""
    try:
        identifier = _u16(message, 0)
        flags = _u16(message, 2)
        question_count = _u16(message, 4)
        if len(message) < 12:
            raise _Malformed
        opcode = (flags >> 11) & 15
        text = _DNS_OPCODES.get(opcode, f"Unknown operation ({opcode})")
        if flags & 0x8000:
            text += " response"
        text += f" 0x{identifier:04x}"
        rcode = flags & 15
        if flags & 0x8000 and rcode:
            text += " " + _DNS_RCODES.get(rcode, f"Unknown error ({rcode})")
        if question_count:
            name, position = _dns_name(message, 12)
            question_type = _u16(message, position)
            _u16(message, position + 2)  # the class: a question without one is cut short
            type_name = _DNS_TYPES.get(question_type, f"Unknown ({question_type})")
            text += f" {type_name} {name}"
    except _Malformed:
        return "DNS (malformed)"
    return text


def _dns_name(message: bytes, position: int) -> tuple[str, int]:
    """The name at ``position`` as text, and where what follows it starts.

    Compression pointers must point backwards (RFC 1035 says to a prior occurrence),
    which rules out loops; the step limit bounds the work regardless."""
    labels: list[str] = []
    name_bytes = 0
    after_name: int | None = None
    for _ in range(_DNS_NAME_STEPS):
        length = _u8(message, position)
        if length == 0:
            if after_name is None:
                after_name = position + 1
            return ".".join(labels) or "<Root>", after_name
        if length & 0xC0 == 0xC0:
            target = _u16(message, position) & 0x3FFF
            if after_name is None:
                after_name = position + 2
            if target >= position:
                raise _Malformed
            position = target
        elif length & 0xC0:
            raise _Malformed  # extended label types (RFC 6891) never made it
        else:
            label = message[position + 1 : position + 1 + length]
            name_bytes += length + 1
            if len(label) < length or name_bytes > _DNS_NAME_MAX_BYTES:
                raise _Malformed
            labels.append(_escaped(label, _DNS_NAME_TEXT_LIMIT))
            position += 1 + length
    raise _Malformed


# ICMP and ICMPv6

_ICMP_QUERIES: Final[Mapping[int, str]] = {
    0: "Echo (ping) reply",
    8: "Echo (ping) request",
    13: "Timestamp request",
    14: "Timestamp reply",
    15: "Information request",
    16: "Information reply",
    17: "Address mask request",
    18: "Address mask reply",
}
_ICMP_ERRORS: Final[Mapping[int, tuple[str, Mapping[int, str]]]] = {
    3: (
        "Destination unreachable",
        {
            0: "Network unreachable",
            1: "Host unreachable",
            2: "Protocol unreachable",
            3: "Port unreachable",
            4: "Fragmentation needed",
            5: "Source route failed",
            6: "Destination network unknown",
            7: "Destination host unknown",
            8: "Source host isolated",
            9: "Network administratively prohibited",
            10: "Host administratively prohibited",
            11: "Network unreachable for TOS",
            12: "Host unreachable for TOS",
            13: "Communication administratively filtered",
            14: "Host precedence violation",
            15: "Precedence cutoff in effect",
        },
    ),
    5: (
        "Redirect",
        {
            0: "Redirect for network",
            1: "Redirect for host",
            2: "Redirect for TOS and network",
            3: "Redirect for TOS and host",
        },
    ),
    11: (
        "Time-to-live exceeded",
        {0: "Time to live exceeded in transit", 1: "Fragment reassembly time exceeded"},
    ),
    12: (
        "Parameter problem",
        {0: "Pointer indicates the error", 1: "Required option missing", 2: "Bad length"},
    ),
}
_ICMP_OTHERS: Final[Mapping[int, str]] = {
    4: "Source quench (flow control)",
    9: "Router advertisement",
    10: "Router solicitation",
}


def _icmp(message: bytes, hop_limit: str) -> str:
    icmp_type = _u8(message, 0)
    code = _u8(message, 1)
    query = _ICMP_QUERIES.get(icmp_type)
    if query is not None:
        return f"{query} id=0x{_u16(message, 4):04x}, seq={_u16(message, 6)}, {hop_limit}"
    error = _ICMP_ERRORS.get(icmp_type)
    if error is not None:
        name, codes = error
        return f"{name} ({codes.get(code, f'Unknown code: {code}')})"
    other = _ICMP_OTHERS.get(icmp_type)
    if other is not None:
        return other
    return f"Unknown ICMP (type={icmp_type}, code={code})"


_ICMPV6_ECHO: Final[Mapping[int, str]] = {
    128: "Echo (ping) request",
    129: "Echo (ping) reply",
}
_ICMPV6_ERRORS: Final[Mapping[int, tuple[str, Mapping[int, str]]]] = {
    1: (
        "Destination Unreachable",
        {
            0: "no route to destination",
            1: "Administratively prohibited",
            2: "Beyond scope of source address",
            3: "Address unreachable",
            4: "Port unreachable",
            5: "Source address failed ingress/egress policy",
            6: "Reject route to destination",
            7: "Error in Source Routing Header",
        },
    ),
    3: (
        "Time Exceeded",
        {0: "hop limit exceeded in transit", 1: "fragment reassembly time exceeded"},
    ),
    4: (
        "Parameter Problem",
        {
            0: "erroneous header field encountered",
            1: "unrecognized Next Header type encountered",
            2: "unrecognized IPv6 option encountered",
            3: "IPv6 First Fragment has incomplete IPv6 Header Chain",
        },
    ),
}
_ICMPV6_OTHERS: Final[Mapping[int, str]] = {
    2: "Packet Too Big",
    130: "Multicast Listener Query",
    131: "Multicast Listener Report",
    132: "Multicast Listener Done",
    133: "Router Solicitation",
    134: "Router Advertisement",
    137: "Redirect",
    143: "Multicast Listener Report Message v2",
}
_NEIGHBOR_SOLICITATION: Final = 135
_NEIGHBOR_ADVERTISEMENT: Final = 136
_NEIGHBOR_ADVERTISEMENT_FLAGS: Final = ((0x80, "rtr"), (0x40, "sol"), (0x20, "ovr"))


def _icmpv6(message: bytes, hop_limit: str) -> str:
    icmp_type = _u8(message, 0)
    code = _u8(message, 1)
    echo = _ICMPV6_ECHO.get(icmp_type)
    if echo is not None:
        return f"{echo} id=0x{_u16(message, 4):04x}, seq={_u16(message, 6)}, {hop_limit}"
    error = _ICMPV6_ERRORS.get(icmp_type)
    if error is not None:
        name, codes = error
        return f"{name} ({codes.get(code, f'Unknown ({code})')})"
    if icmp_type in (_NEIGHBOR_SOLICITATION, _NEIGHBOR_ADVERTISEMENT):
        if len(message) < 24:
            raise _Malformed
        target = socket.inet_ntop(socket.AF_INET6, message[8:24])
        if icmp_type == _NEIGHBOR_SOLICITATION:
            return f"Neighbor Solicitation for {target}"
        flags = message[4]
        names = ", ".join(name for bit, name in _NEIGHBOR_ADVERTISEMENT_FLAGS if flags & bit)
        return f"Neighbor Advertisement {target} ({names or 'none'})"
    return _ICMPV6_OTHERS.get(icmp_type, f"Unknown ({icmp_type})")


# PPP

_PPP_IPV4: Final = 0x0021
_PPP_IPV6: Final = 0x0057
_PPP_MPLS: Final = frozenset({0x0281, 0x0283})
_PPP_LQR: Final = 0xC025
_PPP_PAP: Final = 0xC023
_PPP_CHAP: Final = 0xC223
_PPP_EAP: Final = 0xC227

# RFC 1661's codes, named as Wireshark names them; the Network Control Protocols use
# the first seven, CCP adds its two resets (RFC 1962).
_CONTROL_CODES: Final[Mapping[int, str]] = {
    1: "Configuration Request",
    2: "Configuration Ack",
    3: "Configuration Nak",
    4: "Configuration Reject",
    5: "Termination Request",
    6: "Termination Ack",
    7: "Code Reject",
    8: "Protocol Reject",
    9: "Echo Request",
    10: "Echo Reply",
    11: "Discard Request",
    12: "Identification",
    13: "Time Remaining",
}
_NCP_CODES: Final[Mapping[int, str]] = {code: _CONTROL_CODES[code] for code in range(1, 8)}
_CCP_CODES: Final[Mapping[int, str]] = {**_NCP_CODES, 14: "Reset Request", 15: "Reset Ack"}
# Protocol column text (as Wireshark's) and code names of each control protocol.
_CONTROL_PROTOCOLS: Final[Mapping[int, tuple[str, Mapping[int, str]]]] = {
    0xC021: ("PPP LCP", _CONTROL_CODES),
    0x8021: ("PPP IPCP", _NCP_CODES),
    0x8057: ("PPP IPV6CP", _NCP_CODES),
    0x80FD: ("PPP CCP", _CCP_CODES),
    0x8281: ("PPP MPLSCP", _NCP_CODES),
}


def _ppp(data: bytes) -> tuple[str, str]:
    if _u8(data, 0) != 0xFF or _u8(data, 1) != 0x03:
        raise _Malformed
    # Protocol-field compression (RFC 1661): a one-byte protocol is odd, the first byte
    # of a two-byte one even; the decoder reads it the same way.
    if _u8(data, 2) & 1:
        ppp_protocol, body = data[2], data[3:]
    else:
        ppp_protocol, body = _u16(data, 2), data[4:]
    if ppp_protocol in (_PPP_IPV4, _PPP_IPV6):
        return _ip(body)
    control = _CONTROL_PROTOCOLS.get(ppp_protocol)
    if control is not None:
        name, codes = control
        return name, _guarded(name, lambda: codes.get(_control_packet(body)[0], "Unknown"))
    if ppp_protocol == _PPP_PAP:
        return "PPP PAP", _guarded("PPP PAP", lambda: _pap(body))
    if ppp_protocol == _PPP_CHAP:
        return "PPP CHAP", _guarded("PPP CHAP", lambda: _chap(body))
    if ppp_protocol == _PPP_EAP:
        return "EAP", _guarded("EAP", lambda: _eap(body))
    if ppp_protocol == _PPP_LQR:
        return "PPP LQR", "Link Quality Report"
    if ppp_protocol in _PPP_MPLS:
        return "MPLS", "MPLS Label Switched Packet"
    return "PPP", f"Unknown protocol 0x{ppp_protocol:04x}"


def _guarded(name: str, summarise: Callable[[], str]) -> str:
    try:
        return summarise()
    except _Malformed:
        return f"{name} (malformed)"


def _control_packet(body: bytes) -> tuple[int, bytes]:
    """Code and data of a code(1) identifier(1) length(2) packet; its length must fit
    in what was mirrored (jmirror carries no FCS, padding is cut off)."""
    code = _u8(body, 0)
    length = _u16(body, 2)
    if not 4 <= length <= len(body):
        raise _Malformed
    return code, body[4:length]


def _quoted(raw: bytes) -> str:
    return "'" + _escaped(raw) + "'"


def _pap(body: bytes) -> str:
    code, data = _control_packet(body)
    if code == 1:
        peer_id_length = _u8(data, 0)
        peer_id = data[1 : 1 + peer_id_length]
        if len(peer_id) < peer_id_length:
            raise _Malformed
        # Unlike Wireshark, no password: the live list is seen by more people than the
        # evidence, and the request is recognisable without it.
        return f"Authenticate-Request (Peer-ID={_quoted(peer_id)})"
    if code in (2, 3):
        message_length = _u8(data, 0)
        message = data[1 : 1 + message_length]
        if len(message) < message_length:
            raise _Malformed
        verdict = "Ack" if code == 2 else "Nak"
        return f"Authenticate-{verdict} (Message={_quoted(message)})"
    return "Unknown"


def _chap(body: bytes) -> str:
    code, data = _control_packet(body)
    if code in (1, 2):
        value_size = _u8(data, 0)
        if 1 + value_size > len(data):
            raise _Malformed
        kind = "Challenge" if code == 1 else "Response"
        return f"{kind} (NAME={_quoted(data[1 + value_size :])})"
    if code in (3, 4):
        verdict = "Success" if code == 3 else "Failure"
        return f"{verdict} (MESSAGE={_quoted(data)})"
    return "Unknown"


_EAP_CODES: Final[Mapping[int, str]] = {
    1: "Request",
    2: "Response",
    3: "Success",
    4: "Failure",
    5: "Initiate",
    6: "Finish",
}
_EAP_TYPES: Final[Mapping[int, str]] = {
    1: "Identity",
    2: "Notification",
    3: "Legacy Nak",
    4: "MD5-Challenge",
    13: "TLS",
    21: "TTLS",
    25: "PEAP",
    26: "MSCHAPv2",
}


def _eap(body: bytes) -> str:
    code, data = _control_packet(body)
    name = _EAP_CODES.get(code, "Unknown")
    if code in (1, 2):
        eap_type = _u8(data, 0)
        return f"{name}, {_EAP_TYPES.get(eap_type, f'type {eap_type}')}"
    return name
