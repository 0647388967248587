"""Scapy layer for the Contrail / CN2 vRouter "Juniper header", written like a Scapy
contrib module.

The layer is for building test traffic and for the one-packet detail view; the receive
path has its own decoder. A vRouter mirrors a frame to an analyzer as one UDP datagram
(default destination port 8099, checksum 0)::

    TLVs, each type (1 byte), length (1 byte), value:
      1  capture host    4 bytes    the vRouter's router id (IPv4)
      2  flags           4 bytes    big-endian: bit n for action n, 0x40000000 ingress
      3  source VN       n bytes    virtual network name, ASCII, no NUL
      4  destination VN  n bytes
    FF 00                           end of TLVs
    the mirrored Ethernet frame (802.1Q tags and all)

Wireshark calls it "Juniper Virtual Network Information" (``-d udp.port==8099,juniper``,
fields ``juniper.vn.*``); the names here follow it. Flow mirroring sends TLVs 1 to 4,
interface mirroring only 3 (received traffic) or only 4 (sent traffic), and a vRouter
with no metadata just ``FF 00``. Unknown TLV types are kept raw. A chain that does not
reach ``FF 00`` (garbage, a truncated TLV) leaves the rest of the datagram as Raw.
"""

from __future__ import annotations

from typing import Any, Final

from scapy.base_classes import BasePacket
from scapy.fields import (
    ByteEnumField,
    ByteField,
    Field,
    FieldLenField,
    FlagsField,
    IPField,
    PacketListField,
    StrLenField,
)
from scapy.layers.inet import UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw, bind_bottom_up, bind_layers

from receiver.contrail import (
    ANALYZER_DEFAULT_PORT,
    INGRESS_FLAG,
    MAX_VN_NAME,
    Action,
    Tlv,
    action_names,
)

# The format's facts are receiver.contrail's; the layer only names them for Scapy.
TLV_CAPTURE_HOST: Final = int(Tlv.CAPTURE_HOST)
TLV_FLAGS: Final = int(Tlv.FLAGS)
TLV_SOURCE_VN: Final = int(Tlv.SOURCE_VN)
TLV_DEST_VN: Final = int(Tlv.DEST_VN)
TLV_END: Final = int(Tlv.END)
END_OF_TLVS: Final = b"\xff\x00"

TLV_TYPES: Final = {
    TLV_CAPTURE_HOST: "capture_host",
    TLV_FLAGS: "flags",
    TLV_SOURCE_VN: "source_vn",
    TLV_DEST_VN: "dest_vn",
    TLV_END: "end",
}

ACTIONS: Final = {int(action): action.name.lower() for action in Action}
"""Flow action bits of TLV 2 (the vRouter's ``VR_ACTION_*``), bit number to name."""

VN_NAME_MAXIMUM: Final = MAX_VN_NAME
"""A TLV length is one byte, so a VN name has at most 255 bytes."""

MAX_TLVS: Final = 65535 // 2
"""More TLVs than a UDP datagram can hold: Scapy's default cap (100) would refuse a
long chain of short unknown TLVs, which must dissect (to Raw if need be), not raise."""

_FLAG_NAMES: Final = {1 << bit: name for bit, name in ACTIONS.items()} | {INGRESS_FLAG: "ingress"}


def _ascii(value: bytes) -> str:
    # Names are ASCII; anything else is shown escaped rather than guessed at.
    return value.decode("ascii", "backslashreplace")


class _VNNameField(StrLenField):
    """A VN name, shown as text (as Wireshark does) rather than as a bytes literal."""

    def i2repr(self, pkt: Packet | None, x: bytes) -> str:
        return _ascii(bytes(x))


