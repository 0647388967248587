"""Decoding of Juniper packet-mirror ("jmirror") datagrams: sans-I/O, no Django.

A router wraps every mirrored packet in a UDP datagram whose payload is::

    +0  | V (2 bits) | intercept id (30 bits) |   big-endian; V and the id together are
    +4  | session id (32 bits)                |   Wireshark's jmirror.mid
    +8  | mirrored packet: IPv4 | IPv6 | PPP in HDLC-like framing (FF 03 <proto16> ...)

:func:`decode_datagram` turns one such payload into a :class:`JMirrorPacket` or raises
:class:`DecodeError`; :func:`looks_like_jmirror` says whether an arbitrary UDP payload
is jmirror at all, for captures whose mediation port is not known.

``decode_datagram`` runs once per received packet, so it is written as flat code with
precompiled structs and no helper calls on the IPv4 path; everything else here favours
clarity.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from types import SimpleNamespace
from typing import Final, Literal

from receiver.ip import (
    IPV6_AUTHENTICATION,
    IPV6_FRAGMENT,
    IPV6_HEADER_CHAIN,
    PORT_PROTOCOLS,
    assigned_ip_protocol,
    ipv4_header_checksum_ok,
)

WIRESHARK_DEFAULT_PORT: Final = 30030
INTERCEPT_ID_MASK: Final = 0x3FFFFFFF

InnerKind = Literal["ipv4", "ipv6", "ppp", "unknown"]


class PPPProtocol(IntEnum):
    """PPP protocol numbers a subscriber's PPP session carries (RFC 1661 and IANA)."""

    IPV4 = 0x0021
    IPV6 = 0x0057
    MPLS_UNICAST = 0x0281
    MPLS_MULTICAST = 0x0283
    IPCP = 0x8021
    IPV6CP = 0x8057
    CCP = 0x80FD
    MPLSCP = 0x8281
    LCP = 0xC021
    PAP = 0xC023
    LQR = 0xC025
    CHAP = 0xC223
    EAP = 0xC227


# Control protocols share one packet layout: code(1) identifier(1) length(2) data.
# The highest code each one defines bounds what a real packet can carry.
_PPP_CONTROL_MAX_CODE: Final[dict[int, int]] = {
    PPPProtocol.LCP: 15,
    PPPProtocol.IPCP: 7,
    PPPProtocol.IPV6CP: 7,
    PPPProtocol.CCP: 15,
    PPPProtocol.MPLSCP: 7,
    PPPProtocol.PAP: 3,
    PPPProtocol.CHAP: 4,
    PPPProtocol.EAP: 6,
}
# Plain ints for the per-packet comparisons: enum member lookups cost more.
_PPP_IPV4: Final = int(PPPProtocol.IPV4)
_PPP_IPV6: Final = int(PPPProtocol.IPV6)
_PPP_DATA_PROTOCOLS: Final = frozenset({PPPProtocol.MPLS_UNICAST, PPPProtocol.MPLS_MULTICAST})


class DecodeFailure(StrEnum):
    """Why a datagram is not a decodable jmirror packet (stable, machine-readable)."""

    TOO_SHORT = "too_short"
    """Fewer than the 8 bytes of the jmirror header."""
    NO_MIRRORED_PACKET = "no_mirrored_packet"
    """The header is followed by nothing."""
    TRUNCATED_INNER_HEADER = "truncated_inner_header"
    """The mirrored packet ends inside its own IP or PPP header."""
    BAD_INNER_HEADER = "bad_inner_header"
    """An inner header field is impossible (IPv4 header length below 20 bytes...)."""
    INCONSISTENT_LENGTH = "inconsistent_length"
    """The inner IP length disagrees with the bytes that follow the header: jmirror has
    no padding and no trailer, so the datagram was cut or is not jmirror (Contrail: the
    IP packet is longer than its Ethernet frame)."""
    BAD_TLV = "bad_tlv"
    """Contrail: a TLV that cannot be (a capture host or flags TLV not 4 bytes long, a
    known TLV twice, an end marker with a value)."""
    NO_END_OF_TLVS = "no_end_of_tlvs"
    """Contrail: the TLVs run to the end of the datagram without the FF 00 end marker."""
    TRUNCATED_FRAME = "truncated_frame"
    """Contrail: the mirrored frame ends inside its Ethernet header or VLAN tags."""


