"""Decoding of CN2 / Contrail vRouter mirror datagrams ("Juniper header"): sans-I/O, no Django.

A Contrail vRouter mirrors the flows a security policy selects (or an interface's traffic)
to an analyzer's IP address and UDP port (8099 by default, one per mirror destination).
With ``juniperHeader`` on, CN2's default, each UDP payload is::

    TLVs, each type (1 byte), length (1 byte), value:
      1  capture host    length 4   the vRouter's router id (IPv4, network order)
      2  flags           length 4   big-endian u32: bit n for action n, 0x40000000 if ingress
      3  source VN       length n   virtual network name, ASCII, no NUL
      4  destination VN  length n
    FF 00                           end of the TLVs
    the original Ethernet frame (802.1Q tags kept), no FCS

Flow (policy) mirroring sends TLVs 1 to 4; interface mirroring only TLV 3 (what the
interface received) or only TLV 4 (what it sent); without metadata just ``FF 00``.
Sources: contrail-vrouter ``dp-core/vr_mirror.c``, the agent's ``flowtable_ksync.cc`` and
``interface_ksync.cc``; Wireshark's "Juniper Virtual Network Information"
(``tshark -d udp.port==8099,juniper``, fields ``juniper.vn.*``).

:func:`decode_contrail` turns a payload into a :class:`ContrailPacket` or raises
:class:`~receiver.jmirror.DecodeError`, the jmirror decoder's error, with a reason from
the same :class:`~receiver.jmirror.DecodeFailure`. :func:`looks_like_contrail` says
whether an arbitrary UDP payload is one, for captures whose analyzer port is not known.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from types import SimpleNamespace
from typing import Final, Literal

from receiver.ip import (
    IPV6_HEADER_CHAIN,
    PORT_PROTOCOLS,
    assigned_ip_protocol,
    ipv4_header_checksum_ok,
    ipv6_transport,
)
from receiver.jmirror import DecodeError, DecodeFailure
from receiver.pcap import (
    EPB_INBOUND,
    EPB_OUTBOUND,
    JUNIPER_PEN,
    OPTION_COMMENT,
    OPTION_CUSTOM_BINARY,
    OPTION_EPB_FLAGS,
    pcapng_option,
)

ANALYZER_DEFAULT_PORT: Final = 8099
"""CN2's default analyzer UDP port (``analyzerPort`` of a mirror destination)."""

CONTRAIL_MID: Final = 2**32 + 1
"""The mid of a Contrail session and unclaimed stream, whose sid is the analyzer port:
outside the 32 bits of a jmirror mid (as receiver.pipeline.AGGREGATE_MID), so a Contrail
session never meets a jmirror one. A Contrail session is one vRouter's frames to one
analyzer port: the overlap rule lets only one CN2 intercept claim those at a time
(different intercepts on one vRouter need their own ports), so it is one intercept's
frames from one vRouter, the unit a warrant names and an analyst reads."""


class Tlv(IntEnum):
    """The Juniper header's TLV types (vr_mirror.c's MIRROR_TLV_*)."""

    CAPTURE_HOST = 1
    FLAGS = 2
    SOURCE_VN = 3
    DEST_VN = 4
    END = 255


class Action(IntEnum):
    """Flow actions (the agent's TrafficAction): bit ``1 << action`` of the flags TLV."""

    ALERT = 1
    DROP = 2
    DENY = 3
    LOG = 4
    PASS = 5
    REJECT = 6
    MIRROR = 7
    VRF_TRANSLATE = 8
    TRAP = 28
    IMPLICIT_DENY = 29


INGRESS_FLAG: Final = 0x40000000
"""Set in the flags TLV when the vRouter saw the packet coming into the VM's interface."""

MAX_VN_NAME: Final = 255
"""A TLV length is one byte: a virtual network name is at most 255 bytes."""

Direction = Literal["ingress", "egress"]

# Ethertypes of the inner frame the decoder follows.
ETHERTYPE_IPV4: Final = 0x0800
ETHERTYPE_IPV6: Final = 0x86DD
ETHERTYPE_ARP: Final = 0x0806
ETHERTYPE_VLAN: Final = 0x8100
ETHERTYPE_QINQ: Final = 0x88A8
ETHERTYPE_QINQ_LEGACY: Final = 0x9100
_VLAN_TAGS: Final = frozenset({ETHERTYPE_VLAN, ETHERTYPE_QINQ, ETHERTYPE_QINQ_LEGACY})
ETHERNET_HEADER: Final = 14
MAX_VLAN_TAGS: Final = 8
"""More tags than any real network stacks (two is QinQ); a bound for hostile input."""