class JuniperVNTlv(Packet):
    """One TLV kept raw: the class of unknown types, and of known types whose length
    is not theirs (a capture host of 3 bytes, say). Dissecting with this class picks
    the typed class for types 1 to 4."""

    name = "Juniper VN TLV"
    fields_desc = [
        ByteEnumField("type", 0, TLV_TYPES),
        FieldLenField("length", None, length_of="value", fmt="B"),
        StrLenField("value", b"", length_from=lambda pkt: pkt.length),
    ]

    @classmethod
    def dispatch_hook(cls, _pkt: bytes | None = None, *args: Any, **kargs: Any) -> type[Packet]:
        if cls is not JuniperVNTlv or not _pkt or len(_pkt) < 2:
            return cls
        typed: type[Packet] = _TYPED_TLVS.get(_pkt[0], cls)
        fixed_length = _FIXED_LENGTHS.get(_pkt[0])
        if fixed_length is not None and _pkt[1] != fixed_length:
            return cls
        return typed

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        # The next TLV (or the end marker) follows: hand it back to the list.
        return b"", s

    def mysummary(self) -> str:
        value: bytes = self.value
        return f"TLV {self.type} ({len(value)} bytes)"


class JuniperVNCaptureHost(JuniperVNTlv):
    name = "Juniper VN capture host"
    fields_desc = [
        ByteEnumField("type", TLV_CAPTURE_HOST, TLV_TYPES),
        ByteField("length", 4),
        IPField("address", "0.0.0.0"),  # noqa: S104 (a field default, not a bind)
    ]

    def mysummary(self) -> str:
        return f"host {self.address}"


class JuniperVNFlags(JuniperVNTlv):
    name = "Juniper VN flags"
    fields_desc = [
        ByteEnumField("type", TLV_FLAGS, TLV_TYPES),
        ByteField("length", 4),
        FlagsField("flags", 0, 32, _FLAG_NAMES),
    ]

    def mysummary(self) -> str:
        return f"flags 0x{int(self.flags):08x}"


class JuniperVNSourceVN(JuniperVNTlv):
    name = "Juniper VN source VN"
    fields_desc = [
        ByteEnumField("type", TLV_SOURCE_VN, TLV_TYPES),
        FieldLenField("length", None, length_of="vn", fmt="B"),
        _VNNameField("vn", b"", length_from=lambda pkt: pkt.length),
    ]

    def mysummary(self) -> str:
        return f"source VN {_ascii(self.vn)}"


class JuniperVNDestVN(JuniperVNTlv):
    name = "Juniper VN destination VN"
    fields_desc = [
        ByteEnumField("type", TLV_DEST_VN, TLV_TYPES),
        FieldLenField("length", None, length_of="vn", fmt="B"),
        _VNNameField("vn", b"", length_from=lambda pkt: pkt.length),
    ]

    def mysummary(self) -> str:
        return f"destination VN {_ascii(self.vn)}"


_TYPED_TLVS: Final[dict[int, type[Packet]]] = {
    TLV_CAPTURE_HOST: JuniperVNCaptureHost,
    TLV_FLAGS: JuniperVNFlags,
    TLV_SOURCE_VN: JuniperVNSourceVN,
    TLV_DEST_VN: JuniperVNDestVN,
}
_FIXED_LENGTHS: Final = {TLV_CAPTURE_HOST: 4, TLV_FLAGS: 4}


def _next_tlv(
    pkt: Packet, tlvs: list[BasePacket], current: Packet | None, remain: bytes
) -> type[Packet] | None:
    """The class of the next TLV, or None where the chain stops: at the end marker
    (type 255), at the end of the data, or at a TLV longer than what is left."""
    if len(remain) < 2 or remain[0] == TLV_END or 2 + remain[1] > len(remain):
        return None
    return JuniperVNTlv


