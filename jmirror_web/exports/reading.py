"""Reading stored capture files (as ``receiver.store`` writes them) and merging them in
time order: a cursor per file reads whole records a buffer at a time, and :func:`runs`
merges the files of every session into runs of wanted records.

This is the export's per-packet loop: :meth:`Cursor.scan` finds a buffer whose records are
all wanted by their lengths alone, and files whose times do not overlap are read one
after the other.

A CN2 (Contrail) session's files are pcapng (``receiver.store.PCAPNG_LINKTYPES``): one
section, one interface, then an Enhanced Packet Block per frame whose options keep the
vRouter's Juniper header. :class:`BlockCursor` reads those, a block at a time (plainer:
they are a small share of the traffic), and merges with the pcap cursors as one of them.

Files change under a running export (a ``.part`` rotates to its final name or closes when
idle, is uploaded to the evidence store, its local copy removed): each file is opened once,
when the merge reaches it, through its :attr:`SourceFile.opener` (the web follows it to
wherever it is by then: the final name, the ``.part``, the object in the store), and that
stream is kept to the file's end; Linux keeps an unlinked open file readable and an
object version never changes, so nothing after the open is seen. Opening every file up
front instead would hold a descriptor (or a store connection) per file for the whole
export: a case export of a year is thousands of files, past a process's descriptor limit
with a few exports at once. Lazily, at most the files whose times overlap are open at
once; the headers read while planning are read and closed again.
"""

from __future__ import annotations

import heapq
import os
import struct
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NamedTuple

from jmirror_web.exports.filtering import Match
from jmirror_web.exports.request import (
    CHUNK_BYTES,
    OpenedSource,
    SessionSource,
    SourceError,
    SourceFile,
    SourceStream,
    Window,
)
from jmirror_web.object_store import StorageError
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

# pcapng as the store writes it: little-endian blocks of type, total length, body, total
# length again. An Enhanced Packet Block's fixed part: type, length, interface, time
# high, time low, captured length, original length; its data and options follow.
_U32: Final = struct.Struct("<I")
_BLOCK_HEAD: Final = struct.Struct("<II")
_EPB_FIXED: Final = struct.Struct("<IIIIIII")
_EPB_FIXED_LENGTH: Final = 28
# The largest block accepted: a whole frame and its options (a comment and the Juniper
# header of at most two 255-byte VN names: far below 64 KiB). Anything larger is garbage.
MAX_BLOCK: Final = pcap.SNAPLEN + 65536
# The section and interface blocks at the start of a stored pcapng file are small: a
# bound for hostile input.
_MAX_HEADER_BLOCK: Final = 65536
_SECTION_MAGIC: Final = _U32.pack(pcap.PCAPNG_SECTION_HEADER)
_NANOSECONDS_RESOLUTION: Final = 9


class StoredHeader(NamedTuple):
    """What a stored file's header says: its link type, how many bytes it takes, and
    whether the file is pcapng (Enhanced Packet Blocks) rather than pcap (records)."""

    linktype: int
    length: int
    pcapng: bool


@dataclass(frozen=True)
class SelectedFile:
    """One selected file: its link type as read from its header, and where it sorts."""

    source: SourceFile
    linktype: int
    order: int  # tie-breaker for equal times: session order in the request, then file order
    session: int  # index in the request's sessions
    window: Window  # the request's window narrowed to the session's own
    pcapng: bool = False  # a stored pcapng file (a CN2 session's), read by BlockCursor


@dataclass(frozen=True)
class SessionPlan:
    session: SessionSource
    inputs: list[SelectedFile]
    linktypes: list[int]  # of the selected files, sorted; an interface each in pcapng


def read_linktype(path: Path) -> int:
    """The link type in a stored pcap or pcapng file's header (:class:`SourceError` if it
    is neither)."""
    opened = open_path(path)
    with closing(opened.stream):
        return read_header(opened.stream, path.name).linktype


def open_source(source: SourceFile) -> OpenedSource:
    """``source`` opened for reading: through its opener (which follows the file to
    wherever it is by now), else at its path (:func:`open_path`). Raises
    :class:`SourceError`."""
    if source.opener is not None:
        return source.opener()
    return open_path(source.path)


