"""Packet detail: one stored packet of a session, decoded layer by layer, and its bytes.

Packet content is the most sensitive thing the system holds, so the page is for users
with the content right on the session's case only (:data:`Action.VIEW_CONTENT`: an
assignment to the case); anyone else gets the same 404 as for a packet that does not
exist. Every view and every refusal of a signed-in user is audited.

Packets are numbered from 1 as the session's whole export numbers its frames: in time
order across the session's files, equal times in the export's file order
(:mod:`jmirror_web.console.stored_packets`). The packet index beside each file says where
the packet is; only its bytes are read.

The live packet list knows a packet by its receive time only, so :func:`packet_jump` also
takes ``at=<ns since the epoch>``: :func:`number_at` finds the first packet received
exactly then in the files' indexes.

Scapy decodes the packet: far too slow for the receive path (docs/architecture.md,
Measured constraints), fine for one packet on request, but its work is bounded here (a
packet beyond :data:`MAX_SHOWN_BYTES` is cut, the tree is capped) and any exception it
raises becomes "could not decode" with the hex dump still shown.

A Contrail session's files are pcapng: each Ethernet frame's Enhanced Packet Block keeps
the vRouter's Juniper header in its options (:mod:`jmirror_web.console.packet_options`
reads them). The page puts the header's bytes back before the frame and dissects both
with ``receiver.scapy_contrail.JuniperVN``, so the tree shows "Juniper Virtual Network
Information" above the Ethernet layer, as Wireshark does with ``-d udp.port==P,juniper``;
the direction and the comment are shown beside it.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, BinaryIO, Final, NoReturn, cast

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.html import format_html_join
from django.utils.safestring import SafeString
from django.views.decorators.http import require_GET

from jmirror_web.audit.log import record
from jmirror_web.audit.refusals import audit_refusal, refusals_audited
from jmirror_web.console.packet_options import (
    PacketOptions,
    juniper_header_problem,
    read_packet_options,
)
from jmirror_web.console.stored_packets import (
    IndexUnavailable,
    file_index,
    locate_packet,
    number_received_at,
    packet_data,
)
from jmirror_web.intercepts.access import Action, may
from jmirror_web.intercepts.evidence_store import CaptureUnavailable, open_capture
from jmirror_web.intercepts.models import CaptureFile, OutsideSessionsDirectory, Session
from jmirror_web.object_store import StorageError
from receiver.pcap import LinkType

if TYPE_CHECKING:
    from scapy.packet import Packet

PACKET_REFUSED: Final = "packet view refused"
MAX_SHOWN_BYTES: Final = 64 * 1024
MAX_LAYERS: Final = 64  # layers in the tree, nested ones (options, records) included
MAX_FIELDS: Final = 1000
MAX_VALUE_CHARS: Final = 200
LINKTYPE_NAMES: Final[dict[int, str]] = {
    LinkType.RAW: "raw IP (101)",
    LinkType.PPP_HDLC: "PPP in HDLC-like framing (50)",
    LinkType.ETHERNET: "Ethernet (1)",
}
# What a pcapng packet's epb_flags direction is for a Contrail frame (the receiver writes
# inbound for the vRouter's ingress flag, outbound for egress).
DIRECTION_TEXT: Final = {
    "inbound": "inbound (the vRouter's ingress flag)",
    "outbound": "outbound (egress at the vRouter)",
}
# A packet number or time (ns since the epoch) in a query: ASCII digits only (str.isdigit
# also takes superscripts, which int() refuses, and other scripts' digits), at most 19
# of them (int64).
_DIGITS: Final = re.compile(r"[0-9]{1,19}")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# The user's text as far as a message or an audit event repeats it.
_ECHOED_CHARS: Final = 40
_PRINTABLE: Final = frozenset(
    ord(c) for c in string.ascii_letters + string.digits + string.punctuation + " "
)


@dataclass
class Field:
    name: str
    shown: str
    children: list[Layer] = field(default_factory=list)  # packets held in the field


@dataclass
class Layer:
    name: str
    fields: list[Field]


@dataclass
class Decoded:
    layers: list[Layer]
    summary: str
    truncated: bool  # the tree hit MAX_LAYERS or MAX_FIELDS


@dataclass
class _Budget:
    layers: int = MAX_LAYERS
    fields: int = MAX_FIELDS
    exhausted: bool = False


class PacketUnavailable(Exception):
    """The packet's file cannot give it: missing, unreadable or damaged (the message says
    which, for the user)."""


class NoPacketAt(Exception):
    """No stored packet of the session was received at the time asked (the message says
    why, for the user)."""


# Locating and reading ----------------------------------------------------------------


def locate(session: Session, number: int) -> tuple[CaptureFile, int, int] | None:
    """The file holding packet ``number`` (from 1) of the session, the packet's index
    (from 1) in that file, and the session's stored packet total; None out of range.
    Numbered as the session's whole export numbers its frames
    (:mod:`jmirror_web.console.stored_packets`). Raises :class:`PacketUnavailable` when
    a file's packets cannot be counted."""
    try:
        return locate_packet(session, number)
    except IndexUnavailable as error:
        raise PacketUnavailable(str(error)) from None