# Ethertypes that tell a real Ethernet frame behind the TLVs, for detection: IP, ARP,
# tagged, MPLS, PPPoE discovery and session, LLDP.
_PLAUSIBLE_ETHERTYPES: Final = frozenset(
    {ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_ARP, 0x8847, 0x8848, 0x8863, 0x8864, 0x88CC}
)

_ACTION_BITS: Final = tuple((1 << action, action.name.lower()) for action in Action)
_actions_of: dict[int, tuple[str, ...]] = {}


def action_names(flags: int) -> tuple[str, ...]:
    """The actions set in a flags TLV, lowercase, in bit order (0xA0: pass, mirror).
    Bits no action names (and the ingress bit) are left out: the flags keep them."""
    names = _actions_of.get(flags)
    if names is None:
        names = tuple(name for bit, name in _ACTION_BITS if flags & bit)
        if len(_actions_of) < 4096:  # a vRouter sends a handful of combinations
            _actions_of[flags] = names
    return names


# Built as receiver.jmirror.JMirrorPacket is (see there): SimpleNamespace's C constructor
# under a frozen dataclass, 0.5 us per packet where the generated __init__ of a frozen
# dataclass with slots (one object.__setattr__ per field) measured 2 us. decode_contrail
# is the only constructor; it always passes every field.
@dataclass(frozen=True, init=False)
class ContrailPacket(SimpleNamespace):
    """One decoded Contrail mirror datagram.

    The header fields are ``None`` when their TLV is absent. ``src``, ``dst`` and
    ``proto`` describe the frame's IP packet (through VLAN tags) and are ``None`` when
    it carries none (ARP...); ``sport`` and ``dport`` are ``None`` for protocols without
    ports and for fragments other than the first.
    """

    capture_host: str | None
    flags: int | None
    actions: tuple[str, ...]
    direction: Direction | None
    source_vn: str | None
    dest_vn: str | None
    unknown_tlvs: tuple[tuple[int, bytes], ...]
    header_length: int
    """Bytes of TLVs including the end marker: where the frame starts in the payload."""
    vlans: tuple[int, ...]
    """VLAN ids of the frame's tags, outermost first."""
    ethertype: int
    src: str | None
    dst: str | None
    proto: int | None
    sport: int | None
    dport: int | None
    length: int
    """The Ethernet frame's length."""
    frame: bytes
    """The mirrored Ethernet frame exactly as the vRouter sent it."""


_U16: Final = struct.Struct("!H")
_U32: Final = struct.Struct("!I")
# version+IHL, total length, flags+fragment offset, protocol, source, destination
_IPV4_HEADER: Final = struct.Struct("!BxHxxHxB2x4s4s")
_PORTS: Final = struct.Struct("!HH")


def _name(value: bytes) -> str:
    # The vRouter writes the agent's name as is; bytes that are not ASCII are shown
    # escaped rather than refused, as Wireshark shows them.
    return value.decode("ascii", "backslashreplace")


def decode_contrail(payload: bytes) -> ContrailPacket:
    """Decode one Contrail mirror UDP payload.

    Raises :class:`~receiver.jmirror.DecodeError` (and nothing else) when the TLV chain
    is malformed (a capture host or flags TLV not 4 bytes long, a known TLV twice, an
    end marker with a value, no end marker), when no Ethernet header follows it, or when
    the frame's IP header is cut or disagrees with the frame. Unknown TLV types are kept
    raw. Ethernet padding after the IP packet is allowed.
    """
    tlvs = _flow_mirroring_tlvs(payload) or _tlvs(payload)
    header_length, capture_host, flags, source_vn, dest_vn, unknown = tlvs
    frame = payload[header_length:]
    if not frame:
        raise DecodeError(DecodeFailure.NO_MIRRORED_PACKET, "nothing after the TLVs")
    ethertype, vlans, ip = _ethernet(frame)
    if ip is None:
        src = dst = None
        proto = sport = dport = None
    else:
        src, dst, proto, sport, dport = ip
    if flags is None:
        actions: tuple[str, ...] = ()
        direction: Direction | None = None
    else:
        actions = action_names(flags)
        direction = "ingress" if flags & INGRESS_FLAG else "egress"
    return ContrailPacket(
        capture_host=capture_host,
        flags=flags,
        actions=actions,
        direction=direction,
        source_vn=source_vn,
        dest_vn=dest_vn,
        unknown_tlvs=unknown,
        header_length=header_length,
        vlans=vlans,
        ethertype=ethertype,
        src=src,
        dst=dst,
        proto=proto,
        sport=sport,
        dport=dport,
        length=len(frame),
        frame=frame,
    )


