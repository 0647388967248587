"""A session's stored packets: numbered as the export numbers them, paged and filtered
through the packet indexes written beside the files (:mod:`receiver.packet_index`).

One numbering everywhere. Packet ``N`` of a session is frame ``N`` of the session's
whole export: the export orders the session's files by (first packet, file name) and
merges their packets by time, equal times going to the earlier file
(:func:`jmirror_web.exports.reading.runs`). :class:`Timeline` computes that merge over
the files' index times, as runs of consecutive packets of one file, without reading a
packet: a session whose files do not overlap in time is one run per file; a PPP file
beside an IP file interleaves only where their times do.

A page reads its rows' packets only (by their offsets), and a filtered page scans the
indexes (in C: ``receiver._packet_index.select_records``), never the pcap files. Text of
the info column is matched on the packets themselves, so it searches a bounded number
of packets per request (:data:`INFO_SCAN_LIMIT`) and says when it stopped.
"""

from __future__ import annotations

import bisect
import heapq
import os
import threading
from array import array
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, Final, cast

from django.core.exceptions import ValidationError

from jmirror_web.exports.forms import parse_moment
from jmirror_web.exports.request import PROTOCOL_NUMBERS
from jmirror_web.exports.service import to_ns
from jmirror_web.intercepts.evidence_store import CaptureUnavailable, open_capture
from jmirror_web.intercepts.models import CaptureFile, OutsideSessionsDirectory, Session
from jmirror_web.object_store import StorageError
from receiver.jmirror import DecodeError, decode_datagram
from receiver.live_contract import PacketRow
from receiver.packet_index import (
    ANY_PROTOCOL,
    NO_PORT,
    PROTOCOL_LINK,
    RECORD_SIZE,
    IndexRecord,
    PacketIndex,
    address_key,
    index_header,
    index_path,
    index_prefix,
    read_index_file,
)
from receiver.packet_summary import packet_row, stored_frame_row
from receiver.pcap import RECORD_HEADER_LENGTH, LinkType
from receiver.store import PCAPNG_LINKTYPES

PAGE_SIZES: Final = (25, 50, 100, 200, 500)
DEFAULT_PAGE_SIZE: Final = 100
# Packets whose info text a request may decode to match a text filter.
INFO_SCAN_LIMIT: Final = 20_000
INFO_TEXT_LIMIT: Final = 100
# Rebuilding an index reads its file in slices of this size.
_READ_SLICE: Final = 4 * 2**20
# Indexes kept in memory per process, in bytes (2,000,000 packets are 128 MB).
_CACHE_BYTES: Final = 256 * 2**20
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
PCAPNG_MAGIC: Final = b"\x0a\x0d\x0d\x0a"
# Little-endian pcap, nanosecond and microsecond (what receiver.store and imports write).
PCAP_MAGICS: Final = (b"\x4d\x3c\xb2\xa1", b"\xd4\xc3\xb2\xa1")
PURGED: Final = "The capture file holding this packet was purged under the case's retention period."
_NEVER_BEFORE: Final = -(2**63)
_NEVER_AFTER: Final = 2**63 - 1

# Protocol filter values: the names the export's filter takes, or "link" for what is
# not IP (PPP control, ARP...).
PROTOCOLS: Final[Mapping[str, int]] = {**PROTOCOL_NUMBERS, "link": PROTOCOL_LINK}


# The query parameters of a filter.
FILTERS: Final = ("start", "end", "address", "port", "protocol", "info")


class PacketListError(Exception):
    """A filter or page that cannot be served; ``field`` names the parameter at fault."""

    def __init__(self, message: str, field_name: str = "") -> None:
        super().__init__(message)
        self.field = field_name


class IndexUnavailable(Exception):
    """A file's packets cannot be listed (the message says why, for the user)."""


# Filters -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PacketFilter:
    start_ns: int = _NEVER_BEFORE
    end_ns: int = _NEVER_AFTER
    address: tuple[int, bytes] | None = None
    port: int = NO_PORT
    protocol: int = ANY_PROTOCOL
    info: str = ""
    # What the user typed, for the form and the manifest of a filtered export.
    shown: dict[str, str] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return bool(self.shown)

    @property
    def on_index(self) -> bool:
        """Whether anything but the info text narrows the list."""
        return self.active and set(self.shown) != {"info"}