def open_file(capture: CaptureFile) -> BinaryIO:
    """The capture's file for reading, wherever it is: the local copy while this host
    has it, else the object in the evidence store (read with ranged requests as it
    streams), so any web process shows any closed file's packets. Raises
    :class:`PacketUnavailable` saying why not (:class:`OutsideSessionsDirectory` for a
    row naming a place it must not)."""
    try:
        stream, _growing = open_capture(capture)
    except CaptureUnavailable as error:
        raise PacketUnavailable(
            "The capture file holding this packet is missing or cannot be read (purged after "
            f"the retention period, moved, or not written yet): {error}"
        ) from None
    # A local file or an ObjectReader: both read, seek and close as a binary file does.
    return cast(BinaryIO, stream)


def read_packet(capture: CaptureFile, index: int) -> tuple[int, int, bytes]:
    """``(time_ns, linktype, bytes)`` of record ``index`` (from 1) of a capture file, read
    where its packet index says it is."""
    try:
        packets = file_index(capture)
        if not 1 <= index <= len(packets):
            raise PacketUnavailable(
                f"The capture file holds {len(packets)} packets, fewer than its record "
                "says; this packet is not in it."
            )
        entry = packets.record(index - 1)
        with open_file(capture) as stream:
            data = packet_data(stream, packets.linktype, entry.offset, entry.captured)
    except IndexUnavailable as error:
        raise PacketUnavailable(str(error)) from None
    except (OSError, StorageError) as error:
        why = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise PacketUnavailable(
            f"The capture file holding this packet cannot be read ({why})."
        ) from None
    except OutsideSessionsDirectory as error:
        raise PacketUnavailable(str(error)) from None
    if data is None:
        raise PacketUnavailable("The capture file ends inside this packet.")
    return entry.time_ns, packets.linktype, data


def packet_options(capture: CaptureFile, index: int, data: bytes) -> PacketOptions | None:
    """The pcapng options of record ``index`` of a capture file (see
    :func:`~jmirror_web.console.packet_options.read_packet_options`); None for a pcap
    file, or when the file cannot be read again."""
    try:
        with open_file(capture) as stream:
            return read_packet_options(stream, index, data)
    except (OSError, StorageError, PacketUnavailable, OutsideSessionsDirectory):
        return None


