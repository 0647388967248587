"""Reading stored capture files (as ``receiver.store`` writes them) and merging them in
time order: a cursor per file reads whole records a buffer at a time, and :func:`runs`
merges the files of every session into runs of wanted records.

This is the export's per-packet loop: :meth:`Cursor.scan` finds a buffer whose records are
all wanted by their lengths alone, and files whose times do not overlap are read one
after the other.
"""

from __future__ import annotations

import heapq
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from io import FileIO
from pathlib import Path
from typing import Final

from jmirror_web.exports.filtering import Match
from jmirror_web.exports.request import CHUNK_BYTES, SessionSource, SourceError, SourceFile, Window
from receiver import pcap

# A record's included length; pcap.SNAPLEN is also the largest record accepted: anything
# larger is garbage.
_LENGTH_AT_8 = struct.Struct("<8xI")
NS_PER_SECOND: Final = 1_000_000_000
_PART_SUFFIX: Final = ".part"
# Reads of 3/4 MiB: a run of records (at most one read, plus the part of a record
# kept from the read before) makes an output piece below CHUNK_BYTES even as pcapng,
# which the chunks then are without another copy.
_READ_BYTES: Final = CHUNK_BYTES * 3 // 4
_NEVER: Final = 1 << 64  # later than any time in ns


@dataclass(frozen=True)
class SelectedFile:
    """One selected file: its link type as read from its header, and where it sorts."""

    source: SourceFile
    linktype: int
    order: int  # tie-breaker for equal times: session order in the request, then file order
    session: int  # index in the request's sessions
    window: Window  # the request's window narrowed to the session's own


@dataclass(frozen=True)
class SessionPlan:
    session: SessionSource
    inputs: list[SelectedFile]
    linktypes: list[int]  # of the selected files, sorted; an interface each in pcapng


def read_linktype(path: Path) -> int:
    """The link type in a stored pcap file's header (:class:`SourceError` if it is not one)."""
    stream, _growing = open_source(path)
    with stream:
        return read_header(stream, path.name)


def open_source(path: Path) -> tuple[FileIO, bool]:
    """The stored file opened for reading, and whether it is still being written.

    A file being written is ``<path>.part`` until the store closes it: tried second,
    and the final name once more in case it was renamed in between."""
    part = path.with_name(path.name + _PART_SUFFIX)
    growing = path.name.endswith(_PART_SUFFIX)
    for candidate, is_part in ((path, growing), (part, True), (path, growing)):
        try:
            return open(candidate, "rb", buffering=0), is_part
        except FileNotFoundError:
            continue
        except OSError as error:
            raise SourceError(
                f"The stored file {path.name} cannot be read ({error.strerror})."
            ) from error
    raise SourceError(f"The stored file {path.name} is missing.")


def read_header(stream: FileIO, name: str) -> int:
    try:
        header = stream.read(pcap.FILE_HEADER_LENGTH)
    except OSError as error:
        raise SourceError(f"The stored file {name} cannot be read ({error.strerror}).") from error
    if len(header) < pcap.FILE_HEADER_LENGTH:
        raise SourceError(f"The stored file {name} is shorter than a pcap file header.")
    magic, major, _minor, _zone, _sigfigs, _snaplen, linktype = pcap.FILE_HEADER.unpack(header)
    if magic != pcap.NANOSECOND_MAGIC or major != 2:
        raise SourceError(
            f"The stored file {name} is not a nanosecond pcap file "
            f"(it starts with 0x{header[:4].hex()})."
        )
    return int(linktype)