def parse_time(text: str, name: str) -> int:
    """ns since the epoch of an ISO 8601 time, read as the export's form reads one (UTC
    without a zone; bounded)."""
    try:
        return to_ns(parse_moment(text))
    except ValidationError as error:
        raise PacketListError(f"{name}: {' '.join(error.messages)}", name) from None


def parse_filter(query: Mapping[str, str]) -> PacketFilter:
    """The filter of a request's parameters (start, end, address, port, protocol, info);
    :class:`PacketListError` for a bad one, naming it."""
    shown: dict[str, str] = {}
    values: dict[str, Any] = {}
    for name in FILTERS:
        text = (query.get(name) or "").strip()
        if len(text) > INFO_TEXT_LIMIT:
            raise PacketListError(f"{name} is longer than {INFO_TEXT_LIMIT} characters.", name)
        if text:
            shown[name] = text
    if "start" in shown:
        values["start_ns"] = parse_time(shown["start"], "start")
    if "end" in shown:
        values["end_ns"] = parse_time(shown["end"], "end")
    if values.get("start_ns", _NEVER_BEFORE) >= values.get("end_ns", _NEVER_AFTER):
        raise PacketListError("start must be before end.", "start")
    if "address" in shown:
        try:
            values["address"] = address_key(shown["address"])
        except ValueError:
            raise PacketListError(
                "address must be one IPv4 or IPv6 address, such as 192.0.2.7 or 2001:db8::1.",
                "address",
            ) from None
    if "port" in shown:
        if not shown["port"].isdigit() or not 0 <= int(shown["port"]) <= 65535:
            raise PacketListError("port must be a number from 0 to 65535.", "port")
        values["port"] = int(shown["port"])
    if "protocol" in shown:
        name = shown["protocol"].lower()
        if name.isdigit() and int(name) <= 255:
            values["protocol"] = int(name)
        elif name in PROTOCOLS:
            values["protocol"] = PROTOCOLS[name]
        else:
            raise PacketListError(
                "protocol must be an IP protocol number (0-255) or one of "
                + ", ".join(PROTOCOLS)
                + " (link: packets that are not IP, such as PPP control).",
                "protocol",
            )
    if "info" in shown:
        values["info"] = shown["info"].casefold()
    return PacketFilter(shown=shown, **values)


# One file's index ------------------------------------------------------------------------


class _IndexCache:
    """Indexes of files, by (row, packets counted): a closed file's never changes."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._bytes = 0
        self._entries: OrderedDict[tuple[int, str, int], PacketIndex] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[int, str, int]) -> PacketIndex | None:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
            return found

    def put(self, key: tuple[int, str, int], index: PacketIndex) -> None:
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = index
            self._bytes += _footprint(index)
            while self._bytes > self._limit and len(self._entries) > 1:
                _key, dropped = self._entries.popitem(last=False)
                self._bytes -= _footprint(dropped)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0


def _footprint(index: PacketIndex) -> int:
    # The records and the times the timeline reads (8 bytes a packet, kept with them).
    return len(index.records) + 8 * len(index)


_cache = _IndexCache(_CACHE_BYTES)


def _stream(capture: CaptureFile) -> tuple[BinaryIO, bool]:
    try:
        # The rows were loaded by this request: reading each again would be a query per
        # file of the session.
        stream, growing = open_capture(capture, fresh=True)
    except CaptureUnavailable as error:
        raise IndexUnavailable(
            "The capture file holding this packet is missing or cannot be read (purged after "
            f"the retention period, moved, or not written yet): {error}"
        ) from None
    except OutsideSessionsDirectory as error:
        raise IndexUnavailable(str(error)) from None
    return cast(BinaryIO, stream), growing


# Where a packet's bytes start after its record's offset: a pcap record header, or an
# Enhanced Packet Block's type, length, interface, time and lengths.
_PACKET_AFTER: Final = {False: RECORD_HEADER_LENGTH, True: 28}


def packet_data(stream: BinaryIO, linktype: int, offset: int, captured: int) -> bytes | None:
    """The ``captured`` bytes of the packet whose pcap record (pcapng block) starts at
    ``offset`` of a file of ``linktype``, as its index says; None when the file ends
    first."""
    stream.seek(offset + _PACKET_AFTER[linktype in PCAPNG_LINKTYPES])
    data = stream.read(captured)
    return data if len(data) == captured else None


def _record_fits(stream: BinaryIO, record: IndexRecord, pcapng: bool) -> bool:
    """Whether the file holds, at the record's offset, a packet of its time and length."""
    stream.seek(record.offset)
    head = stream.read(_PACKET_AFTER[pcapng])
    if pcapng:
        if len(head) < 28 or int.from_bytes(head[0:4], "little") != 6:
            return False
        time_ns = int.from_bytes(head[12:16], "little") << 32 | int.from_bytes(
            head[16:20], "little"
        )
        captured = int.from_bytes(head[20:24], "little")
    else:
        if len(head) < 16:
            return False
        seconds, nanoseconds = (
            int.from_bytes(head[0:4], "little"),
            int.from_bytes(head[4:8], "little"),
        )
        time_ns = seconds * 1_000_000_000 + nanoseconds
        captured = int.from_bytes(head[8:12], "little")
    return time_ns == record.time_ns and captured == record.captured