class _EndOfTlvsField(Field[int | None, bytes]):
    """The ``FF 00`` that ends the TLVs: None when a dissected chain does not reach it
    (and nothing is built for None, so such a datagram rebuilds byte for byte)."""

    def __init__(self, name: str) -> None:
        super().__init__(name, 0xFF00, "!H")

    def getfield(self, pkt: Packet, s: bytes) -> tuple[bytes, int | None]:
        if s[:2] == END_OF_TLVS:
            return s[2:], 0xFF00
        return s, None

    def addfield(self, pkt: Packet, s: bytes, val: int | None) -> bytes:
        if val is None:
            return s
        return s + val.to_bytes(2, "big")

    def i2repr(self, pkt: Packet | None, x: int | None) -> str:
        return "missing" if x is None else f"0x{x:04x}"


class JuniperVN(Packet):
    """The TLVs and their end marker; the mirrored Ethernet frame is its payload.

    Build with typed TLVs, the end marker is added::

        JuniperVN(tlvs=[JuniperVNCaptureHost(address="10.0.0.1"),
                        JuniperVNSourceVN(vn="default-domain:k8s:web")]) / Ether() / ...
    """

    name = "Juniper Virtual Network Information"
    fields_desc = [
        PacketListField("tlvs", [], next_cls_cb=_next_tlv, max_count=MAX_TLVS),
        _EndOfTlvsField("end"),
    ]

    def guess_payload_class(self, payload: bytes) -> type[Packet]:
        if self.end is None:
            return Raw  # the chain did not end: what follows is not known to be a frame
        return Ether

    def _tlv(self, cls: type[Packet]) -> Packet | None:
        return next((tlv for tlv in self.tlvs if isinstance(tlv, cls)), None)

    @property
    def capture_host(self) -> str | None:
        tlv = self._tlv(JuniperVNCaptureHost)
        return None if tlv is None else str(tlv.address)

    @property
    def flags(self) -> int | None:
        tlv = self._tlv(JuniperVNFlags)
        return None if tlv is None else int(tlv.flags)

    @property
    def actions(self) -> tuple[str, ...]:
        flags = self.flags
        return () if flags is None else action_names(flags)

    @property
    def traffic_direction(self) -> str | None:
        """Whether the mirrored frame was "ingress" or "egress", from the flags; None without
        a flags TLV. (Not
        ``direction``: Scapy's packets use that name for the capture direction.)"""
        flags = self.flags
        if flags is None:
            return None
        return "ingress" if flags & INGRESS_FLAG else "egress"

    @property
    def source_vn(self) -> str | None:
        tlv = self._tlv(JuniperVNSourceVN)
        return None if tlv is None else _ascii(tlv.vn)

    @property
    def dest_vn(self) -> str | None:
        tlv = self._tlv(JuniperVNDestVN)
        return None if tlv is None else _ascii(tlv.vn)

    @property
    def unknown_tlvs(self) -> tuple[tuple[int, bytes], ...]:
        """TLVs of other types (or of a known type with a wrong length), raw, in order."""
        return tuple(
            (int(tlv.type), bytes(tlv.value)) for tlv in self.tlvs if type(tlv) is JuniperVNTlv
        )

    def mysummary(self) -> str:
        parts = ["JuniperVN"]
        if self.capture_host is not None:
            parts.append(f"host={self.capture_host}")
        if self.traffic_direction is not None:
            parts.append(self.traffic_direction)
        if self.source_vn is not None or self.dest_vn is not None:
            parts.append(f"{self.source_vn or '?'} > {self.dest_vn or '?'}")
        if self.end is None:
            parts.append("(no end of TLVs)")
        return " ".join(parts)


def bind_contrail_port(port: int) -> None:
    """Dissect UDP datagrams to ``port`` as the Contrail Juniper header (for dissection
    only: building ``UDP()/JuniperVN()`` keeps defaulting to port 8099)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"Contrail analyzer port must be an integer from 1 to 65535, not {port!r}")
    binding = ({"dport": port}, JuniperVN)
    if binding not in UDP.payload_guess:
        bind_bottom_up(UDP, JuniperVN, dport=port)


bind_layers(UDP, JuniperVN, dport=ANALYZER_DEFAULT_PORT)