class Cursor:
    """Reads one stored file's records in order, a buffer of whole records at a time."""

    __slots__ = (
        "base",
        "buffer",
        "careful",
        "done",
        "end",
        "end_ns",
        "growing",
        "head",
        "input",
        "interface",
        "linktype",
        "match",
        "name",
        "pos",
        "remaining",
        "start_ns",
        "stream",
    )

    def __init__(self, item: SelectedFile, match: Match | None, interface: int) -> None:
        window = item.window
        self.input = item
        self.name = item.source.path.name
        self.linktype = item.linktype
        self.interface = interface  # pcapng interface id
        self.match = match
        self.start_ns = -1 if window.start_ns is None else window.start_ns
        self.end_ns = _NEVER if window.end_ns is None else window.end_ns
        self.stream: FileIO | None = None
        self.growing = False
        # Read into again and again (never resized, so views of runs handed out stay
        # valid objects; their bytes are used before the next scan, as runs says).
        self.buffer = bytearray()
        self.end = 0  # bytes of the buffer in use
        self.careful = False  # the buffer has records to look at one by one
        self.pos = 0
        self.base = pcap.FILE_HEADER_LENGTH  # file offset of buffer[0]
        self.remaining = 0  # bytes still to read, up to the size when opened
        self.head: int | None = None  # time of the record at pos, when a scan stopped on it
        self.done = False

    def open(self) -> None:
        self.stream, self.growing = open_source(self.input.source.path)
        read_header(self.stream, self.name)
        self.remaining = os.fstat(self.stream.fileno()).st_size - pcap.FILE_HEADER_LENGTH
        self.buffer = bytearray(_READ_BYTES + 16 + pcap.SNAPLEN)

    def close(self) -> None:
        self.done = True
        self.buffer = bytearray()
        if self.stream is not None:
            self.stream.close()
            self.stream = None

    def _refill(self) -> bool:
        """Keep the unread rest of the buffer and read more; False at the end of the file."""
        buffer = self.buffer
        kept = self.end - self.pos
        read = 0
        if self.remaining > 0 and self.stream is not None:
            # The unread rest (part of one record) moves to the front, the read follows it.
            buffer[:kept] = buffer[self.pos : self.end]
            try:
                with memoryview(buffer) as view:
                    read = (
                        self.stream.readinto(view[kept : kept + min(_READ_BYTES, self.remaining)])
                        or 0
                    )
            except OSError as error:
                raise SourceError(
                    f"The stored file {self.name} cannot be read at byte "
                    f"{self.base + self.pos} ({error.strerror})."
                ) from error
        if not read:
            if kept and not self.growing:
                raise SourceError(
                    f"The stored file {self.name} is truncated: it ends inside the record "
                    f"at byte {self.base + self.pos}."
                )
            return False  # a file being written: its partial last record is not there yet
        self.remaining -= read
        self.base += self.pos
        self.end = kept + read
        self.pos = 0
        self.careful = False
        return True

    def scan(self, limit: int) -> tuple[int, int, int, int, int]:
        """The next run of wanted records in ``buffer``: ``(start, end, count, first_ns,
        last_ns)``, ``count`` possibly 0.

        A run stops before a record at or after ``limit`` (then ``head`` is its time,
        or ``done`` is set when it is at or after the window's end, which the caller put
        in ``limit``), at the buffer's end, before a record the filter drops, or at the
        end of the file (``done``). Records before the window's start are skipped."""
        buffer = self.buffer
        pos = self.pos
        available = self.end
        unpack = pcap.RECORD_HEADER.unpack_from
        match = self.match
        linktype = self.linktype
        start_ns = self.start_ns
        nanoseconds = NS_PER_SECOND
        snaplen = pcap.SNAPLEN
        start = pos
        count = first = last = 0
        self.head = None
        if match is None and not self.careful and limit > start_ns:
            # The common case, a whole buffer wanted: find the whole records by their
            # lengths alone; if the first and the last are in the window and below the
            # limit, so is every one between (a file is in time order).
            unpack_length = _LENGTH_AT_8.unpack_from
            end = pos
            final = -1
            while end + 16 <= available:
                length = unpack_length(buffer, end)[0]
                following = end + 16 + length
                if length > snaplen or following > available:
                    break
                final = end
                end = following
                count += 1
            if count:
                seconds, fraction, _, _ = unpack(buffer, pos)
                first = seconds * nanoseconds + fraction
                seconds, last_fraction, _, _ = unpack(buffer, final)
                last = seconds * nanoseconds + last_fraction
                if (
                    first >= start_ns
                    and last < limit
                    and fraction < nanoseconds
                    and last_fraction < nanoseconds
                ):
                    self.pos = end
                    return start, end, count, first, last
            self.careful = True  # until the next read
            count = first = last = 0
        while True:
            if pos + 16 <= available:
                seconds, fraction, length, _original = unpack(buffer, pos)
                if length > snaplen or fraction >= nanoseconds:
                    raise SourceError(
                        f"The stored file {self.name} is corrupt at byte {self.base + pos}: "
                        "its record header is not valid."
                    )
                end = pos + 16 + length
            else:
                end = available + 1
            if end > available:
                if count:
                    break
                self.pos = pos
                if not self._refill():
                    self.done = True
                    break
                pos = start = 0
                available = self.end
                continue
            time = seconds * nanoseconds + fraction
            if time < start_ns:
                if count:
                    break
                pos = start = end
                continue
            if time >= limit:
                self.head = time
                break
            if match is not None and not match(buffer, pos + 16, end, linktype):
                if count:
                    break
                pos = start = end
                continue
            if not count:
                first = time
            count += 1
            last = time
            pos = end
        self.pos = pos
        return start, pos, count, first, last


Run = tuple[Cursor, int, int, int, int, int]


def runs(
    inputs: Iterable[SelectedFile],
    match: Match | None,
    interfaces: dict[tuple[int, int], int] | None = None,
) -> Iterator[Run]:
    """Runs of wanted records over ``inputs``, merged in (time, order) order:
    ``(cursor, start, end, count, first_ns, last_ns)``, the bytes being
    ``cursor.buffer[start:end]`` until the next run is asked for. ``interfaces`` gives
    each (session, link type) its pcapng interface id.

    A file is opened only when the merge reaches its ``first_ns`` (a lower bound of its
    times), so files that do not overlap are read one after the other, each in one run
    per buffer, and at most the overlapping files are open at once. Each file is read
    inside its own session's window (``SelectedFile.window``)."""
    heap: list[tuple[int, int, Cursor]] = []
    for item in inputs:
        key = -1 if item.source.first_ns is None else item.source.first_ns
        interface = interfaces[item.session, item.linktype] if interfaces else 0
        heap.append((key, item.order, Cursor(item, match, interface)))
    cursors = [cursor for _key, _order, cursor in heap]
    heapq.heapify(heap)
    try:
        while heap:
            _key, order, cursor = heapq.heappop(heap)
            if cursor.stream is None:
                cursor.open()
                cursor.scan(-1)  # stops on the first record in the window, if any
                if cursor.done or cursor.head is None or cursor.head >= cursor.end_ns:
                    cursor.close()
                else:
                    heapq.heappush(heap, (cursor.head, order, cursor))
                continue
            if heap:
                next_time, next_order, _next = heap[0]
                # Equal times go to the earlier file, then the other's turn.
                limit = next_time + 1 if order < next_order else next_time
                limit = min(limit, cursor.end_ns)
            else:
                limit = cursor.end_ns
            while True:
                start, end, count, first, last = cursor.scan(limit)
                if count:
                    yield cursor, start, end, count, first, last
                if cursor.done:
                    cursor.close()
                    break
                if cursor.head is not None:
                    if cursor.head >= cursor.end_ns:
                        cursor.close()
                    else:
                        heapq.heappush(heap, (cursor.head, order, cursor))
                    break
    finally:  # an error or an abandoned export: no file left open
        for cursor in cursors:
            cursor.close()