def file_index(capture: CaptureFile) -> PacketIndex:
    """The index of the first ``capture.packets`` packets of a file (those its row
    counts, so every web process numbers the same packets): the one written beside it,
    checked against the file, else what is missing of it built from the file (and kept
    beside a closed local file for the next reader). :class:`IndexUnavailable` says why
    not."""
    wanted = capture.packets
    key = (capture.pk, capture.path, wanted)
    found = _cache.get(key)
    if found is not None:
        return found
    try:
        path = capture.on_disk()
    except OutsideSessionsDirectory as error:
        raise IndexUnavailable(str(error)) from None
    final = path.with_name(path.name.removesuffix(".part"))
    written = read_index_file(index_path(final))
    uploaded = capture.closed and capture.uploaded_at is not None
    if written is not None and len(written) >= wanted and uploaded and not final.exists():
        # A closed file whose local copy went after its upload: its index stays, and
        # checking it would fetch from the object store. A closed file does not change.
        index = PacketIndex(written.linktype, written.records[: wanted * RECORD_SIZE])
        _cache.put(key, index)
        return index
    stream, growing = _stream(capture)
    try:
        index, kept = _checked_or_built(stream, written, wanted)
    except (OSError, StorageError) as error:
        raise IndexUnavailable(
            f"The stored file {Path(capture.path).name} cannot be read to list its packets: {error}"
        ) from None
    finally:
        stream.close()
    if len(index) < wanted:
        raise IndexUnavailable(
            f"The capture file holds {len(index)} packets, fewer than its record says "
            f"({wanted}): it is damaged or cut short."
        )
    if not growing and not kept:
        _keep_beside(path, index)
    _cache.put(key, index)
    return index


def _checked_or_built(
    stream: BinaryIO, written: PacketIndex | None, wanted: int
) -> tuple[PacketIndex, bool]:
    """The index of the file's first ``wanted`` packets, and whether it is the written
    one whole (else it was extended or rebuilt from the file)."""
    head = stream.read(4)
    pcapng = head == PCAPNG_MAGIC
    if not pcapng and head not in PCAP_MAGICS:
        raise IndexUnavailable("The capture file is damaged: it is not a pcap or pcapng file.")
    if written is not None:
        usable = min(len(written), wanted)
        # The last record used must name a packet of its time where it says: an index
        # from before a crash's repair, or of another file, fails this and is rebuilt.
        if usable and not _record_fits(stream, written.record(usable - 1), pcapng):
            usable = 0
        records = written.records[: usable * RECORD_SIZE]
        linktype = written.linktype
    else:
        records, linktype = b"", 0
    if len(records) // RECORD_SIZE >= wanted:
        whole = written is not None and len(written) == len(records) // RECORD_SIZE
        return PacketIndex(linktype, records), whole
    return _build(stream, pcapng, records, linktype, wanted), False