_Tlvs = tuple[int, str | None, int | None, str | None, str | None, tuple[tuple[int, bytes], ...]]
"""Where the frame starts (the TLVs' length, end marker included), capture host,
flags, source VN, destination VN, unknown TLVs."""


def _flow_mirroring_tlvs(payload: bytes) -> _Tlvs | None:
    """The TLVs of flow mirroring, 1, 2, 3, 4 in the vRouter's order and the end
    marker, read in place: what :func:`_tlvs` makes of them (held equal by
    tests/receiver/test_contrail_fast_path.py). None for any other layout, which _tlvs()
    then reads. This is the receiver's per-packet case: decode_contrail measured 2.4 us
    with it (and a SimpleNamespace packet), 5.6 us before."""
    end = len(payload)
    if (
        end >= 16
        and payload[0] == 1
        and payload[1] == 4
        and payload[6] == 2
        and payload[7] == 4
        and payload[12] == 3
    ):
        source_end = 14 + payload[13]
        if source_end + 2 <= end and payload[source_end] == 4:
            dest_end = source_end + 2 + payload[source_end + 1]
            if payload[dest_end : dest_end + 2] == b"\xff\x00":
                return (
                    dest_end + 2,
                    _address(payload[2:6]),
                    _U32.unpack_from(payload, 8)[0],
                    _name(payload[14:source_end]),
                    _name(payload[source_end + 2 : dest_end]),
                    (),
                )
    return None


def _tlvs(payload: bytes) -> _Tlvs:
    """The TLVs in any order and combination (raises DecodeError as decode_contrail)."""
    end = len(payload)
    position = 0
    capture_host: str | None = None
    flags: int | None = None
    source_vn: str | None = None
    dest_vn: str | None = None
    unknown: list[tuple[int, bytes]] = []
    seen = 0
    while True:
        if position + 2 > end:
            raise DecodeError(
                DecodeFailure.NO_END_OF_TLVS,
                f"the TLVs run to byte {end} without the FF 00 end marker",
            )
        kind = payload[position]
        length = payload[position + 1]
        value_start = position + 2
        position = value_start + length
        if kind == 255:
            if length:
                raise DecodeError(DecodeFailure.BAD_TLV, f"end marker with a {length}-byte value")
            break
        if position > end:
            raise DecodeError(
                DecodeFailure.NO_END_OF_TLVS,
                f"TLV {kind} of {length} bytes runs past the datagram's {end}",
            )
        if 1 <= kind <= 4:
            if seen & (1 << kind):
                raise DecodeError(DecodeFailure.BAD_TLV, f"TLV {kind} appears twice")
            seen |= 1 << kind
            if kind <= 2 and length != 4:
                raise DecodeError(
                    DecodeFailure.BAD_TLV, f"TLV {kind} is {length} bytes long, must be 4"
                )
            value = payload[value_start:position]
            if kind == 1:
                capture_host = _address(value)
            elif kind == 2:
                flags = _U32.unpack(value)[0]
            elif kind == 3:
                source_vn = _name(value)
            else:
                dest_vn = _name(value)
        else:
            unknown.append((kind, payload[value_start:position]))
    return position, capture_host, flags, source_vn, dest_vn, tuple(unknown)


_IPFields = tuple[str, str, int, int | None, int | None]


def _ethernet(frame: bytes) -> tuple[int, tuple[int, ...], _IPFields | None]:
    """The ethertype after any VLAN tags, the tags' VLAN ids, and the IP fields when
    the payload is IPv4 or IPv6."""
    end = len(frame)
    if end < ETHERNET_HEADER:
        raise DecodeError(DecodeFailure.TRUNCATED_FRAME, f"Ethernet header in {end} bytes, need 14")
    ethertype = _U16.unpack_from(frame, 12)[0]
    if ethertype == ETHERTYPE_IPV4:
        return ethertype, (), _ipv4(frame, ETHERNET_HEADER)  # untagged: the usual frame
    position = ETHERNET_HEADER
    vlans: list[int] = []
    while ethertype in _VLAN_TAGS:
        if len(vlans) == MAX_VLAN_TAGS:
            raise DecodeError(DecodeFailure.TRUNCATED_FRAME, f"more than {MAX_VLAN_TAGS} VLAN tags")
        if position + 4 > end:
            raise DecodeError(DecodeFailure.TRUNCATED_FRAME, "a VLAN tag runs past the frame")
        vlans.append(_U16.unpack_from(frame, position)[0] & 0x0FFF)
        ethertype = _U16.unpack_from(frame, position + 2)[0]
        position += 4
    if ethertype == ETHERTYPE_IPV4:
        return ethertype, tuple(vlans), _ipv4(frame, position)
    if ethertype == ETHERTYPE_IPV6:
        return ethertype, tuple(vlans), _ipv6(frame, position)
    return ethertype, tuple(vlans), None