def open_path(path: Path) -> OpenedSource:
    """The stored local file opened for reading, its size then, and whether it is still
    being written.

    A file being written is ``<name>.part`` until the store closes it: whichever of the
    two names ``path`` is, the final name is tried first, then ``.part``, then the
    final name once more in case it was renamed in between (a row read while only the
    ``.part`` existed must still find the file once rotated)."""
    final = path.with_name(path.name.removesuffix(_PART_SUFFIX))
    part = final.with_name(final.name + _PART_SUFFIX)
    for candidate, is_part in ((final, False), (part, True), (final, False)):
        try:
            stream = open(candidate, "rb", buffering=0)  # noqa: SIM115  (returned open)
        except FileNotFoundError:
            continue
        except OSError as error:
            raise SourceError(
                f"The stored file {final.name} cannot be read ({error.strerror})."
            ) from error
        try:
            size = os.fstat(stream.fileno()).st_size
        except OSError as error:
            stream.close()
            raise SourceError(
                f"The stored file {final.name} cannot be read ({error.strerror})."
            ) from error
        return OpenedSource(stream, size, is_part)
    raise SourceError(f"The stored file {final.name} is missing.")


def _why(error: OSError | StorageError) -> str:
    return error.strerror if isinstance(error, OSError) and error.strerror else str(error)


def read_header(stream: SourceStream, name: str) -> StoredHeader:
    """Read a stored file's header, leaving ``stream`` at its first record or block."""
    try:
        header = stream.read(pcap.FILE_HEADER_LENGTH) or b""
    except (OSError, StorageError) as error:
        raise SourceError(f"The stored file {name} cannot be read ({_why(error)}).") from error
    if header[:4] == _SECTION_MAGIC:
        return _read_pcapng_header(stream, name, header)
    if len(header) < pcap.FILE_HEADER_LENGTH:
        raise SourceError(f"The stored file {name} is shorter than a pcap file header.")
    magic, major, _minor, _zone, _sigfigs, _snaplen, linktype = pcap.FILE_HEADER.unpack(header)
    if magic != pcap.NANOSECOND_MAGIC or major != 2:
        raise SourceError(
            f"The stored file {name} is not a nanosecond pcap file "
            f"(it starts with 0x{header[:4].hex()})."
        )
    return StoredHeader(int(linktype), pcap.FILE_HEADER_LENGTH, False)


def _read_pcapng_header(stream: SourceStream, name: str, start: bytes) -> StoredHeader:
    """The section and interface blocks of a stored pcapng file, as the store writes
    them (``receiver.store.capture_file_header``): little-endian, one interface with
    nanosecond times. ``start`` is what was read of the file already."""

    def invalid(why: str) -> SourceError:
        return SourceError(f"The stored file {name} is not a pcapng file as stored: {why}.")

    def read_block(at: int, kept: bytes) -> bytes:
        if len(kept) < 12:
            kept += _read(stream, name, 12 - len(kept))
        if len(kept) < 12:
            raise SourceError(f"The stored file {name} is shorter than a pcapng file header.")
        block_type, total = _BLOCK_HEAD.unpack_from(kept)
        if kept[8:12] == b"\x1a\x2b\x3c\x4d" and block_type == pcap.PCAPNG_SECTION_HEADER:
            raise invalid("its section is big-endian")
        if total < 12 or total & 3 or total > _MAX_HEADER_BLOCK or len(kept) > total:
            raise invalid(f"the block at byte {at} has a length of {total}")
        block = kept + _read(stream, name, total - len(kept))
        if len(block) < total:
            raise SourceError(f"The stored file {name} is shorter than a pcapng file header.")
        if _U32.unpack_from(block, total - 4)[0] != total:
            raise invalid(f"the block at byte {at} has two different lengths")
        return block

    section = read_block(0, start)
    if len(section) < 28 or _U32.unpack_from(section, 8)[0] != pcap.PCAPNG_BYTE_ORDER_MAGIC:
        raise invalid("its section header is not valid")
    interface = read_block(len(section), b"")
    if _U32.unpack_from(interface)[0] != pcap.PCAPNG_INTERFACE or len(interface) < 20:
        raise invalid("its section does not start with an interface description")
    linktype = int.from_bytes(interface[8:10], "little")
    # The interface's options, for its time resolution (microseconds when absent).
    resolution = 6
    position, end = 16, len(interface) - 4
    while position + 4 <= end:
        code, length = struct.unpack_from("<HH", interface, position)
        if code == pcap.OPTION_END:
            break
        if position + 4 + length > end:
            raise invalid("an interface option runs past its block")
        if code == pcap.OPTION_IF_TSRESOL and length >= 1:
            resolution = interface[position + 4]
        position += 4 + length + (-length & 3)
    if resolution != _NANOSECONDS_RESOLUTION:
        raise invalid("its packet times are not in nanoseconds")
    return StoredHeader(linktype, len(section) + len(interface), True)