def _build(
    stream: BinaryIO, pcapng: bool, records: bytes | memoryview, linktype: int, wanted: int
) -> PacketIndex:
    """Extend ``records`` (an index of the file's first packets) to ``wanted`` packets by
    reading the file after them."""
    if records:
        last = PacketIndex(linktype, records[-RECORD_SIZE:]).record(0)
        if pcapng:  # a block says its own length (options follow the packet)
            stream.seek(last.offset + 4)
            start = last.offset + int.from_bytes(stream.read(4), "little")
        else:
            start = last.offset + 16 + last.captured
    else:
        stream.seek(0)
        header = stream.read(24)
        if pcapng:
            start = 0
            linktype = int(LinkType.ETHERNET)
        else:
            if len(header) < 24:
                return PacketIndex(linktype, b"")
            start = 24
            linktype = int.from_bytes(header[20:24], "little") & 0x0FFFFFFF
    out = bytearray(records)
    stream.seek(start)
    pending = b""
    offset = start
    while len(out) // RECORD_SIZE < wanted:
        chunk = stream.read(_READ_SLICE)
        if not chunk:
            break
        pending += chunk
        made, consumed = index_prefix(pending, offset, linktype, pcapng)
        out += made
        pending = pending[consumed:]
        offset += consumed
    return PacketIndex(linktype, bytes(out[: wanted * RECORD_SIZE]))


def _keep_beside(path: Path, index: PacketIndex) -> None:
    """Write a built index beside its closed local file, whole or not at all."""
    final = path.with_name(path.name.removesuffix(".part"))
    if not final.exists():
        return  # only in the object store: kept in memory
    target = index_path(final)
    temporary = target.with_name(f".{target.name}.{os.getpid()}")
    try:
        with open(temporary, "wb") as stream:
            os.fchmod(stream.fileno(), 0o600)
            stream.write(index_header(index.linktype))
            stream.write(index.records)
        os.replace(temporary, target)
    except OSError:
        temporary.unlink(missing_ok=True)


def forget_indexes() -> None:
    """Empty this process's index cache (tests; a purge does not need it: its rows go)."""
    _cache.clear()


# The session's numbering -------------------------------------------------------------


@dataclass
class _File:
    capture: CaptureFile
    index: PacketIndex | None
    times: Sequence[int]
    ordered: bool  # times never decrease: runs are found by bisection
    # Why its packets cannot be listed (purged, missing, damaged); they keep their
    # numbers, at the file's first packet time, so that later numbers do not move.
    unavailable: str = ""


@dataclass
class Timeline:
    """A session's stored packets in export order, as runs of one file's packets."""

    files: list[_File]
    # (first number, file position, first record, count), by first number.
    runs: list[tuple[int, int, int, int]]
    total: int

    def locate(self, number: int) -> tuple[int, int]:
        """(file position, record) of packet ``number`` (from 1)."""
        if not 1 <= number <= self.total:
            raise IndexError(number)
        position = bisect.bisect_right(self.runs, (number, _NEVER_AFTER)) - 1
        first, file, record, _count = self.runs[position]
        return file, record + number - first

    def number_of(self, position: int, record: int) -> int:
        """The number of record ``record`` (from 0) of file ``position``."""
        for first, file, start, count in self.runs:
            if file == position and start <= record < start + count:
                return first + record - start
        raise IndexError((position, record))


def _first_not_before(times: Sequence[int], ordered: bool, start: int, limit: int) -> int:
    """The first position from ``start`` whose time is at least ``limit`` (the length
    when none is): the export's cursor stops there."""
    if ordered:
        return bisect.bisect_left(times, limit, start)
    position = start
    while position < len(times) and times[position] < limit:
        position += 1
    return position


def export_order(captures: list[CaptureFile]) -> list[CaptureFile]:
    """The files in the order the export merges them (first packet, then name)."""

    def key(capture: CaptureFile) -> tuple[int, str]:
        first = capture.first_packet
        first_ns = -1 if first is None else to_ns(first)
        return first_ns, Path(capture.path).name

    return sorted(captures, key=key)