# Address text by its bytes: a vRouter's traffic repeats a few hosts. Emptied when full,
# so that hostile traffic cannot grow it without bound.
_ADDRESS_CACHE_SIZE: Final = 65536
_address_text: dict[bytes, str] = {}


def _address(raw: bytes) -> str:
    text = _address_text.get(raw)
    if text is None:
        if len(_address_text) >= _ADDRESS_CACHE_SIZE:
            _address_text.clear()
        text = socket.inet_ntoa(raw) if len(raw) == 4 else socket.inet_ntop(socket.AF_INET6, raw)
        _address_text[raw] = text
    return text


def _ipv4(frame: bytes, start: int) -> _IPFields:
    available = len(frame) - start
    if available < 20:
        raise DecodeError(DecodeFailure.TRUNCATED_INNER_HEADER, f"IPv4 header in {available} bytes")
    version_ihl, total_length, fragment, proto, src, dst = _IPV4_HEADER.unpack_from(frame, start)
    header_length = (version_ihl & 15) * 4
    if version_ihl >> 4 != 4 or header_length < 20:
        raise DecodeError(
            DecodeFailure.BAD_INNER_HEADER,
            f"IP version {version_ihl >> 4}, header length {header_length} where IPv4 is",
        )
    # An Ethernet frame may be padded after its packet (to 60 bytes), never cut short.
    if total_length > available or total_length < header_length:
        raise DecodeError(
            DecodeFailure.INCONSISTENT_LENGTH,
            f"IPv4 total length {total_length}, header {header_length}, "
            f"{available} bytes in the frame",
        )
    transport = start + header_length
    end = start + total_length
    if proto in PORT_PROTOCOLS and not fragment & 0x1FFF and transport + 4 <= end:
        sport, dport = _PORTS.unpack_from(frame, transport)
        return _address(src), _address(dst), proto, sport, dport
    return _address(src), _address(dst), proto, None, None


def _ipv6(frame: bytes, start: int) -> _IPFields:
    available = len(frame) - start
    if available < 40:
        raise DecodeError(DecodeFailure.TRUNCATED_INNER_HEADER, f"IPv6 header in {available} bytes")
    if frame[start] >> 4 != 6:
        raise DecodeError(
            DecodeFailure.BAD_INNER_HEADER, f"IP version {frame[start] >> 4} where IPv6 is"
        )
    payload_length = _U16.unpack_from(frame, start + 4)[0]
    if payload_length + 40 > available:
        raise DecodeError(
            DecodeFailure.INCONSISTENT_LENGTH,
            f"IPv6 payload length {payload_length}, {available - 40} bytes in the frame",
        )
    proto = frame[start + 6]
    src = _address(frame[start + 8 : start + 24])
    dst = _address(frame[start + 24 : start + 40])
    end = start + 40 + payload_length
    position = start + 40
    if proto in IPV6_HEADER_CHAIN:
        proto, position = ipv6_transport(frame, proto, position, end)
        if position < 0:
            raise DecodeError(
                DecodeFailure.TRUNCATED_INNER_HEADER,
                f"IPv6 extension header {proto} runs past the packet",
            )
        if proto == 44:  # a fragment other than the first: no transport header here
            return src, dst, frame[position], None, None
    if proto in PORT_PROTOCOLS and position + 4 <= end:
        sport, dport = _PORTS.unpack_from(frame, position)
        return src, dst, proto, sport, dport
    return src, dst, proto, None, None


def contrail_header(
    *,
    capture_host: str | None = None,
    flags: int | None = None,
    source_vn: str | bytes | None = None,
    dest_vn: str | bytes | None = None,
    extra_tlvs: Sequence[tuple[int, bytes]] = (),
) -> bytes:
    """The TLVs a vRouter puts before a mirrored frame, end marker included: those given,
    in the vRouter's order (1, 2, 3, 4), then ``extra_tlvs``. Raises ValueError for a
    value a TLV cannot hold."""
    tlvs: list[tuple[int, bytes]] = []
    if capture_host is not None:
        tlvs.append((Tlv.CAPTURE_HOST, socket.inet_aton(capture_host)))
    if flags is not None:
        if not 0 <= flags <= 0xFFFFFFFF:
            raise ValueError(f"flags {flags:#x} do not fit 32 bits")
        tlvs.append((Tlv.FLAGS, _U32.pack(flags)))
    for name_tlv, name in ((Tlv.SOURCE_VN, source_vn), (Tlv.DEST_VN, dest_vn)):
        if name is not None:
            tlvs.append((name_tlv, name.encode("ascii") if isinstance(name, str) else name))
    tlvs.extend(extra_tlvs)
    header = bytearray()
    for kind, value in tlvs:
        if not 0 <= kind < 255:
            raise ValueError(f"TLV type {kind} is not 0-254")
        if len(value) > 255:
            raise ValueError(f"TLV {kind} value of {len(value)} bytes; at most 255")
        header += bytes((kind, len(value))) + value
    return bytes(header + b"\xff\x00")