def _read(stream: SourceStream, name: str, size: int) -> bytes:
    try:
        return stream.read(size) or b""
    except (OSError, StorageError) as error:
        raise SourceError(f"The stored file {name} cannot be read ({_why(error)}).") from error


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
        self.stream: SourceStream | None = None
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
        opened = open_source(self.input.source)
        self.stream, self.growing = opened.stream, opened.growing
        read_header(self.stream, self.name)
        self.remaining = opened.size - pcap.FILE_HEADER_LENGTH
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
            except (OSError, StorageError) as error:
                raise SourceError(
                    f"The stored file {self.name} cannot be read at byte "
                    f"{self.base + self.pos} ({_why(error)})."
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


class BlockCursor(Cursor):
    """Reads one stored pcapng file's Enhanced Packet Blocks in order, as
    :class:`Cursor` reads records: runs of whole wanted blocks in ``buffer``, each block
    as stored (its options, the Juniper header, included). Blocks that hold no packet
    (statistics, names: the store writes none) are left out."""

    __slots__ = ()

    def open(self) -> None:
        opened = open_source(self.input.source)
        self.stream, self.growing = opened.stream, opened.growing
        header = read_header(self.stream, self.name)
        if not header.pcapng:
            raise SourceError(f"The stored file {self.name} changed: it is no longer pcapng.")
        self.base = header.length
        self.remaining = opened.size - header.length
        self.buffer = bytearray(_READ_BYTES + MAX_BLOCK)

    def _corrupt(self, pos: int) -> SourceError:
        return SourceError(
            f"The stored file {self.name} is corrupt at byte {self.base + pos}: "
            "its record header is not valid."
        )

    def scan(self, limit: int) -> tuple[int, int, int, int, int]:
        """As :meth:`Cursor.scan`, over blocks: ``buffer[start:end]`` are whole Enhanced
        Packet Blocks of interface 0."""
        buffer = self.buffer
        pos = self.pos
        available = self.end
        match = self.match
        linktype = self.linktype
        start_ns = self.start_ns
        start = pos
        count = first = last = 0
        self.head = None
        while True:
            if pos + 12 <= available:
                block_type, total = _BLOCK_HEAD.unpack_from(buffer, pos)
                if total < 12 or total & 3 or total > MAX_BLOCK:
                    raise self._corrupt(pos)
                end = pos + total
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
            if _U32.unpack_from(buffer, end - 4)[0] != total:
                raise self._corrupt(pos)
            if block_type != pcap.PCAPNG_ENHANCED_PACKET:
                if block_type in (pcap.PCAPNG_SECTION_HEADER, pcap.PCAPNG_INTERFACE):
                    raise SourceError(
                        f"The stored file {self.name} has a second section or interface at "
                        f"byte {self.base + pos}, which the store never writes."
                    )
                if count:
                    break
                pos = start = end
                continue
            if total < _EPB_FIXED_LENGTH + 4:
                raise self._corrupt(pos)
            _type, _total, interface, high, low, captured, _original = _EPB_FIXED.unpack_from(
                buffer, pos
            )
            data = pos + _EPB_FIXED_LENGTH
            if interface or captured > pcap.SNAPLEN or data + captured + (-captured & 3) + 4 > end:
                raise self._corrupt(pos)
            time = high << 32 | low
            if time < start_ns:
                if count:
                    break
                pos = start = end
                continue
            if time >= limit:
                self.head = time
                break
            if match is not None and not match(buffer, data, data + captured, linktype):
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
    ``cursor.buffer[start:end]`` until the next run is asked for: pcap records, or
    Enhanced Packet Blocks when ``cursor`` is a :class:`BlockCursor`. ``interfaces`` gives
    each (session, link type) its pcapng interface id.

    A file is opened only when the merge reaches its ``first_ns`` (a lower bound of its
    times), so files that do not overlap are read one after the other, each in one run
    per buffer, and at most the overlapping files are open at once. Each file is read
    inside its own session's window (``SelectedFile.window``)."""
    heap: list[tuple[int, int, Cursor]] = []
    for item in inputs:
        key = -1 if item.source.first_ns is None else item.source.first_ns
        interface = interfaces[item.session, item.linktype] if interfaces else 0
        kind = BlockCursor if item.pcapng else Cursor
        heap.append((key, item.order, kind(item, match, interface)))
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