def timeline(files: list[_File]) -> Timeline:
    """Merge the files as :func:`jmirror_web.exports.reading.runs` does."""
    runs: list[tuple[int, int, int, int]] = []
    heap: list[tuple[int, int]] = []  # (head time, file position); position is the order
    positions = [0] * len(files)
    for position, each in enumerate(files):
        if each.times:
            heap.append((each.times[0], position))
    heapq.heapify(heap)
    number = 1
    while heap:
        _time, position = heapq.heappop(heap)
        each = files[position]
        if heap:
            next_time, next_position = heap[0]
            # Equal times go to the earlier file, then the other's turn.
            limit = next_time + 1 if position < next_position else next_time
        else:
            limit = _NEVER_AFTER
        start = positions[position]
        # At least the head itself: it is the least (time, order) of all heads.
        end = _first_not_before(each.times, each.ordered, start, limit) if heap else len(each.times)
        runs.append((number, position, start, end - start))
        number += end - start
        positions[position] = end
        if end < len(each.times):
            heapq.heappush(heap, (each.times[end], position))
    return Timeline(files, runs, number - 1)


def session_timeline(session: Session) -> Timeline:
    """The session's stored packets, numbered. A file whose packets cannot be listed
    (purged, missing, damaged) keeps its count of numbers as a block at its first packet's
    time, so that the numbers of the others stay what they were."""
    captures = list(session.files.filter(packets__gt=0))
    files = []
    for capture in export_order(captures):
        try:
            if capture.purged_at is not None:
                raise IndexUnavailable(PURGED)
            index = file_index(capture)
        except IndexUnavailable as error:
            first = capture.first_packet or session.first_seen
            first_ns = to_ns(first)
            files.append(_File(capture, None, [first_ns] * capture.packets, True, str(error)))
            continue
        files.append(_File(capture, index, index.times(), index.ordered))
    return timeline(files)


# Pages -----------------------------------------------------------------------------------