class DecodeError(ValueError):
    """A datagram that cannot be decoded as jmirror.

    ``reason`` is machine-readable; ``mid`` and ``sid`` are set whenever the 8-byte
    header itself was present, so a receiver can still attribute the datagram to an
    intercept (and count it there) even when the mirrored packet is damaged.
    """

    def __init__(
        self, reason: DecodeFailure, detail: str, mid: int | None = None, sid: int | None = None
    ) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.mid = mid
        self.sid = sid


# SimpleNamespace's C constructor fills the instance dict directly, under the frozen
# dataclass's __setattr__: about 0.6 us per packet where the generated __init__ of a
# frozen dataclass (one object.__setattr__ per field) costs 2 us. decode_datagram is
# the only constructor; it always passes every field.
@dataclass(frozen=True, init=False)
class JMirrorPacket(SimpleNamespace):
    """One decoded jmirror datagram.

    ``src``, ``dst`` and ``proto`` describe the mirrored IP packet (also when PPP
    carries it) and are ``None`` when there is no IP packet (LCP, PAP...). ``proto`` is
    the transport protocol after any IPv6 extension headers. ``sport`` and ``dport``
    are ``None`` for protocols without ports and for non-first fragments.
    """

    mid: int
    intercept_id: int
    version: int
    sid: int
    inner: InnerKind
    ppp_protocol: int | None
    src: str | None
    dst: str | None
    proto: int | None
    sport: int | None
    dport: int | None
    length: int
    data: bytes
    """The mirrored packet exactly as the router sent it (without the jmirror header)."""


_JMIRROR_HEADER = struct.Struct("!II")
# version+IHL, total length, flags+fragment offset, protocol, source, destination
_IPV4_HEADER = struct.Struct("!BxHxxHxB2x4s4s")
# version+traffic class+flow label, payload length, next header, source, destination
_IPV6_HEADER = struct.Struct("!IHBx16s16s")
# jmirror header, an option-less IPv4 header without its addresses, then two ports
_JMIRROR_IPV4_PORTS = struct.Struct("!II2xH2xHxB10xHH")
# jmirror header, an IPv6 header without its addresses, then two ports
_JMIRROR_IPV6_PORTS = struct.Struct("!II4xHBx32xHH")
_PORTS = struct.Struct("!HH")
_U16 = struct.Struct("!H")

_ntoa = socket.inet_ntoa
_ntop = socket.inet_ntop
_AF_INET6 = socket.AF_INET6

# Address text is cached because a session repeats the same few addresses; the cache
# is cleared when full so hostile traffic cannot grow it without bound.
_ADDRESS_CACHE_SIZE: Final = 65536
_address_text: dict[bytes, str] = {}


def _address(raw: bytes) -> str:
    text = _address_text.get(raw)
    if text is None:
        if len(_address_text) >= _ADDRESS_CACHE_SIZE:
            _address_text.clear()
        text = _ntoa(raw) if len(raw) == 4 else _ntop(_AF_INET6, raw)
        _address_text[raw] = text
    return text


_address_pairs: dict[bytes, tuple[str, str]] = {}


def _address_pair(addresses: bytes) -> tuple[str, str]:
    """Source and destination as text, from the 8 (IPv4) or 32 (IPv6) bytes that hold
    them; cached like :func:`_address`, with one lookup per packet instead of two."""
    if len(_address_pairs) >= _ADDRESS_CACHE_SIZE:
        _address_pairs.clear()
    half = len(addresses) // 2
    pair = _address_pairs[addresses] = (_address(addresses[:half]), _address(addresses[half:]))
    return pair


# What the inner decoders return: src, dst, transport protocol, sport, dport.
_IPFields = tuple[str, str, int, int | None, int | None]
_NO_IP: Final[tuple[None, None, None, None, None]] = (None, None, None, None, None)


