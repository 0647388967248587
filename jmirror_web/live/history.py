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
the store writes them). A Contrail (CN2) session's pcapng is walked back from its end
(:func:`tail_blocks`), each block's length being written at both its ends. Packets a
session did not store (an intercept without content keeps none) are not in it.

A pcap file's tail is found through its packet index (receiver.packet_index: where
each record starts), so nothing is guessed. Without a usable index, and for a pcapng file
being written, a packet whose payload is crafted to look like records (blocks) can make
the oldest (newest) rows of such a history wrong (bytes of that packet shown as packets
of their own). They are still bytes this session stored, shown with the same rights; the
files, the packet pages and the exports are not affected.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any, BinaryIO, Final, cast

from django.db.models import F

from jmirror_web.console.packet_options import MAX_BLOCK, parse_options
from jmirror_web.console.stored_packets import IndexUnavailable, file_index
from jmirror_web.intercepts.evidence_store import CaptureUnavailable, open_capture
from jmirror_web.intercepts.models import CaptureFile, OutsideSessionsDirectory, Session
from jmirror_web.live.buffer import MAX_ROWS, packet_row
from jmirror_web.object_store import StorageError
from receiver.contrail import decode_contrail
from receiver.jmirror import DecodeError, decode_datagram
from receiver.live_contract import PacketRow
from receiver.packet_summary import contrail_packet_row
from receiver.packet_summary import packet_row as summary_row
from receiver.pcap import (
    FILE_HEADER,
    FILE_HEADER_LENGTH,
    NANOSECOND_MAGIC,
    PCAPNG_ENHANCED_PACKET,
    PCAPNG_SECTION_HEADER,
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

# Record headers checked in all while looking for the first record of a file's end: a
# payload crafted to look like records from many offsets cannot make a page load costly.
MAX_CHECKS: Final = 200_000

Record = tuple[int, bytes]  # receive time in ns since the epoch, bytes


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


# pcapng as the store writes a Contrail session: little-endian blocks, each ending with
# its length again, so the last blocks are found from the end without a guess.
_U32: Final = struct.Struct("<I")
_BLOCK_HEAD: Final = struct.Struct("<II")  # type, total length
_EPB_HEAD: Final = struct.Struct("<IIIII")  # interface, time high and low, lengths
_SHB_LE: Final = PCAPNG_SECTION_HEADER.to_bytes(4, "little")


def _contrail_payload(frame: bytes, options: bytes) -> bytes:
    """The Contrail datagram as received: its Juniper header, kept in the block's
    options, before the Ethernet frame."""
    header = parse_options("<", options).juniper_header
    return (header or b"") + frame


def tail_blocks(
    stream: BinaryIO, size: int, budget: int, low_ns: int, high_ns: int
) -> tuple[list[Record], bool]:
    """:func:`tail_records` for the store's pcapng: the last Enhanced Packet Blocks, as
    Contrail payloads, walking back from the end (from the last whole block of a file
    being written) through at most ``budget`` bytes, and whether they reach its start."""
    start = max(0, size - budget)
    stream.seek(start)
    window = stream.read(max(size - start, 0)) or b""
    # A file being written may end inside a block: its last whole block ends at a
    # multiple of 4 (of the file) whose length matches at both ends.
    ends = range(len(window), max(len(window) - MAX_BLOCK, 11), -1)
    for end in (each for each in ends if (start + each) % 4 == 0):
        found = _walk_back(window, end, low_ns, high_ns)
        if found is not None:
            records, at = found
            return records, start + at == 0
    return [], False


def _walk_back(
    window: bytes, end: int, low_ns: int, high_ns: int
) -> tuple[list[Record], int] | None:
    """The packet blocks ending at ``end`` and before it (oldest first) and where the
    earliest begins; None when the block ending at ``end`` is not a whole one."""
    records: list[Record] = []
    last_end = end
    while end >= 12:
        (length,) = _U32.unpack_from(window, end - 4)
        begin = end - length
        if length < 12 or length & 3 or length > MAX_BLOCK or begin < 0:
            break
        block_type, leading = _BLOCK_HEAD.unpack_from(window, begin)
        if leading != length:
            break
        if block_type == PCAPNG_ENHANCED_PACKET and length >= 32:
            _interface, high, low, captured, original = _EPB_HEAD.unpack_from(window, begin + 8)
            time_ns = (high << 32) | low
            data_end = begin + 28 + captured
            if captured != original or data_end > end - 4 or not low_ns <= time_ns <= high_ns:
                break
            frame = window[begin + 28 : data_end]
            options = window[data_end + (-captured & 3) : end - 4]
            records.append((time_ns, _contrail_payload(frame, options)))
        elif block_type == PCAPNG_SECTION_HEADER:
            end = begin
            break
        end = begin
    if not records and end == last_end:
        return None
    records.reverse()
    return records, end


def _kind(stream: BinaryIO) -> str | None:
    """``pcap`` (jmirror: raw IP or PPP), ``pcapng`` (Contrail) or None: how the store
    wrote the file, from its first bytes."""
    header = stream.read(FILE_HEADER_LENGTH) or b""
    if len(header) < FILE_HEADER_LENGTH:
        return None
    if header[:4] == _SHB_LE:
        return "pcapng"
    magic, *_rest, linktype = FILE_HEADER.unpack(header)
    if magic == NANOSECOND_MAGIC and linktype in (LINKTYPE_RAW, LINKTYPE_PPP_HDLC):
        return "pcap"
    return None


def _newest_files(session: Session) -> Iterator[CaptureFile]:
    return iter(
        session.files.order_by(F("first_packet").desc(nulls_first=True), "-pk")[:HISTORY_FILES]
    )


def stored_tail(session: Session, now_ns: int) -> list[Record]:
    """The session's last stored packets as the datagrams' payloads (what the receiver
    summarises), oldest first: from its newest files, reading at most
    :data:`HISTORY_BYTES`, until :data:`HISTORY_ROWS` of them and the last
    :data:`HISTORY_SECONDS` are covered."""
    # The store keeps the mirrored packet after the jmirror header: the session's header
    # is put back (a Contrail payload gets its Juniper header back from the options).
    jmirror_header = b"" if session.is_contrail else struct.pack(">II", session.mid, session.sid)
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
                kind = _kind(stream)
                if kind is None:
                    break  # not a file the store writes: nothing older is read either
                size = stream.seek(0, 2)
                high_ns = now_ns + _FUTURE_NS
                indexed = (
                    None
                    if kind == "pcapng"
                    else _indexed_tail(capture, stream, budget, since_ns, len(found))
                )
                if kind == "pcapng":
                    records, whole = tail_blocks(stream, size, budget, low_ns, high_ns)
                elif indexed is not None:
                    stored, whole, size = indexed
                    records = [(time_ns, jmirror_header + data) for time_ns, data in stored]
                else:
                    stored, whole = tail_records(stream, size, budget, low_ns, high_ns)
                    records = [(time_ns, jmirror_header + data) for time_ns, data in stored]
        except (CaptureUnavailable, OutsideSessionsDirectory, OSError, StorageError):
            break
        budget -= min(budget, size)
        found = records + found
        covered = bool(found) and found[0][0] <= since_ns
        if not whole or budget <= 0 or (len(found) >= HISTORY_ROWS and covered):
            break
    return found


def _indexed_tail(
    capture: CaptureFile, stream: BinaryIO, budget: int, since_ns: int, have: int
) -> tuple[list[Record], bool, int] | None:
    """The file's last records found through its packet index (no guess at where a
    record starts): as many as ``budget`` bytes allow, back to ``since_ns`` and at least
    :data:`HISTORY_ROWS` with the ``have`` already found; whether that is the whole file,
    and the bytes read. None when the file has no usable index (the tail is then found
    as :func:`tail_records` finds it)."""
    try:
        index = file_index(capture)
    except IndexUnavailable:
        return None
    count = len(index)
    first, spent = count, 0
    while first > 0:
        entry = index.record(first - 1)
        size = RECORD_HEADER_LENGTH + entry.captured
        if spent + size > budget:
            break
        if have + count - first >= HISTORY_ROWS and entry.time_ns < since_ns:
            break
        spent += size
        first -= 1
    if first == count:
        return [], count == 0, 0
    start = index.record(first).offset
    stream.seek(start)
    span = stream.read(spent)
    if len(span) != spent:
        return None
    found = []
    for number in range(first, count):
        entry = index.record(number)
        at = entry.offset - start + RECORD_HEADER_LENGTH
        found.append((entry.time_ns, span[at : at + entry.captured]))
    return found, first == 0, spent


def _row(session: Session, time_ns: int, payload: bytes) -> PacketRow:
    """The row the receiver would have sent for this datagram's payload."""
    try:
        if session.is_contrail:
            return contrail_packet_row(time_ns, decode_contrail(payload))
        return summary_row(time_ns, decode_datagram(payload))
    except DecodeError as error:
        return PacketRow(
            time_ns=time_ns,
            src=None,
            dst=None,
            sport=None,
            dport=None,
            protocol="unknown",
            length=len(payload),
            inner="unknown",
            info=f"not decoded: {error}"[:80],
        )


def session_history(session_id: int, *, content: bool, now_ns: int) -> dict[str, Any] | None:
    """The ``history`` message of a session (its rows with ``info`` only with
    ``content``), or None when nothing is stored to draw. The caller has checked the
    right to the session's metadata."""
    session = Session.objects.filter(pk=session_id).first()
    if session is None:
        return None
    records = stored_tail(session, now_ns)
    if not records:
        return None
    since = now_ns // _NS - HISTORY_SECONDS
    seconds: dict[int, list[int]] = {}
    for time_ns, payload in records:
        second = time_ns // _NS
        if second > since:
            counts = seconds.setdefault(second, [0, 0])
            counts[0] += 1
            counts[1] += len(payload)  # as the live summaries count bytes
    return {
        "type": "history",
        "stream": "session",
        "id": session_id,
        "rows": [
            packet_row(_row(session, time_ns, payload), content=content)
            for time_ns, payload in records[-HISTORY_ROWS:]
        ],
        "seconds": [[second, *counts] for second, counts in sorted(seconds.items())],
    }
