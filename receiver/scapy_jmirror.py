"""Scapy layer for Juniper packet mirroring ("jmirror"), written like a Scapy contrib module.

The layer is for building test traffic and for the one-packet detail view; it is far
too slow for the receive path, which uses :mod:`receiver.jmirror`.

A router wraps every mirrored packet in a UDP datagram to the mediation host::

    +0  | V (2 bits) | intercept id (30 bits) |   Wireshark shows both as jmirror.mid
    +4  | session id (32 bits)                |   jmirror.sid
    +8  | IPv4 | IPv6 | PPP in HDLC-like framing (FF 03 <protocol> ...)

The mediation port is chosen by the operator. 30030 is bound by default because it is
Wireshark's default; :func:`bind_jmirror_port` dissects another port as jmirror.
"""

from __future__ import annotations

from scapy.fields import BitField, XBitField, XIntField
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ppp import HDLC
from scapy.packet import Packet, Raw, bind_bottom_up, bind_layers

from receiver.jmirror import WIRESHARK_DEFAULT_PORT


class JMirror(Packet):
    """The 8-byte jmirror header; the mirrored packet is its payload."""

    name = "Juniper Packet Mirror"
    fields_desc = [
        BitField("version", 0, 2),
        XBitField("intercept_id", 0, 30),
        XIntField("sid", 0),
    ]

    @property
    def mid(self) -> int:
        """The raw first word (version and intercept id), as Wireshark's jmirror.mid."""
        version: int = self.version
        intercept_id: int = self.intercept_id
        return (version << 30) | intercept_id

    def guess_payload_class(self, payload: bytes) -> type[Packet]:
        # There is no protocol field: the mirrored packet's first bytes say what it is.
        if payload[:2] == b"\xff\x03":
            return HDLC  # which hands on to PPP
        version = payload[0] >> 4 if payload else 0
        if version == 4:
            return IP
        if version == 6:
            return IPv6
        return Raw

    def mysummary(self) -> str:
        return f"JMirror mid=0x{self.mid:08x} sid=0x{self.sid:08x}"


def bind_jmirror_port(port: int) -> None:
    """Dissect UDP datagrams to ``port`` as jmirror (for dissection only: building
    ``UDP()/JMirror()`` keeps defaulting to port 30030)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"jmirror port must be an integer from 1 to 65535, not {port!r}")
    binding = ({"dport": port}, JMirror)
    if binding not in UDP.payload_guess:
        bind_bottom_up(UDP, JMirror, dport=port)


bind_layers(UDP, JMirror, dport=WIRESHARK_DEFAULT_PORT)