def is_plausible_contrail(packet: ContrailPacket, checksums: bool = True) -> bool:
    """Whether a payload that decoded cleanly is really a Contrail mirror datagram
    rather than other UDP that happens to parse: a real ethertype behind the TLVs, no
    more unknown TLVs than known ones, and an IP packet that is believable (a valid
    IPv4 header checksum, unless ``checksums`` is off for a capture whose addresses
    were rewritten; an assigned IPv6 next header)."""
    if packet.ethertype not in _PLAUSIBLE_ETHERTYPES:
        return False
    known = (
        (packet.capture_host is not None)
        + (packet.flags is not None)
        + (packet.source_vn is not None)
        + (packet.dest_vn is not None)
    )
    if len(packet.unknown_tlvs) > known:
        return False
    if packet.ethertype == ETHERTYPE_IPV4 and checksums:
        start = ETHERNET_HEADER + 4 * len(packet.vlans)
        return ipv4_header_checksum_ok(packet.frame, start)
    if packet.ethertype in (ETHERTYPE_IPV4, ETHERTYPE_IPV6):
        return assigned_ip_protocol(packet.proto)
    return True


def looks_like_contrail(payload: bytes) -> bool:
    """Whether an arbitrary UDP payload is a Contrail mirror datagram (see
    :func:`is_plausible_contrail`)."""
    if not payload or payload[0] not in _FIRST_BYTES:
        return False
    try:
        packet = decode_contrail(payload)
    except DecodeError:
        return False
    return is_plausible_contrail(packet)


# A Contrail payload starts with a known TLV or the end marker; anything else is not
# worth decoding when looking for Contrail among arbitrary UDP.
_FIRST_BYTES: Final = frozenset({1, 2, 3, 4, 255})


_U32_LITTLE: Final = struct.Struct("<I")


def describe_header(packet: ContrailPacket) -> str:
    """The Juniper header's facts in one line, for a person reading the evidence
    (a pcapng packet comment, the packet page)."""
    facts: list[str] = []
    if packet.capture_host is not None:
        facts.append(f"capture host {packet.capture_host}")
    if packet.direction is not None:
        facts.append(packet.direction)
    if packet.flags is not None:
        facts.append(f"actions {', '.join(packet.actions) or 'none'} (flags {packet.flags:#010x})")
    if packet.source_vn is not None:
        facts.append(f"source VN {_printable(packet.source_vn)}")
    if packet.dest_vn is not None:
        facts.append(f"destination VN {_printable(packet.dest_vn)}")
    facts.extend(f"TLV {kind} {value.hex() or '(empty)'}" for kind, value in packet.unknown_tlvs)
    return "Juniper header: " + ("; ".join(facts) if facts else "no metadata")


def _printable(name: str) -> str:
    # A name is the vRouter's bytes: a line break in it must not break the comment's line.
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in name)


def evidence_options(packet: ContrailPacket, payload: bytes) -> bytes:
    """The pcapng options that keep a stored frame's Juniper header with it: the
    direction in ``epb_flags`` (Wireshark shows it as the packet's direction), the facts
    as a comment (:func:`describe_header`), and the header's bytes exactly as received in
    a custom option of Juniper's enterprise number, so that nothing of the datagram is
    lost. ``payload`` is the datagram ``packet`` was decoded from."""
    options = b""
    if packet.direction is not None:
        direction = EPB_INBOUND if packet.direction == "ingress" else EPB_OUTBOUND
        options += pcapng_option(OPTION_EPB_FLAGS, _U32_LITTLE.pack(direction))
    options += pcapng_option(OPTION_COMMENT, describe_header(packet).encode())
    header = payload[: packet.header_length]
    options += pcapng_option(OPTION_CUSTOM_BINARY, _U32_LITTLE.pack(JUNIPER_PEN) + header)
    return options