def decode_datagram(payload: bytes) -> JMirrorPacket:
    """Decode one jmirror UDP payload.

    Raises :class:`DecodeError` (and nothing else) for anything that is not a
    well-formed jmirror datagram. An inner packet that is neither IP nor PPP decodes
    with ``inner == "unknown"``.
    """
    if len(payload) >= 32 and payload[8] == 0x45:
        # The common case, IPv4 without options: header, IP fields and the ports that
        # may follow come out of one unpack. Anything unusual takes the general path.
        mid, sid, total_length, fragment, proto, sport, dport = _JMIRROR_IPV4_PORTS.unpack_from(
            payload
        )
        data = payload[8:]
        if total_length == len(data):
            if fragment & 0x1FFF or proto not in PORT_PROTOCOLS:
                sport = dport = None
            addresses = payload[20:28]
            src, dst = _address_pairs.get(addresses) or _address_pair(addresses)
            return JMirrorPacket(
                mid=mid,
                intercept_id=mid & INTERCEPT_ID_MASK,
                version=mid >> 30,
                sid=sid,
                inner="ipv4",
                ppp_protocol=None,
                src=src,
                dst=dst,
                proto=proto,
                sport=sport,
                dport=dport,
                length=total_length,
                data=data,
            )

    if len(payload) >= 52 and payload[8] >> 4 == 6:
        # The same for IPv6 without extension headers.
        mid, sid, payload_length, proto, sport, dport = _JMIRROR_IPV6_PORTS.unpack_from(payload)
        data = payload[8:]
        if payload_length + 40 == len(data) and proto not in IPV6_HEADER_CHAIN:
            if proto not in PORT_PROTOCOLS:
                sport = dport = None
            addresses = payload[16:48]
            src, dst = _address_pairs.get(addresses) or _address_pair(addresses)
            return JMirrorPacket(
                mid=mid,
                intercept_id=mid & INTERCEPT_ID_MASK,
                version=mid >> 30,
                sid=sid,
                inner="ipv6",
                ppp_protocol=None,
                src=src,
                dst=dst,
                proto=proto,
                sport=sport,
                dport=dport,
                length=payload_length + 40,
                data=data,
            )

    if len(payload) < 8:
        raise DecodeError(DecodeFailure.TOO_SHORT, f"{len(payload)} bytes, need 8")
    mid, sid = _JMIRROR_HEADER.unpack_from(payload)
    data = payload[8:]
    if not data:
        raise DecodeError(DecodeFailure.NO_MIRRORED_PACKET, "nothing after the header", mid, sid)
    inner: InnerKind
    ppp_protocol: int | None = None
    fields: _IPFields | tuple[None, None, None, None, None]
    ip_version = data[0] >> 4
    if ip_version == 4:
        inner = "ipv4"
        fields = _decode_ipv4(data, 0, mid, sid)
    elif ip_version == 6:
        inner = "ipv6"
        fields = _decode_ipv6(data, 0, mid, sid)
    elif data[0] == 0xFF and len(data) >= 2 and data[1] == 0x03:
        inner = "ppp"
        ppp_protocol, offset = _ppp_protocol(data, mid, sid)
        if ppp_protocol == _PPP_IPV4:
            fields = _decode_ipv4(data, offset, mid, sid)
        elif ppp_protocol == _PPP_IPV6:
            fields = _decode_ipv6(data, offset, mid, sid)
        else:
            fields = _NO_IP
    else:
        inner = "unknown"
        fields = _NO_IP
    src_text, dst_text, proto, sport, dport = fields
    return JMirrorPacket(
        mid=mid,
        intercept_id=mid & INTERCEPT_ID_MASK,
        version=mid >> 30,
        sid=sid,
        inner=inner,
        ppp_protocol=ppp_protocol,
        src=src_text,
        dst=dst_text,
        proto=proto,
        sport=sport,
        dport=dport,
        length=len(data),
        data=data,
    )


# jmirror header and an IPv4 total length; jmirror header and an IPv6 payload length
# and next header: what classify_datagram() reads on its fast paths.
_JMIRROR_IPV4_LENGTH = struct.Struct("!II2xH")
_JMIRROR_IPV6_LENGTH = struct.Struct("!II4xHB")
# jmirror header, PPP address/control and protocol, then IPv4's first byte and total length.
_JMIRROR_PPP_IPV4 = struct.Struct("!IIHHBxH")


