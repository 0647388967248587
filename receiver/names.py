"""The names one stored packet carries: DNS questions and A/AAAA answers, the server name
of a TLS ClientHello (SNI), the Host header of an HTTP request. Sans-I/O, standard
library only.

The packets are the subscriber's traffic, so every byte is attacker-controlled and a name
ends up in a browser and a search: every read is bounds-checked, :func:`names_in` never
raises, a name is printable ASCII (other bytes escaped as ``\\xNN`` by the packet
summaries' rules, then lower-cased: DNS and HTTP hosts are case-insensitive) of at most
:data:`NAME_LIMIT` characters, and a packet gives at most :data:`NAMES_PER_PACKET` names.
One packet at a time: no TCP reassembly, so a ClientHello or request split over segments
gives what its first segment holds.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final, Literal

from receiver.ip import transport
from receiver.packet_summary import _dns_name, _escaped, _Malformed, _u16
from receiver.packet_summary import tls_server_name as summary_server_name

NameKind = Literal["dns-query", "dns-answer", "tls-sni", "http-host"]
NAME_KINDS: Final[tuple[NameKind, ...]] = ("dns-query", "dns-answer", "tls-sni", "http-host")
NAME_LIMIT: Final = 253
"""Longest name kept, in characters (a DNS name's longest text form)."""
NAMES_PER_PACKET: Final = 32
_DNS_QUESTIONS: Final = 4
_DNS_RECORDS: Final = 64  # answer records looked at per response
_HTTP_HEADER_SEARCH: Final = 4096
_HTTP_METHODS: Final = (
    b"GET ",
    b"POST ",
    b"HEAD ",
    b"PUT ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
)
_LINKTYPE_ETHERNET: Final = 1
_LINKTYPE_PPP_HDLC: Final = 50
_LINKTYPE_RAW: Final = 101
_MAX_VLAN_TAGS: Final = 8


@dataclass(frozen=True)
class SeenName:
    """A name in a packet, and the address it goes with: for a DNS answer the address
    it resolves to, else the server's (the packet's destination; a response's source)."""

    kind: NameKind
    name: str
    address: str


def _text(raw: bytes) -> str:
    return _bounded(_escaped(raw, 4 * NAME_LIMIT))


def _bounded(name: str) -> str:
    name = name.strip().rstrip(".").lower()
    return name if len(name) <= NAME_LIMIT else name[: NAME_LIMIT - 3] + "..."


def _ip_start(linktype: int, data: bytes) -> int:
    """Where the IP header starts in a frame of ``linktype``; -1 when it is not IP."""
    n = len(data)
    if linktype == _LINKTYPE_RAW:
        return 0
    if linktype == _LINKTYPE_PPP_HDLC:
        at = 2 if n >= 2 and data[0] == 0xFF and data[1] == 0x03 else 0
        if at < n and data[at] & 1:
            protocol, at = data[at], at + 1
        elif at + 2 <= n:
            protocol, at = (data[at] << 8) | data[at + 1], at + 2
        else:
            return -1
        return at if protocol in (0x21, 0x57) else -1
    if linktype == _LINKTYPE_ETHERNET:
        if n < 14:
            return -1
        at = 12
        kind = (data[at] << 8) | data[at + 1]
        tags = 0
        while tags < _MAX_VLAN_TAGS and kind in (0x8100, 0x88A8) and at + 6 <= n:
            at += 4
            kind = (data[at] << 8) | data[at + 1]
            tags += 1
        return at + 2 if kind in (0x0800, 0x86DD) else -1
    return -1


def _addresses(data: bytes, start: int) -> tuple[str, str, int]:
    """Source, destination and where the packet ends (its own length, not the frame's)."""
    if data[start] >> 4 == 4:
        total = int.from_bytes(data[start + 2 : start + 4], "big")
        end = min(len(data), start + total) if total >= 20 else len(data)
        return (
            str(ipaddress.IPv4Address(data[start + 12 : start + 16])),
            str(ipaddress.IPv4Address(data[start + 16 : start + 20])),
            end,
        )
    payload = int.from_bytes(data[start + 4 : start + 6], "big")
    return (
        str(ipaddress.IPv6Address(data[start + 8 : start + 24])),
        str(ipaddress.IPv6Address(data[start + 24 : start + 40])),
        min(len(data), start + 40 + payload),
    )


def names_in(linktype: int, data: bytes) -> list[SeenName]:
    """The names in one stored frame of ``linktype``; [] for anything else, never an
    exception."""
    try:
        return _names(linktype, data)[:NAMES_PER_PACKET]
    except (_Malformed, IndexError, ValueError):
        return []


def _names(linktype: int, data: bytes) -> list[SeenName]:
    start = _ip_start(linktype, data)
    if start < 0 or start >= len(data):
        return []
    found = transport(data, start, len(data))
    if found is None or found[1] < 0:
        return []
    protocol, at = found
    source, destination, end = _addresses(data, start)
    if protocol == 17 and at + 8 <= end:
        sport, dport = _u16(data, at), _u16(data, at + 2)
        if 53 in (sport, dport):
            return dns_names(data[at + 8 : end], source, destination)
    elif protocol == 6 and at + 20 <= end:
        header = (data[at + 12] >> 4) * 4
        if header < 20 or at + header > end:
            return []
        payload = data[at + header : end]
        if payload[:1] == b"\x16":
            name = tls_server_name(payload)
            return [SeenName("tls-sni", name, destination)] if name else []
        if payload.startswith(_HTTP_METHODS):
            host = http_host(payload)
            return [SeenName("http-host", host, destination)] if host else []
    return []


def _dns_text(message: bytes, position: int) -> tuple[str, int]:
    name, after = _dns_name(message, position)
    return ("" if name == "<Root>" else _bounded(name)), after


def dns_names(message: bytes, source: str, destination: str) -> list[SeenName]:
    """A query's questions (with the resolver's address), a response's A and AAAA
    answers (with the address each gives); [] where the message ends early or
    contradicts itself."""
    try:
        return _dns_names(message, destination)
    except (_Malformed, IndexError, ValueError):
        return []


def _dns_names(message: bytes, destination: str) -> list[SeenName]:
    if len(message) < 12:
        return []
    flags = _u16(message, 2)
    questions, answers = _u16(message, 4), _u16(message, 6)
    response = bool(flags & 0x8000)
    position = 12
    found: list[SeenName] = []
    asked: list[str] = []
    for _ in range(min(questions, _DNS_QUESTIONS)):
        name, position = _dns_text(message, position)
        position += 4  # type and class
        if name:
            asked.append(name)
            if not response:
                found.append(SeenName("dns-query", name, destination))
    if not response or questions > _DNS_QUESTIONS:
        return found
    for _ in range(min(answers, _DNS_RECORDS)):
        name, position = _dns_text(message, position)
        record_type = _u16(message, position)
        length = _u16(message, position + 8)
        rdata = message[position + 10 : position + 10 + length]
        if len(rdata) < length:
            break
        position += 10 + length
        if not name:
            continue
        if record_type == 1 and length == 4:
            address = str(ipaddress.IPv4Address(rdata))
        elif record_type == 28 and length == 16:
            address = str(ipaddress.IPv6Address(rdata))
        else:
            continue
        found.append(SeenName("dns-answer", name, address))
        # Through CNAMEs the address record is the alias's: the name asked resolved to
        # it too, and is what an analyst searches for.
        found += [SeenName("dns-answer", each, address) for each in asked if each != name]
    return found


def tls_server_name(payload: bytes) -> str:
    """The host name of a ClientHello's server_name extension (RFC 6066), "" if none is
    in this segment (or it is not one)."""
    raw = summary_server_name(payload)
    return _text(raw) if raw else ""


def http_host(payload: bytes) -> str:
    """The Host header of the request at the start of ``payload``, "" if none is in the
    first :data:`_HTTP_HEADER_SEARCH` bytes."""
    head = payload[:_HTTP_HEADER_SEARCH]
    end = head.find(b"\r\n\r\n")
    lines = (head if end < 0 else head[:end]).split(b"\r\n")[1:]
    for line in lines:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"host":
            return _text(value.strip())
    return ""
