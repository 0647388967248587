"""What an export asks for: the sessions and their stored files, the format, the window
and the filter; and the errors that refuse it. No Django: the views' service, the engine
and the benchmarks share these."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Protocol

# The largest chunk the export stream yields.
CHUNK_BYTES: Final = 1024 * 1024


class ExportFormat(StrEnum):
    PCAP = "pcap"
    PCAPNG = "pcapng"
    ZIP = "zip"  # one member per session, each member in ``ExportRequest.member_format``
    # A conversion, not a copy: a pcap of raw IP packets, those stored inside PPP with
    # their PPP framing removed and PPP control packets left out (the one pcap a session
    # mixing PPP and raw IP files can give; the stored files remain the evidence).
    PCAP_IP = "pcap-ip"

    @property
    def extension(self) -> str:
        """The exported file's extension: a conversion is a pcap file."""
        return "pcap" if self is ExportFormat.PCAP_IP else self.value


# Exports whose bytes are copied from the stored records; PCAP_IP converts them.
FILE_FORMATS: Final = (ExportFormat.PCAP, ExportFormat.PCAPNG, ExportFormat.PCAP_IP)


class ExportError(Exception):
    """The export cannot be made as asked; ``str(error)`` is one sentence for the user
    (for example: the session mixes link types, which a pcap file cannot hold)."""


class SourceError(ExportError):
    """A stored file is missing, unreadable or corrupt; raised before anything is yielded
    when detected up front, else mid-stream (the caller records the export as failed)."""


@dataclass(frozen=True)
class Window:
    """Receive times in ns since the epoch, UTC; ``start_ns`` inclusive, ``end_ns``
    exclusive; ``None`` is unbounded on that side."""

    start_ns: int | None = None
    end_ns: int | None = None

    def contains(self, time_ns: int) -> bool:
        return (self.start_ns is None or time_ns >= self.start_ns) and (
            self.end_ns is None or time_ns < self.end_ns
        )


@dataclass(frozen=True)
class PacketFilter:
    """Keeps a packet when it matches every non-empty criterion. Matching is on the
    mirrored (inner) packet: an address matches source or destination, a port matches
    the source or destination port of a protocol that has them (receiver.ip.PORT_PROTOCOLS:
    TCP, UDP, DCCP, SCTP, UDP-Lite), a protocol is an IP protocol number
    (6 tcp, 17 udp, 1 icmp, 58 icmpv6...). Non-IP packets (PPP control: LCP, IPCP...)
    match only an empty filter. IPv4 inside PPP (HDLC framing) is looked into, and IP
    inside a CN2 session's Ethernet frames, through VLAN tags; non-IP frames (ARP) match
    only an empty filter, as PPP control packets do."""

    addresses: frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address] = frozenset()
    ports: frozenset[int] = frozenset()
    protocols: frozenset[int] = frozenset()

    @property
    def empty(self) -> bool:
        return not (self.addresses or self.ports or self.protocols)


# The protocol names a filter takes besides numbers (the form's help text lists them).
PROTOCOL_NUMBERS: Final = {
    "icmp": 1,
    "igmp": 2,
    "tcp": 6,
    "udp": 17,
    "gre": 47,
    "esp": 50,
    "ah": 51,
    "icmpv6": 58,
    "sctp": 132,
}
_PROTOCOL_NAMES: Final = {number: name for name, number in PROTOCOL_NUMBERS.items()}


def filter_text(recorded: Mapping[str, Any]) -> str:
    """A recorded filter (``Export.packet_filter``: lists of addresses, ports and protocol
    numbers) as the manifest page and the pcapng comment say it: "no filter" when every
    list is empty, else "addresses 10.0.0.7; ports 53, 443; protocols 17 (udp)"."""
    protocols = [
        f"{number} ({_PROTOCOL_NAMES[number]})" if number in _PROTOCOL_NAMES else str(number)
        for number in recorded.get("protocols") or []
    ]
    parts = [
        f"{what} {', '.join(items)}"
        for what, items in (
            ("addresses", [str(each) for each in recorded.get("addresses") or []]),
            ("ports", [str(each) for each in recorded.get("ports") or []]),
            ("protocols", protocols),
        )
        if items
    ]
    return "; ".join(parts) or "no filter"


class SourceStream(Protocol):
    """What the export reads a stored file through: a local file (``FileIO``) or an
    object in the evidence store (``jmirror_web.object_store.ObjectReader``)."""

    def read(self, size: int = -1, /) -> bytes | None: ...

    def readinto(self, buffer: Any, /) -> int | None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class OpenedSource:
    """A stored file opened for reading from its start: the stream, how many bytes it
    held when opened (what the export reads of it, even if it grows), and whether it is
    still being written (its last record may be incomplete)."""

    stream: SourceStream
    size: int
    growing: bool


# Opens a stored file wherever it is at the moment of the call (raises SourceError).
Opener = Callable[[], OpenedSource]


@dataclass(frozen=True)
class SourceFile:
    """One stored pcap or pcapng file (as written by ``receiver.store``), absolute path resolved by
    the caller from the data directory (never from a request).

    ``opener``, when given, opens the file wherever it is by then (the web service follows
    a file from its ``.part`` name to its final name to the evidence store); without it
    the file is opened at ``path`` (the final name, else ``.part``, else the final name
    again). ``path`` still names the file in messages."""

    path: Path
    linktype: int  # from the file's header; the caller may pass 0 to let the engine read it
    first_ns: int | None = None  # from the CaptureFile row, to order and skip files
    last_ns: int | None = None
    opener: Opener | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class SessionSource:
    """One session's files in any order (the engine orders and merges them by time;
    files of one session may overlap in time when the session has two link types).

    ``name`` becomes the pcapng interface name (``if_name``) and the zip member's stem;
    ``description`` the interface description (``if_description``)."""

    name: str
    description: str
    files: Sequence[SourceFile]
    # The session's own limit inside the request's window (a case export keeps each
    # intercept to its warrant): only packets inside both are exported.
    window: Window | None = None


@dataclass(frozen=True)
class ExportRequest:
    sessions: Sequence[SessionSource]  # one for a session export, several for an intercept
    format: ExportFormat
    window: Window = Window()
    packet_filter: PacketFilter = PacketFilter()
    comment: str = ""  # pcapng section header comment (opt_comment); ignored for pcap
    member_format: ExportFormat = ExportFormat.PCAPNG  # for ZIP only: PCAP, PCAPNG or PCAP_IP