def _row_time(time_ns: int) -> datetime:
    # What the receiver writes into the rows for a packet time: cut to the microsecond
    # (receive.moment), so comparing cut times never leaves out the file that holds it.
    return _EPOCH + timedelta(microseconds=time_ns // 1000)


def number_at(session: Session, time_ns: int) -> int:
    """The number (as :func:`locate` counts) of the session's stored packet received at
    exactly ``time_ns`` (ns since the epoch). When several packets have that time (two
    files side by side, with different link types; or one receive batch that the kernel
    gave no timestamps, whose datagrams all get the time of the call), the one numbered
    first wins.

    Reads only the files whose recorded span holds the time, never a purged one, and
    stops at the first match. Raises :class:`NoPacketAt` saying why nothing was found.
    """
    moment = _row_time(time_ns)
    shown, _attribute = utc_ns(time_ns)
    missing = f"No stored packet of this session was received at {shown} ({time_ns} ns)."
    if moment < session.first_seen:
        raise NoPacketAt(f"{missing} That is before the session's first packet.")
    if moment > session.last_seen:
        # The session's row is brought up to date about once a second, after the live
        # list has shown the packet: most likely it is just too soon.
        raise NoPacketAt(
            f"{missing} That is after the last packet this session has recorded: it may "
            "not be on disk yet, try again in a moment."
        )
    if session.files.filter(
        purged_at__isnull=False, first_packet__lte=moment, last_packet__gte=moment
    ).exists():
        raise NoPacketAt(
            f"{missing} A capture file of that time was purged under the case's retention period."
        )
    try:
        number = number_received_at(session, time_ns)
    except IndexUnavailable:
        raise NoPacketAt(
            f"{missing} A capture file of that time is missing or cannot be read, or it "
            "may not be on disk yet: try again in a moment."
        ) from None
    if number is not None:
        return number
    raise NoPacketAt(
        f"{missing} It may not be on disk yet (the receiver writes packets within about a "
        "second): try again in a moment."
    )


# Decoding ------------------------------------------------------------------------------


def _load_bindings() -> None:
    # dhcp...radius are imported for their bindings: the tree then goes past UDP. So is
    # scapy_contrail (UDP to 8099, Contrail's default analyzer port, as the Juniper
    # header), imported for every packet so that a packet's tree never depends on what
    # the process decoded before.
    from scapy.layers import dhcp, dhcp6, dns, l2tp, ntp, radius  # noqa: F401

    from receiver import scapy_contrail  # noqa: F401


def _scapy_class(linktype: int, data: bytes) -> type[Packet]:
    _load_bindings()
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    from scapy.layers.ppp import HDLC
    from scapy.packet import Raw

    if linktype == LinkType.PPP_HDLC:
        return HDLC
    if linktype == LinkType.ETHERNET:
        return Ether
    if linktype == LinkType.RAW and data:
        version = data[0] >> 4
        if version == 4:
            return IP
        if version == 6:
            return IPv6
    return Raw


# Protocol identifiers Wireshark (and the RFCs) write in hex: ``Link Control Protocol
# (0xc021)``, not (49185).
_HEX_NUMBERED: Final = frozenset(
    {
        ("PPP", "proto"),
        ("Ether", "type"),
        ("Dot1Q", "type"),
        ("CookedLinux", "proto"),
        # A Contrail flags TLV, as Wireshark and the pcapng comment write it (0x400000a0).
        ("JuniperVNFlags", "flags"),
    }
)


# Scapy renders text fields as Python bytes (b'www.example.com.'); Wireshark shows the
# text. Only plain printable text is unwrapped: anything with an escape stays as Scapy
# shows it, so no byte is hidden.
_BYTES_TEXT = re.compile(r"b'([ -&(-\[\]-~]*)'" + r'|b"([ !#-\[\]-~]*)"')


def _unquoted(text: str) -> str:
    return _BYTES_TEXT.sub(lambda found: found.group(1) or found.group(2) or "", text)


def _shown(packet: Packet, scapy_field: Any, value: Any) -> str:
    """Scapy's rendering of a field (names for enumerations and flags), followed by the
    number itself when the rendering hides it: ``domain (53)``, ``SA (18)``,
    ``Link Control Protocol (0xc021)``."""
    from scapy.fields import FlagValue

    shown = _unquoted(str(scapy_field.i2repr(packet, value)))
    number: int | None = None
    if isinstance(value, FlagValue):
        number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    if number is not None and shown not in (str(number), hex(number)):
        if (type(packet).__name__, scapy_field.name) in _HEX_NUMBERED:
            shown = f"{shown} (0x{number:04x})"
        else:
            shown = f"{shown} ({number})"
    if len(shown) > MAX_VALUE_CHARS:
        shown = shown[:MAX_VALUE_CHARS] + "…"
    return shown


def _layers(packet: Packet, budget: _Budget) -> list[Layer]:
    from scapy.fields import ConditionalField
    from scapy.packet import NoPayload
    from scapy.packet import Packet as ScapyPacket

    layers: list[Layer] = []
    layer: Any = packet
    while layer is not None and not isinstance(layer, NoPayload):
        if budget.layers <= 0:
            budget.exhausted = True
            break
        budget.layers -= 1
        fields: list[Field] = []
        for scapy_field in layer.fields_desc:
            if isinstance(scapy_field, ConditionalField) and not scapy_field._evalcond(layer):
                continue
            if budget.fields <= 0:
                budget.exhausted = True
                break
            budget.fields -= 1
            value = layer.getfieldval(scapy_field.name)
            if isinstance(value, ScapyPacket):
                fields.append(Field(scapy_field.name, "", _layers(value, budget)))
            elif (
                isinstance(value, list) and value and all(isinstance(v, ScapyPacket) for v in value)
            ):
                children = [child for each in value for child in _layers(each, budget)]
                fields.append(Field(scapy_field.name, f"{len(value)} items", children))
            else:
                fields.append(Field(scapy_field.name, _shown(layer, scapy_field, value)))
        layers.append(Layer(str(layer.name), fields))
        layer = layer.payload
    return layers


def decode(linktype: int, data: bytes) -> Decoded:
    """The layers of one frame as Scapy dissects them. Raises whatever Scapy raises."""
    return _decoded(_scapy_class(linktype, data)(data))


def decode_contrail_frame(header: bytes, frame: bytes) -> Decoded:
    """The layers of a Contrail datagram put back together from a stored Ethernet frame
    and its Juniper header (its TLVs and end marker, checked by
    :func:`~jmirror_web.console.packet_options.juniper_header_problem`): "Juniper
    Virtual Network Information", then the frame's layers. Raises whatever Scapy raises."""
    _load_bindings()
    from receiver.scapy_contrail import JuniperVN

    return _decoded(JuniperVN(header + frame))


def _decoded(packet: Packet) -> Decoded:
    budget = _Budget()
    layers = _layers(packet, budget)
    return Decoded(layers, _unquoted(str(packet.summary())), budget.exhausted)


def tree_html(layers: list[Layer]) -> SafeString:
    """The layers as nested ``<details>`` (open: a layer is folded by a click, no script
    needed) holding a ``<ul>`` of fields; every name and value is escaped."""
    return format_html_join(
        "",
        '<details class="layer" open><summary>{}</summary><ul class="fields">{}</ul></details>',
        (
            (
                layer.name,
                format_html_join(
                    "",
                    '<li><span class="field">{}</span> <span class="value">{}</span>{}</li>',
                    (
                        (each.name, each.shown, tree_html(each.children) if each.children else "")
                        for each in layer.fields
                    ),
                ),
            )
            for layer in layers
        ),
    )


def hexdump(data: bytes) -> list[str]:
    """Lines of offset, 16 bytes in hex (a gap after 8) and their printable ASCII."""
    lines = []
    for offset in range(0, len(data), 16):
        chunk = data[offset : offset + 16]
        hex_part = " ".join(f"{byte:02x}" for byte in chunk[:8])
        if len(chunk) > 8:
            hex_part += "  " + " ".join(f"{byte:02x}" for byte in chunk[8:])
        text = "".join(chr(byte) if byte in _PRINTABLE else "." for byte in chunk)
        lines.append(f"{offset:08x}  {hex_part:<48}  {text}")
    return lines


def utc_ns(time_ns: int) -> tuple[str, str]:
    """A nanosecond time as shown (``2026-01-02 03:04:05.123456789 UTC``) and as a
    ``<time datetime>`` value (milliseconds, which is what HTML allows)."""
    seconds, nanoseconds = divmod(time_ns, 1_000_000_000)
    moment = datetime.fromtimestamp(seconds, UTC)
    return (
        f"{moment:%Y-%m-%d %H:%M:%S}.{nanoseconds:09d} UTC",
        f"{moment:%Y-%m-%dT%H:%M:%S}.{nanoseconds // 1_000_000:03d}Z",
    )


# The views -----------------------------------------------------------------------------


def _refuse(request: HttpRequest, session: Session | None, details: dict[str, Any]) -> NoReturn:
    # Rate-limited per user, session and page: a script walking packet numbers or times
    # is one event per window (see jmirror_web.audit.refusals).
    audit_refusal(
        request,
        Session,
        details["session"],
        "no content right",
        action=PACKET_REFUSED,
        obj=session,
        details=details,
    )
    raise Http404


def _session_for_content(request: HttpRequest, session_id: int, refusal: dict[str, Any]) -> Session:
    """The session, when the user has the content right on its case; else the refusal
    is audited (with ``refusal`` as its details) and the answer is the 404 of a packet
    that does not exist."""
    session = (
        Session.objects.select_related("router", "intercept__case").filter(pk=session_id).first()
    )
    if (
        session is None
        or session.intercept is None
        or not may(request.user, Action.VIEW_CONTENT, session.intercept.case)
    ):
        _refuse(request, session, refusal)
    assert session is not None
    return session


@refusals_audited(Session, "session_id", not_found=False)
@require_GET
def packet_detail(request: HttpRequest, session_id: int, number: int) -> HttpResponse:
    """Packet ``number`` (from 1, in time order) of session ``session_id``."""
    session = _session_for_content(request, session_id, {"session": session_id, "number": number})
    assert session.intercept is not None
    located = locate(session, number)
    if located is None:
        raise Http404("No such packet in this session.")
    capture, index, total = located

    context: dict[str, Any] = {
        "session": session,
        "intercept": session.intercept,
        "case": session.intercept.case,
        "number": number,
        "total": total,
        "capture": capture,
        "index": index,
        "previous": number - 1 if number > 1 else None,
        "next": number + 1 if number < total else None,
        "max_shown": MAX_SHOWN_BYTES,
    }
    details: dict[str, Any] = {"number": number, "file": capture.pk, "frame": index}
    try:
        if getattr(capture, "purged_at", None) is not None:
            # Retention decided (and audited) the purge: the file may linger on disk until
            # it is deleted, but it must not be served any more.
            raise PacketUnavailable(
                "The capture file holding this packet was purged under the case's retention period."
            )
        time_ns, linktype, data = read_packet(capture, index)
    except PacketUnavailable as error:
        details["outcome"] = "unavailable"
        record("packet viewed", session, request=request, details=details)
        context["unavailable"] = str(error)
        return render(request, "console/packet.html", context)

    shown = data[:MAX_SHOWN_BYTES]
    options = packet_options(capture, index, data) if linktype == LinkType.ETHERNET else None
    header = options.juniper_header if options is not None else None
    header_problem = juniper_header_problem(header) if header is not None else None
    try:
        if header is not None and header_problem is None:
            decoded: Decoded | None = decode_contrail_frame(header, shown)
        else:
            decoded = decode(linktype, shown)
        decode_error = ""
    except Exception as error:  # any Scapy failure: the bytes are shown anyway
        decoded, decode_error = None, f"{type(error).__name__}: {error}"[:MAX_VALUE_CHARS]
    time_text, time_attribute = utc_ns(time_ns)
    details["outcome"] = "shown"
    record("packet viewed", session, request=request, details=details)
    context.update(
        {
            "time_ns": time_ns,
            "time_text": time_text,
            "time_attribute": time_attribute,
            "linktype": LINKTYPE_NAMES.get(linktype, str(linktype)),
            "length": len(data),
            "cut": len(data) > MAX_SHOWN_BYTES,
            "decoded": decoded,
            "tree": tree_html(decoded.layers) if decoded is not None else "",
            "decode_error": decode_error,
            "hexdump": hexdump(shown),
            "options": options,
            "direction": (
                DIRECTION_TEXT.get(options.direction, options.direction)
                if options is not None and options.direction is not None
                else None
            ),
            "juniper_header": header,
            "juniper_problem": header_problem,
            "juniper_hexdump": (hexdump(header[:MAX_SHOWN_BYTES]) if header is not None else None),
        }
    )
    return render(request, "console/packet.html", context)


@refusals_audited(Session, "session_id", not_found=False)
@require_GET
def packet_jump(request: HttpRequest, session_id: int) -> HttpResponse:
    """The session page's "open packet number" form, and the live list's links by receive
    time (``at``, ns since the epoch).

    A number goes on to that packet's page, which checks the right (and audits) itself. A
    time is looked up here, so the right is checked first, like the packet page does; the
    packet's page follows, or the session page saying why there is none.
    """
    if "at" in request.GET:
        return _jump_to_time(request, session_id, request.GET["at"])
    text = request.GET.get("number", "")
    if not _DIGITS.fullmatch(text) or not 1 <= int(text) <= 2**63 - 1:
        raise Http404
    return redirect("console:packet", session_id=session_id, number=int(text))


def _jump_to_time(request: HttpRequest, session_id: int, text: str) -> HttpResponse:
    echoed = text[:_ECHOED_CHARS]
    session = _session_for_content(request, session_id, {"session": session_id, "at": echoed})
    details: dict[str, Any] = {"at": echoed}
    try:
        if not _DIGITS.fullmatch(text) or int(text) > 2**63 - 1:
            raise NoPacketAt(
                f"“{echoed}” is not a packet time: the link needs the receive time in "
                "nanoseconds since the epoch, digits only."
            )
        number = number_at(session, int(text))
    except NoPacketAt as error:
        details["outcome"] = "not found"
        record("packet looked up", session, request=request, details=details)
        messages.error(request, str(error))
        return redirect("console:session", session_id=session.pk)
    details |= {"outcome": "found", "number": number}
    record("packet looked up", session, request=request, details=details)
    return redirect("console:packet", session_id=session.pk, number=number)