def classify_datagram(payload: bytes | memoryview) -> tuple[int, int, InnerKind]:
    """The mid, sid and inner kind of a datagram, raising :class:`DecodeError` exactly
    when :func:`decode_datagram` would: what the receive loop needs to gate and store a
    packet, without the addresses and ports only the live view shows.

    The fast paths (IPv4 and IPv6 as decode_datagram's own, IPv4 in PPP) accept only what
    decode_datagram accepts (it never raises on them: property-tested); everything else
    goes through decode_datagram itself. Measured 0.3 us against 1.4 us for a full decode.
    """
    if len(payload) >= 32 and payload[8] == 0x45:
        mid, sid, total_length = _JMIRROR_IPV4_LENGTH.unpack_from(payload)
        if total_length == len(payload) - 8:
            return mid, sid, "ipv4"
    elif len(payload) >= 52 and payload[8] >> 4 == 6:
        mid, sid, payload_length, proto = _JMIRROR_IPV6_LENGTH.unpack_from(payload)
        if payload_length + 48 == len(payload) and proto not in IPV6_HEADER_CHAIN:
            return mid, sid, "ipv6"
    elif len(payload) >= 32 and payload[8] == 0xFF:
        # IPv4 in PPP (HDLC framing, full protocol field): a PPPoE or L2TP subscriber's
        # traffic as E Series and MX BNGs mirror it.
        mid, sid, framing, protocol, version_ihl, total_length = _JMIRROR_PPP_IPV4.unpack_from(
            payload
        )
        if (
            framing == 0xFF03
            and protocol == _PPP_IPV4
            and version_ihl == 0x45
            and total_length == len(payload) - 12
        ):
            return mid, sid, "ppp"
    # The general path wants bytes (the receive loop may pass a memoryview).
    packet = decode_datagram(payload if type(payload) is bytes else bytes(payload))
    return packet.mid, packet.sid, packet.inner


def _decode_ipv4(data: bytes, offset: int, mid: int, sid: int) -> _IPFields:
    """Addresses, transport protocol and ports of the IPv4 packet at offset, which
    must fill the rest of data exactly."""
    length = len(data) - offset
    if length < 20:
        raise DecodeError(
            DecodeFailure.TRUNCATED_INNER_HEADER, f"IPv4 header in {length} bytes", mid, sid
        )
    version_ihl, total_length, fragment, proto, src, dst = _IPV4_HEADER.unpack_from(data, offset)
    header_length = (version_ihl & 15) * 4
    if version_ihl >> 4 != 4 or header_length < 20:
        raise DecodeError(
            DecodeFailure.BAD_INNER_HEADER,
            f"IP version {version_ihl >> 4}, header length {header_length} where IPv4 is",
            mid,
            sid,
        )
    if total_length != length:
        raise DecodeError(
            DecodeFailure.INCONSISTENT_LENGTH,
            f"IPv4 total length {total_length}, {length} bytes mirrored",
            mid,
            sid,
        )
    if header_length > length:
        raise DecodeError(
            DecodeFailure.TRUNCATED_INNER_HEADER,
            f"IPv4 header length {header_length} in {length} bytes",
            mid,
            sid,
        )
    src_text = _address_text.get(src) or _address(src)
    dst_text = _address_text.get(dst) or _address(dst)
    transport = offset + header_length
    # A transport header cut short is the subscriber's packet as it was, not a damaged
    # mirror: it decodes, without ports.
    if proto in PORT_PROTOCOLS and not fragment & 0x1FFF and len(data) >= transport + 4:
        sport, dport = _PORTS.unpack_from(data, transport)
        return src_text, dst_text, proto, sport, dport
    return src_text, dst_text, proto, None, None


def _decode_ipv6(data: bytes, offset: int, mid: int, sid: int) -> _IPFields:
    """Addresses, transport protocol (after extension headers) and ports of the IPv6
    packet at offset, which must fill the rest of data exactly."""
    length = len(data) - offset
    if length < 40:
        raise DecodeError(
            DecodeFailure.TRUNCATED_INNER_HEADER, f"IPv6 header in {length} bytes", mid, sid
        )
    first_word, payload_length, proto, src, dst = _IPV6_HEADER.unpack_from(data, offset)
    if first_word >> 28 != 6:
        raise DecodeError(
            DecodeFailure.BAD_INNER_HEADER, f"IP version {first_word >> 28} where IPv6 is", mid, sid
        )
    if payload_length + 40 != length:
        raise DecodeError(
            DecodeFailure.INCONSISTENT_LENGTH,
            f"IPv6 payload length {payload_length}, {length - 40} bytes mirrored",
            mid,
            sid,
        )
    end = len(data)
    position = offset + 40
    first_fragment = True
    # receiver.ip.skip_ipv6_extensions inline, going on past every fragment header (first
    # or not) as receiver/_fastpath.c's ipv6_valid() does: a call per packet measured 4%
    # slower here. tests/receiver/test_ip.py holds the result to receiver.ip.transport.
    while proto in IPV6_HEADER_CHAIN:
        if position + 8 > end:
            raise DecodeError(
                DecodeFailure.TRUNCATED_INNER_HEADER,
                f"IPv6 extension header {proto} runs past the packet",
                mid,
                sid,
            )
        next_header = data[position]
        if proto == IPV6_FRAGMENT:
            first_fragment = not _U16.unpack_from(data, position + 2)[0] & 0xFFF8
            position += 8
        elif proto == IPV6_AUTHENTICATION:
            position += (data[position + 1] + 2) * 4
        else:
            position += (data[position + 1] + 1) * 8
        proto = next_header
    if position > end:
        raise DecodeError(
            DecodeFailure.TRUNCATED_INNER_HEADER,
            "IPv6 extension headers run past the packet",
            mid,
            sid,
        )
    src_text = _address_text.get(src) or _address(src)
    dst_text = _address_text.get(dst) or _address(dst)
    if proto in PORT_PROTOCOLS and first_fragment and position + 4 <= end:
        sport, dport = _PORTS.unpack_from(data, position)
        return src_text, dst_text, proto, sport, dport
    return src_text, dst_text, proto, None, None


