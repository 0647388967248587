"""A session page's recent history, sent once when it subscribes (docs/live-protocol.md,
``history``): the latest stored packets as live-list rows and the packets and bytes of
each second of the last five minutes, so that the chart and the list are not empty
until the next packet arrives, nor after traffic stopped.

It comes from what is stored, read from the end of the session's newest capture files:
at most :data:`HISTORY_BYTES` in all, so a page load costs the same whatever the
session's size. A file larger than that is read from a record found in its last bytes
(:func:`tail_records`): the product's files are little-endian nanosecond pcap, whose
records are checked one after another to the end (a whole record each, time within the
file's span, nanoseconds below a second, captured length equal to the original one, as
the store writes them). Contrail (CN2) sessions, stored as pcapng, get no history yet,
nor do packets a session did not store (an intercept without content keeps none).

Known limit of reading from the middle: a packet whose payload is crafted to look like
records ending where the next true record starts can make the oldest rows of such a
history wrong (bytes of that packet shown as packets of their own). They are still
bytes this session stored, shown with the same rights; the files, the packet pages and
the exports are not affected. An index of record offsets written beside each file would
remove the guess.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO, Final, cast

from django.db.models import F

from jmirror_web.intercepts.evidence_store import CaptureUnavailable, open_capture
from jmirror_web.intercepts.models import CaptureFile, OutsideSessionsDirectory, Session
from jmirror_web.live.buffer import MAX_ROWS, packet_row
from jmirror_web.object_store import StorageError
from receiver.jmirror import DecodeError, decode_datagram
from receiver.live_contract import PacketRow
from receiver.packet_summary import packet_row as summary_row
from receiver.pcap import (
    FILE_HEADER,
    FILE_HEADER_LENGTH,
    NANOSECOND_MAGIC,
    RECORD_HEADER,
    RECORD_HEADER_LENGTH,
    SNAPLEN,
)
from receiver.store import LINKTYPE_PPP_HDLC, LINKTYPE_RAW

HISTORY_SECONDS: Final = 300  # the session page's chart spans five minutes
HISTORY_ROWS: Final = MAX_ROWS  # as many as one update carries
HISTORY_BYTES: Final = 2 * 1024 * 1024
HISTORY_FILES: Final = 4
_NS: Final = 1_000_000_000
# Packet times a record may carry: from a second before its file's first packet to a
# minute after now (a file being written has no recorded last packet yet).
_SLACK_NS: Final = _NS
_FUTURE_NS: Final = 60 * _NS
# The longest record: a UDP datagram's payload is below 64 KiB.
_LONGEST_RECORD: Final = RECORD_HEADER_LENGTH + 65536
JMIRROR_HEADER: Final = 8

# Record headers checked in all while looking for the first record of a file's end: a
# payload crafted to look like records from many offsets cannot make a page load costly.
MAX_CHECKS: Final = 200_000

Record = tuple[int, bytes]  # receive time in ns since the epoch, the stored bytes


class _TooCostly(Exception):
    """More than :data:`MAX_CHECKS` record headers checked."""


def _chain(
    window: bytes, start: int, low_ns: int, high_ns: int, checks: list[int]
) -> list[Record] | None:
    """The records from ``start`` to the end of ``window`` (an incomplete last one left
    out), or None when one of them is not a record as the store writes it. ``checks``
    holds the headers left to check (raises :class:`_TooCostly` past them)."""
    records = []
    at = start
    while at + RECORD_HEADER_LENGTH <= len(window):
        checks[0] -= 1
        if checks[0] < 0:
            raise _TooCostly
        seconds, nanoseconds, included, original = RECORD_HEADER.unpack_from(window, at)
        time_ns = seconds * _NS + nanoseconds
        if (
            nanoseconds >= _NS
            or not 0 < included <= SNAPLEN
            or included != original
            or not low_ns <= time_ns <= high_ns
        ):
            return None
        end = at + RECORD_HEADER_LENGTH + included
        if end > len(window):
            break  # being written
        records.append((time_ns, window[at + RECORD_HEADER_LENGTH : end]))
        at = end
    return records


def tail_records(
    stream: BinaryIO, size: int, budget: int, low_ns: int, high_ns: int
) -> tuple[list[Record], bool]:
    """The last records of a pcap file of ``size`` bytes, reading at most ``budget`` of its
    last bytes, and whether they start at its first record (the file was read whole).
    A file whose end holds no such chain of records gives none."""
    start = max(FILE_HEADER_LENGTH, size - budget)
    stream.seek(start)
    window = stream.read(max(size - start, 0)) or b""
    checks = [MAX_CHECKS]
    try:
        if start == FILE_HEADER_LENGTH:
            return _chain(window, 0, low_ns, high_ns, checks) or [], True
        # The first offset from which every record checks out to the end: a record
        # boundary (a false one would have to chain into the true records to the end).
        for offset in range(min(len(window), _LONGEST_RECORD)):
            records = _chain(window, offset, low_ns, high_ns, checks)
            if records:
                return records, False
    except _TooCostly:
        pass
    return [], False


def _pcap_linktype(stream: BinaryIO) -> int | None:
    header = stream.read(FILE_HEADER_LENGTH) or b""
    if len(header) < FILE_HEADER_LENGTH:
        return None
    magic, *_rest, linktype = FILE_HEADER.unpack(header)
    return int(linktype) if magic == NANOSECOND_MAGIC else None


def _newest_files(session: Session) -> Iterator[CaptureFile]:
    return iter(
        session.files.order_by(F("first_packet").desc(nulls_first=True), "-pk")[:HISTORY_FILES]
    )


def stored_tail(session: Session, now_ns: int) -> list[Record]:
    """The session's last stored packets, oldest first: from its newest files, reading
    at most :data:`HISTORY_BYTES`, until :data:`HISTORY_ROWS` of them and the last
    :data:`HISTORY_SECONDS` are covered."""
    found: list[Record] = []
    budget = HISTORY_BYTES
    since_ns = now_ns - HISTORY_SECONDS * _NS
    for capture in _newest_files(session):
        first = capture.first_packet
        low_ns = int(first.timestamp()) * _NS - _SLACK_NS if first is not None else 0
        try:
            opened, _growing = open_capture(capture)
            with opened:
                stream = cast(BinaryIO, opened)
                if _pcap_linktype(stream) not in (LINKTYPE_RAW, LINKTYPE_PPP_HDLC):
                    break  # not a file this reads: nothing older is read either
                size = stream.seek(0, 2)
                records, whole = tail_records(stream, size, budget, low_ns, now_ns + _FUTURE_NS)
        except (CaptureUnavailable, OutsideSessionsDirectory, OSError, StorageError):
            break
        budget -= min(budget, size)
        found = records + found
        covered = bool(found) and found[0][0] <= since_ns
        if not whole or budget <= 0 or (len(found) >= HISTORY_ROWS and covered):
            break
    return found


def _row(session: Session, time_ns: int, data: bytes) -> PacketRow:
    # The store keeps the mirrored packet after the jmirror header: put the session's
    # header back and summarise it as the receiver summarises live packets.
    header = session.mid.to_bytes(4, "big") + session.sid.to_bytes(4, "big")
    assert len(header) == JMIRROR_HEADER
    try:
        return summary_row(time_ns, decode_datagram(header + data))
    except DecodeError as error:
        return PacketRow(
            time_ns=time_ns,
            src=None,
            dst=None,
            sport=None,
            dport=None,
            protocol="unknown",
            length=len(data),
            inner="unknown",
            info=f"not decoded: {error}"[:80],
        )


def session_history(session_id: int, *, content: bool, now_ns: int) -> dict[str, Any] | None:
    """The ``history`` message of a session (its rows with ``info`` only with
    ``content``), or None when nothing is stored to draw. The caller has checked the
    right to the session's metadata."""
    session = Session.objects.filter(pk=session_id).first()
    if session is None or session.is_contrail:
        return None
    records = stored_tail(session, now_ns)
    if not records:
        return None
    since = now_ns // _NS - HISTORY_SECONDS
    seconds: dict[int, list[int]] = {}
    for time_ns, data in records:
        second = time_ns // _NS
        if second > since:
            counts = seconds.setdefault(second, [0, 0])
            counts[0] += 1
            counts[1] += JMIRROR_HEADER + len(data)  # the datagram's payload, as live counts
    return {
        "type": "history",
        "stream": "session",
        "id": session_id,
        "rows": [
            packet_row(_row(session, time_ns, data), content=content)
            for time_ns, data in records[-HISTORY_ROWS:]
        ],
        "seconds": [[second, *counts] for second, counts in sorted(seconds.items())],
    }