@dataclass
class PacketPage:
    rows: list[dict[str, Any]]
    page: int
    page_size: int
    # Packets matching the filter; with an info text, those found in what was searched.
    matched: int
    stored: int  # the session's stored packets
    searched_all: bool = True  # False: an info text search stopped at INFO_SCAN_LIMIT
    # Packets of files that could not be searched (purged, missing, damaged).
    unsearched: int = 0
    # The link types of the session's listed files (one pcap file holds one).
    linktypes: frozenset[int] = frozenset()

    @property
    def pages(self) -> int:
        return max(1, -(-self.matched // self.page_size))


def _matching(line: Timeline, wanted: PacketFilter) -> Iterator[tuple[int, int, int]]:
    """(number, file position, record) of the matching packets, in number order."""
    selected = [
        array("I")
        if each.index is None
        else each.index.select(
            start_ns=wanted.start_ns,
            end_ns=wanted.end_ns,
            address=wanted.address,
            port=wanted.port,
            protocol=wanted.protocol,
        )
        if wanted.on_index
        else None
        for each in line.files
    ]
    for first, position, record, count in line.runs:
        numbers = selected[position]
        if numbers is None:
            for k in range(count):
                yield first + k, position, record + k
            continue
        low = bisect.bisect_left(numbers, record)
        high = bisect.bisect_left(numbers, record + count, low)
        for k in range(low, high):
            yield first + numbers[k] - record, position, numbers[k]


def stored_page(session: Session, wanted: PacketFilter, page: int, page_size: int) -> PacketPage:
    """Page ``page`` (from 1) of the session's stored packets matching ``wanted``."""
    if page_size not in PAGE_SIZES:
        raise PacketListError(
            f"page_size must be one of {', '.join(map(str, PAGE_SIZES))}.", "page_size"
        )
    if page < 1 or page > 10**9:
        raise PacketListError("page must be a number from 1.", "page")
    line = session_timeline(session)
    skip = (page - 1) * page_size
    chosen: list[tuple[int, int, int]] = []
    searched_all = True
    if wanted.info:
        matched = 0
        scanned = 0
        readers = _Readers(line)
        try:
            for number, position, record in _matching(line, wanted):
                if scanned >= INFO_SCAN_LIMIT:
                    searched_all = False
                    break
                scanned += 1
                row = readers.row(position, record)
                if (
                    wanted.info in row["info"].casefold()
                    or wanted.info in row["protocol"].casefold()
                ):
                    if skip <= matched < skip + page_size:
                        chosen.append((number, position, record))
                    matched += 1
        finally:
            readers.close()
    elif not wanted.on_index:
        matched = line.total
        for number in range(skip + 1, min(line.total, skip + page_size) + 1):
            position, record = line.locate(number)
            chosen.append((number, position, record))
    else:
        matched = 0
        for item in _matching(line, wanted):
            if skip <= matched < skip + page_size:
                chosen.append(item)
            matched += 1
    unsearched = (
        sum(len(each.times) for each in line.files if each.index is None) if wanted.active else 0
    )
    return PacketPage(
        linktypes=frozenset(each.index.linktype for each in line.files if each.index is not None),
        unsearched=unsearched,
        rows=_rows(line, chosen),
        page=page,
        page_size=page_size,
        matched=matched,
        stored=line.total,
        searched_all=searched_all,
    )


class _Readers:
    """Open files of a timeline, read by offset; each opened once per request."""

    def __init__(self, line: Timeline) -> None:
        self._line = line
        self._open: dict[int, BinaryIO] = {}

    def packet(self, position: int, record: int) -> tuple[IndexRecord, bytes]:
        each = self._line.files[position]
        if each.index is None:
            raise IndexUnavailable(each.unavailable)
        entry = each.index.record(record)
        stream = self._open.get(position)
        if stream is None:
            stream, _growing = _stream(each.capture)
            self._open[position] = stream
        data = packet_data(stream, each.index.linktype, entry.offset, entry.captured)
        if data is None:
            raise IndexUnavailable(
                f"The stored file {Path(each.capture.path).name} ends inside packet "
                f"{record + 1} of it."
            )
        return entry, data

    def row(self, position: int, record: int) -> dict[str, Any]:
        each = self._line.files[position]
        if each.index is None:
            return _unavailable_row(each)
        entry, data = self.packet(position, record)
        return _row(each.index.linktype, entry, data)

    def close(self) -> None:
        for stream in self._open.values():
            stream.close()
        self._open.clear()


def _row(linktype: int, entry: IndexRecord, data: bytes) -> dict[str, Any]:
    if linktype in (int(LinkType.RAW), int(LinkType.PPP_HDLC)):
        try:
            summary: PacketRow = packet_row(entry.time_ns, decode_datagram(bytes(8) + data))
        except DecodeError:
            summary = stored_frame_row(entry.time_ns, linktype, b"", None, None, None, None)
            summary["protocol"], summary["info"] = "unknown", "not a packet the receiver decodes"
            summary["length"] = len(data)
    else:
        ported = entry.version and entry.protocol in (6, 17, 132, 136)
        summary = stored_frame_row(
            entry.time_ns,
            linktype,
            data,
            entry.source or None,
            entry.destination or None,
            entry.sport if ported else None,
            entry.dport if ported else None,
        )
    seconds, nanoseconds = divmod(entry.time_ns, 1_000_000_000)
    moment = datetime.fromtimestamp(seconds, UTC)
    return {
        "time": moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanoseconds:09d}Z",
        "time_ns": entry.time_ns,
        "src": summary["src"],
        "dst": summary["dst"],
        "protocol": summary["protocol"],
        "sport": summary["sport"],
        "dport": summary["dport"],
        "length": entry.length,
        "info": summary["info"],
    }


def _unavailable_row(each: _File) -> dict[str, Any]:
    return {
        "time": None,
        "time_ns": None,
        "src": None,
        "dst": None,
        "protocol": "",
        "sport": None,
        "dport": None,
        "length": None,
        "info": each.unavailable,
        "unavailable": True,
    }


def _rows(line: Timeline, chosen: list[tuple[int, int, int]]) -> list[dict[str, Any]]:
    readers = _Readers(line)
    try:
        rows = []
        for number, position, record in chosen:
            row = readers.row(position, record)
            rows.append({"number": number, **row})
        return rows
    except (OSError, StorageError) as error:
        raise IndexUnavailable(f"A stored file cannot be read: {error}") from None
    finally:
        readers.close()


def locate_packet(session: Session, number: int) -> tuple[CaptureFile, int, int] | None:
    """The file holding packet ``number`` (from 1) of the session as the export numbers
    it, the packet's index (from 1) in that file, and the session's stored total; None
    out of range."""
    line = session_timeline(session)
    if not 1 <= number <= line.total:
        return None
    position, record = line.locate(number)
    return line.files[position].capture, record + 1, line.total


def number_received_at(session: Session, time_ns: int) -> int | None:
    """The number of the session's first stored packet received at exactly ``time_ns``
    (several can share a time: two files side by side, or one receive batch the kernel
    gave no timestamps); None when none was."""
    line = session_timeline(session)
    best: int | None = None
    for position, each in enumerate(line.files):
        if each.index is None:
            continue
        if each.ordered:
            record = bisect.bisect_left(each.times, time_ns)
            found = record < len(each.times) and each.times[record] == time_ns
        else:
            found = time_ns in each.times
            record = each.times.index(time_ns) if found else 0
        if found:
            number = line.number_of(position, record)
            best = number if best is None else min(best, number)
    if best is None:
        for each in line.files:
            first, last = each.capture.first_packet, each.capture.last_packet
            if each.index is None and _spans(first, last, time_ns):
                raise IndexUnavailable(each.unavailable)
    return best


def _spans(first: datetime | None, last: datetime | None, time_ns: int) -> bool:
    """Whether a file's recorded span (cut to the microsecond) may hold ``time_ns``."""
    moment = _EPOCH + timedelta(microseconds=time_ns // 1000)
    return (first is None or first <= moment) and (last is None or moment <= last)


# For the page and the API ----------------------------------------------------------------

LISTED: Final = "packets listed"


@dataclass
class Listing:
    """What the page and the API show of a session's stored packets."""

    wanted: PacketFilter
    page: PacketPage | None = None
    error: str = ""
    error_field: str = ""


def _number(text: str | None, name: str, default: int) -> int:
    if text is None or text == "":
        return default
    if not text.isdigit() or len(text) > 9:
        raise PacketListError(f"{name} must be a whole number.", name)
    return int(text)


def list_packets(session: Session, query: Mapping[str, str], *, content: bool) -> Listing:
    """A page of the session's stored packets as ``query`` asks (``page``, ``page_size``
    and :func:`parse_filter`'s parameters). Without ``content`` (the content right) the
    info column is left out, and so is filtering on it. Errors are said, never raised:
    the page shows them beside the form, the API answers 400."""
    try:
        wanted = parse_filter(query)
        if wanted.info and not content:
            raise PacketListError(
                "Searching the info column needs the content right on this case.", "info"
            )
        page = _number(query.get("page"), "page", 1)
        page_size = _number(query.get("page_size"), "page_size", DEFAULT_PAGE_SIZE)
        found = stored_page(session, wanted, page, page_size)
    except PacketListError as error:
        # The form shows again what was typed, cut to what a filter may hold, to be
        # corrected rather than typed anew.
        typed = {name: (query.get(name) or "").strip()[:INFO_TEXT_LIMIT] for name in FILTERS}
        shown = {name: text for name, text in typed.items() if text}
        return Listing(PacketFilter(shown=shown), error=str(error), error_field=error.field)
    except IndexUnavailable as error:
        return Listing(wanted, error=str(error))
    if not content:
        for row in found.rows:
            row["info"] = None
    return Listing(wanted, found)


def shows_content(listing: Listing) -> bool:
    """Whether a listing shows any packet's own fields (rows of unavailable files show
    none), so that it is audited as content seen."""
    return listing.page is not None and any(not row.get("unavailable") for row in listing.page.rows)


def audit_details(listing: Listing) -> dict[str, Any]:
    """The audit record of a listing shown with packets' info (content)."""
    assert listing.page is not None
    numbers = [row["number"] for row in listing.page.rows]
    return {
        "filter": listing.wanted.shown or "no filter",
        "page": listing.page.page,
        "numbers": [numbers[0], numbers[-1]] if numbers else [],
    }