def _ppp_protocol(data: bytes, mid: int, sid: int) -> tuple[int, int]:
    """The protocol after FF 03 and where its packet starts. The protocol is two bytes,
    or one when the subscriber negotiated protocol-field compression: RFC 1661 makes a
    compressed protocol odd and a full one's first byte even."""
    if len(data) >= 3 and data[2] & 1:
        return data[2], 3
    if len(data) < 4:
        raise DecodeError(
            DecodeFailure.TRUNCATED_INNER_HEADER, f"PPP header in {len(data)} bytes", mid, sid
        )
    return (data[2] << 8) | data[3], 4


def _ppp_control_packet_ok(ppp_protocol: int, data: bytes, offset: int) -> bool:
    """A control packet's own length must cover exactly what follows the PPP header
    (no FCS in jmirror), and its code must be one the protocol defines."""
    body = len(data) - offset
    if body < 4:
        return False
    code = data[offset]
    (declared_length,) = _U16.unpack_from(data, offset + 2)
    if declared_length != body:
        return False
    return 1 <= code <= _PPP_CONTROL_MAX_CODE[ppp_protocol]


def is_plausible_jmirror(packet: JMirrorPacket, checksums: bool = True) -> bool:
    """Whether a datagram that decoded cleanly is really jmirror rather than some other
    UDP payload that happens to parse.

    Stricter than Wireshark's heuristic, which only looks at the first four mirrored
    bytes: this one requires version 0 (the only one Juniper defines), a known inner
    kind, a valid IPv4 header checksum, and for PPP a known protocol whose packet
    length is consistent. It also accepts what Wireshark's misses: IPv4 with options,
    IPv6 with a traffic class, flow label or extension headers, and PPP control
    protocols other than LCP and IPCP.

    With ``checksums`` off (for a capture whose addresses were rewritten without fixing
    them), an IPv4 packet needs an assigned protocol instead of a valid checksum.
    """
    if packet.version != 0:
        return False
    inner = packet.inner
    data = packet.data
    if inner == "ipv4":
        return ipv4_header_checksum_ok(data, 0) if checksums else assigned_ip_protocol(packet.proto)
    if inner == "ipv6":
        return assigned_ip_protocol(packet.proto)
    if inner != "ppp" or packet.ppp_protocol is None:
        return False
    ppp_protocol, offset = _ppp_protocol(data, packet.mid, packet.sid)
    if ppp_protocol == PPPProtocol.IPV4:
        if not checksums:
            return assigned_ip_protocol(packet.proto)
        return ipv4_header_checksum_ok(data, offset)
    if ppp_protocol == PPPProtocol.IPV6:
        return assigned_ip_protocol(packet.proto)
    if ppp_protocol in _PPP_CONTROL_MAX_CODE:
        return _ppp_control_packet_ok(ppp_protocol, data, offset)
    if ppp_protocol == PPPProtocol.LQR:
        # A Link-Quality-Report has no code or length field: it is always twelve
        # 32-bit counters (RFC 1989).
        return len(data) - offset == 48
    return ppp_protocol in _PPP_DATA_PROTOCOLS and len(data) > offset


def looks_like_jmirror(payload: bytes) -> bool:
    """Whether an arbitrary UDP payload is a jmirror datagram (see
    :func:`is_plausible_jmirror` for what is checked)."""
    try:
        packet = decode_datagram(payload)
    except DecodeError:
        return False
    return is_plausible_jmirror(packet)
