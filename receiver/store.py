"""Per-session pcap storage for the receiver: standard library only, no Django.

:class:`PcapStore` writes every subscriber session's mirrored packets to its own
directory under a root, one pcap file at a time, with nanosecond timestamps and a link
type that makes tshark show the inner layers (raw IP, or PPP in HDLC framing).

Flush policy: :meth:`PcapStore.write` only appends to a per-file memory buffer (and
writes it out when it passes ``buffer_bytes``); :meth:`PcapStore.flush_due`, which the
receiver loop calls at least once a second, hands every buffer to the kernel with
``os.write`` once ``flush_interval`` has passed. Data is therefore in the page cache within
about a second and survives the receiver being killed. There is no fsync, not even on
close: fsyncing a 256 MB file on rotation stalls the receive loop for as long as the disk
takes (packets lost at high rates), so durability against a power cut is the kernel's
writeback: started by the page cache advice (:data:`PAGE_CACHE_STEP`) once a file has grown
16-32 MB past the data, else after ``vm.dirty_expire_centisecs`` (30 s by default).

Crash safety: a file being written is named ``<name>.pcap.part`` and renamed to
``<name>.pcap`` on close (rename is atomic on POSIX). Buffers are written as whole
records, so after ``kill -9`` a ``.part`` file ends at a record boundary unless the kill
landed inside one ``os.write``; :meth:`PcapStore.recover` finds ``.part`` files on the next
start, truncates any partial last record (:func:`repair`), and closes them.

Write errors (disk full, permissions) never raise out of ``write`` or ``flush_due``: the
packets concerned are dropped, counted in :attr:`PcapStore.store_errors` by errno name,
the file is cut back to its last whole record, and the next packet tries again, so
storing resumes once space is free. A file that cannot be opened (no descriptor left,
EMFILE/ENFILE, or any other OSError) is counted the same way, logged, and its packet is
reported as not stored (:meth:`PcapStore.write` returns False).

Open files are bounded: with ``max_open_files``, opening a file past the bound first
closes the least recently written open files as a rotation would (hashed, renamed, handed
to :meth:`PcapStore.take_closed`; a sixteenth of the bound at a time, so choosing them
costs a sort per many opens, not a pass over every open file per open); those sessions'
next packets open new files. How often the bound bit is :attr:`PcapStore.bound_closes`.

Deferred opens: creating a session's directory and file costs the kernel about 0.2 ms
on the reference VM, so thousands of sessions starting at once (a receiver restarted under
load: 10,000 sessions at 100,000 datagrams/s) would hold the receive loop for
seconds while the socket buffer overflows. With :attr:`PcapStore.open_budget_ns` set (the
receive loop sets it each round), opens past that budget are deferred: the file's packets
go to its memory buffer at once, and :meth:`PcapStore.open_pending` creates the file later,
within the time the loop gives it, before any of its data is written. A deferred open that
then fails counts the packets in its buffer in ``store_errors``, as a failed write does.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import struct
import time
from collections import Counter, deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, NamedTuple

from receiver.contrail import CONTRAIL_MID
from receiver.packet_index import INDEX_SUFFIX, index_header, index_records
from receiver.pcap import (
    FILE_HEADER,
    FILE_HEADER_LENGTH,
    NANOSECOND_MAGIC,
    PCAPNG_BYTE_ORDER_MAGIC,
    PCAPNG_ENHANCED_PACKET,
    PCAPNG_INTERFACE,
    PCAPNG_SECTION_HEADER,
    RECORD_HEADER,
    RECORD_HEADER_LENGTH,
    SNAPLEN,
    LinkType,
    file_header,
    pcapng_interface_description,
    pcapng_section_header,
)

logger = logging.getLogger(__name__)

# Warnings about open failures and the open-file bound: at most one per this many seconds.
LOG_INTERVAL: Final = 10.0
# The descriptor of a file whose open is deferred (see the module's docstring), and of a
# file closed for good (the C path checks it).
PENDING_FD: Final = -2
CLOSED_FD: Final = -1
# A deferred file is opened at once when its buffer holds this much: bounds the memory
# the deferral takes to this per open file.
PENDING_BUFFER_MAX: Final = 1 << 20

# Plain ints: compared and hashed per packet, and what CaptureFile rows keep.
LINKTYPE_PPP_HDLC: Final = int(LinkType.PPP_HDLC)
LINKTYPE_RAW: Final = int(LinkType.RAW)
# Inner kinds as receiver.jmirror names them; "unknown" has no link type and is not stored.
LINKTYPE_FOR_KIND: Final[dict[str, int]] = {
    "ipv4": LINKTYPE_RAW,
    "ipv6": LINKTYPE_RAW,
    "ppp": LINKTYPE_PPP_HDLC,
}

LINKTYPE_ETHERNET: Final = int(LinkType.ETHERNET)
# Link types whose files are pcapng: a Contrail vRouter's Ethernet frames keep their
# Juniper header per packet as pcapng options (receiver.contrail.evidence_options), which
# a pcap record cannot hold. Written with write_block(); every other link type is pcap.
PCAPNG_LINKTYPES: Final = frozenset({LINKTYPE_ETHERNET})
# What a closed capture file's name ends with, by format.
PCAP_SUFFIX: Final = ".pcap"
PCAPNG_SUFFIX: Final = ".pcapng"
CAPTURE_SUFFIXES: Final = (PCAP_SUFFIX, PCAPNG_SUFFIX)
# The application a stored pcapng file names (its Section Header Block).
STORE_APPLICATION: Final = "jmirror-web receiver"

PART_SUFFIX: Final = ".part"
# A file's packet index goes to the kernel in slices of about this size (and at every
# periodic flush): a write per pcap flush would add a system call per ~45 packets.
INDEX_BUFFER_BYTES: Final = 1 << 16
# Session folders and pcaps are their owner's alone (jmirror_web.file_modes says why).
DIRECTORY_MODE: Final = 0o700
FILE_MODE: Final = 0o600

# A name bound here rather than imported: CPython 3.11 compiles a method call on an
# imported name as an attribute load plus a call (no LOAD_METHOD), which measured 9%
# slower per write() here.
_RECORD_HEADER: Final = RECORD_HEADER
_NS: Final = 1_000_000_000
_NAME_SAFE = re.compile(r"[^A-Za-z0-9._-]")
_NAME_MAX: Final = 40


class SessionKey(NamedTuple):
    """Which session a packet belongs to. A tuple, so hashing it per packet stays in C."""

    liid: str
    router: str
    mid: int
    sid: int


@dataclass(frozen=True, slots=True)
class FileFacts:
    """What a pcap file's CaptureFile row records, for a closed file (with its SHA-256) or
    an open one (:meth:`PcapStore.open_files`, no hash yet). ``path`` is relative to root."""

    path: Path
    session: SessionKey | None  # None for files found by recover(): only the path tells
    linktype: int
    first_ns: int
    last_ns: int
    packets: int
    bytes: int
    sha256: str


@dataclass(frozen=True, slots=True)
class RepairedFile:
    """What :func:`repair` left in a file: whole records only."""

    path: Path
    linktype: int
    first_ns: int | None  # None when no whole record remains
    last_ns: int | None
    packets: int
    bytes: int
    sha256: str
    truncated_bytes: int

    def closed(self, path: Path) -> FileFacts:
        """The file as closed under ``path`` (relative to the store's root), its session
        known only from the path; only for a file with a whole record."""
        if self.first_ns is None or self.last_ns is None:
            raise ValueError(f"{self.path} holds no whole record")
        return FileFacts(
            path=path,
            session=None,
            linktype=self.linktype,
            first_ns=self.first_ns,
            last_ns=self.last_ns,
            packets=self.packets,
            bytes=self.bytes,
            sha256=self.sha256,
        )


def session_directory_name(key: SessionKey) -> str:
    """The directory name of a session: ``<liid>_<router>_mid-<hex>_sid-<hex>``, or
    ``<liid>_<router>_contrail-port-<port>`` for a Contrail session (mid
    :data:`~receiver.contrail.CONTRAIL_MID`, sid the analyzer port).

    Every part is reduced to ``[A-Za-z0-9._-]`` (IPv6 colons become ``-``), so no value
    can add a path separator; the fixed ``_mid-`` or ``_contrail-port-`` part means the
    name is never ``.`` or ``..``. A part that had to be changed or shortened gets a hash
    of its original value, so two different hostile values cannot share a directory.
    """
    start = f"{_name_part(key.liid)}_{_name_part(key.router.replace(':', '-'))}"
    if key.mid == CONTRAIL_MID:
        return f"{start}_contrail-port-{key.sid & 0xFFFF:05d}"
    return f"{start}_mid-{key.mid & 0xFFFFFFFF:08x}_sid-{key.sid & 0xFFFFFFFF:08x}"


SESSION_DIRECTORY: Final = re.compile(
    r"^(?P<liid>.+)_(?P<router>[^_]+)_(?:mid-(?P<mid>[0-9a-f]{8})_sid-(?P<sid>[0-9a-f]{8})"
    r"|contrail-port-(?P<port>[0-9]{5}))$"
)
"""What :func:`session_directory_name` makes (see :func:`parse_session_directory`)."""


def parse_session_directory(name: str) -> tuple[str, str, int, int] | None:
    """The (LIID, router address, mid, sid) a session directory's name was made from,
    None for a name :func:`session_directory_name` does not make. A part that had to be
    changed (a hostile value, an IPv6 address) comes back as written."""
    match = SESSION_DIRECTORY.match(name)
    if match is None:
        return None
    router = match["router"]
    # An IPv6 address's colons became dashes; an IPv4 address has none.
    router = router.replace("-", ":") if "-" in router else router
    if match["port"] is not None:
        return match["liid"], router, CONTRAIL_MID, int(match["port"])
    return match["liid"], router, int(match["mid"], 16), int(match["sid"], 16)


def _name_part(value: str) -> str:
    safe = _NAME_SAFE.sub("_", value)[:_NAME_MAX]
    if safe == value and value:
        return safe
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{safe}~{digest}"


def capture_suffix(linktype: int) -> str:
    """The file name suffix of a capture file of ``linktype``: ``.pcapng`` or ``.pcap``."""
    return PCAPNG_SUFFIX if linktype in PCAPNG_LINKTYPES else PCAP_SUFFIX


def capture_file_header(session: SessionKey, linktype: int) -> bytes:
    """What a session's capture file of ``linktype`` starts with: a pcap file header, or a
    pcapng section and the interface that names the session."""
    if linktype not in PCAPNG_LINKTYPES:
        return file_header(linktype)
    return pcapng_section_header(STORE_APPLICATION) + pcapng_interface_description(
        linktype, session_directory_name(session), f"mirror of {session.router}"
    )


def _file_stem(time_ns: int, sequence: int) -> str:
    seconds, nanoseconds = divmod(time_ns, _NS)
    start = datetime.fromtimestamp(seconds, UTC).strftime("%Y%m%dT%H%M%S")
    return f"{start}.{nanoseconds:09d}Z-{sequence:06d}"


# Written pages leave the page cache once on disk: every PAGE_CACHE_STEP bytes a file
# grows, the kernel is told (posix_fadvise DONTNEED) that the range one to three steps
# back will not be read soon. Its first notice starts the range's writeback, its second
# drops the then clean pages, whose memory the next writes reuse. Why: left to the page
# cache, a receiver writing 200 MB/s fills memory with pcap data nobody reads (a 1.6 GB
# write measured 3,100 MB/s until the already-used memory ran out, then 400 MB/s, 3.5 us
# per 1,400-byte packet, on the reference VM), and data waits up to 30 s for writeback.
# With the advice it measured 2,300 MB/s throughout, and data reaches the disk within
# about 16-32 MB of a file's growth.
PAGE_CACHE_STEP: Final = 16 * 2**20


class _OpenFile:
    """One file being written. ``committed_*`` is what has reached the kernel."""

    __slots__ = (
        "advised_size",
        "buffer",
        "committed_last_ns",
        "committed_packets",
        "committed_size",
        "deadline_ns",
        "fd",
        "final_relative",
        "first_ns",
        "index_buffer",
        "index_fd",
        "last_ns",
        "linktype",
        "packets",
        "part_path",
        "session",
        "sha",
        "size",
    )

    def __init__(
        self, fd: int, part_path: Path, session: SessionKey, linktype: int, first_ns: int
    ) -> None:
        self.fd = fd
        # The packet index beside the file (receiver.packet_index): records of what has
        # reached the kernel, written in slices of INDEX_BUFFER_BYTES; -1 when there is
        # none (it could not be written: readers rebuild it from the file).
        self.index_fd = -1
        self.index_buffer = bytearray()
        self.part_path = part_path
        # The path relative to the root once closed (what its database row keeps); set
        # when the file is created.
        self.final_relative: Path | None = None
        self.session = session
        self.linktype = linktype
        self.first_ns = first_ns
        self.deadline_ns = 0
        self.buffer = bytearray()
        self.sha = hashlib.sha256()
        self.size = self.committed_size = 0
        self.advised_size = 0  # committed_size at the last page cache advice
        self.packets = self.committed_packets = 0
        self.last_ns = self.committed_last_ns = first_ns


class PcapStore:
    """Writes each session's packets to rotating pcap files under ``root``.

    ``rotate_bytes`` and ``rotate_seconds`` bound a file's size and its span of packet
    times (receive times, so an offline import rotates by capture time). A session whose
    packets come in two link types (PPP frames and bare IP) has a file open for each, side
    by side; their packets merge by time. Files closed by rotation
    wait in :meth:`take_closed` until the receiver collects them.
    """

    def __init__(
        self,
        root: Path,
        *,
        rotate_bytes: int = 256 * 2**20,
        rotate_seconds: float = 3600,
        flush_interval: float = 1.0,
        buffer_bytes: int = 1 << 16,
        max_open_files: int | None = None,
        quiet_seconds: float | None = None,
        packet_index: bool = True,
    ) -> None:
        self.root = root
        #: Whether each file's packet index is written beside it (receiver.packet_index).
        self.packet_index = packet_index
        self.store_errors: Counter[str] = Counter()
        #: At most this many files open at once (None: no bound).
        self.max_open_files = None if max_open_files is None else max(1, max_open_files)
        #: Files closed early because the bound was reached.
        self.bound_closes = 0
        # (next time a warning may go out, bound closes / open failures not yet logged)
        self._bound_log: tuple[float, int] = (0.0, 0)
        self._failure_log: tuple[float, int] = (0.0, 0)
        self._rotate_bytes = rotate_bytes
        self._rotate_ns = int(rotate_seconds * _NS)
        # A file whose last packet is this old closes at the next close_expired (None:
        # only its age closes it). Why: a web process on another host reads only closed
        # (uploaded) files, so what it cannot reach of an active session is at most this.
        if quiet_seconds is not None and not quiet_seconds > 0:
            raise ValueError(f"quiet_seconds must be positive, not {quiet_seconds!r}")
        self._quiet_ns = None if quiet_seconds is None else int(quiet_seconds * _NS)
        self._flush_interval = flush_interval
        # 64 KiB stays in the CPU cache and below malloc's mmap threshold: a 1 MiB buffer
        # measured twice the per-packet cost at 1400 bytes.
        self._buffer_bytes = buffer_bytes
        # One open file per session and link type: a PPP session's mirror can mix PPP
        # frames and bare IP packets, and a file per switch would make a file per packet.
        self._files: dict[tuple[SessionKey, int], _OpenFile] = {}
        self._sequence: Counter[SessionKey] = Counter()
        self._closed: list[FileFacts] = []
        self._next_flush = 0.0
        # The file of the previous write: a busy session's packets come one after another,
        # and an identity test is cheaper than hashing its key. Reset when a file closes.
        self._last: _OpenFile | None = None
        #: Bumped whenever a file opens, closes or is given up.
        self.generation = 0
        #: Packet indexes given up (their files are stored all the same).
        self.index_errors = 0
        #: Time left for opening files now, in ns (None: no limit, every open at once);
        #: past it, opens are deferred to :meth:`open_pending`. The receive loop sets it
        #: each round.
        self.open_budget_ns: int | None = None
        self._pending: deque[_OpenFile] = deque()
        self._root_descriptor: int | None = None

    @property
    def rotate_bytes(self) -> int:
        """A file reaching this size is closed before the next packet."""
        return self._rotate_bytes

    @property
    def buffer_bytes(self) -> int:
        """A file's buffer reaching this size is written out at once."""
        return self._buffer_bytes

    def open_file(self, session: SessionKey, linktype: int) -> _OpenFile | None:
        """The file being written for ``session`` and ``linktype``, if any: for the
        receiver's C path, which appends to its buffer as :meth:`write` would."""
        return self._files.get((session, linktype))

    def write(
        self, session: SessionKey, time_ns: int, data: bytes | memoryview, linktype: int
    ) -> bool:
        """Store one packet received at ``time_ns`` (ns since the epoch, UTC). Never raises
        OSError: a packet that cannot be stored is counted in ``store_errors``. False when
        no file could be opened for it (the packet is not stored); True when it is in the
        file's buffer (a later write error is counted in ``store_errors`` too)."""
        file = self._last
        if file is None or file.session is not session or file.linktype != linktype:
            file = self._files.get((session, linktype))
        if file is None or file.size >= self._rotate_bytes or time_ns >= file.deadline_ns:
            file = self._rotate(session, time_ns, linktype)
            if file is None:
                return False
        self._last = file
        length = len(data)
        if length > SNAPLEN:  # cannot come off UDP; keeps every record readable anyway
            data = data[:SNAPLEN]
        seconds, nanoseconds = divmod(time_ns, _NS)
        buffer = file.buffer
        buffer += _RECORD_HEADER.pack(seconds, nanoseconds, len(data), length)
        buffer += data
        file.size += RECORD_HEADER_LENGTH + len(data)
        file.packets += 1
        file.last_ns = time_ns
        if len(buffer) >= self._buffer_bytes:
            self._flush(file)
        return True

    def write_block(self, session: SessionKey, time_ns: int, block: bytes, linktype: int) -> bool:
        """Store one packet of a pcapng link type (:data:`PCAPNG_LINKTYPES`) as a whole
        Enhanced Packet Block of interface 0 received at ``time_ns``
        (:func:`receiver.pcap.enhanced_packet_block`, with its options). Otherwise as
        :meth:`write`."""
        if linktype not in PCAPNG_LINKTYPES:
            raise ValueError(f"link type {linktype} is stored as pcap: use write()")
        file = self._files.get((session, linktype))
        if file is None or file.size >= self._rotate_bytes or time_ns >= file.deadline_ns:
            file = self._rotate(session, time_ns, linktype)
            if file is None:
                return False
        self._last = file
        file.buffer += block
        file.size += len(block)
        file.packets += 1
        file.last_ns = time_ns
        if len(file.buffer) >= self._buffer_bytes:
            self._flush(file)
        return True

    def flush_due(self, now_monotonic: float) -> None:
        """Hand every buffer to the kernel if ``flush_interval`` has passed since the last
        time. Cheap when nothing is due: call it from the receive loop as often as you like."""
        if now_monotonic < self._next_flush:
            return
        self._next_flush = now_monotonic + self._flush_interval
        self.flush()

    def flush(self) -> None:
        """Hand every buffer to the kernel now (a deferred file's once it is opened), and
        the packet index of what is written with it."""
        for file in list(self._files.values()):
            self._flush(file)
            self._flush_index(file)

    @property
    def pending_opens(self) -> int:
        """Files whose open is deferred (see the module's docstring), at most."""
        return len(self._pending)

    def pending_sessions(self) -> frozenset[SessionKey]:
        """The sessions with a file whose open is deferred."""
        if not self._pending:
            return frozenset()
        return frozenset(file.session for file in self._pending if file.fd == PENDING_FD)

    def open_pending(self, budget_ns: int | None = None) -> None:
        """Open deferred files, oldest first, for about ``budget_ns`` (None: all)."""
        pending = self._pending
        deadline = None if budget_ns is None else time.perf_counter_ns() + budget_ns
        while pending:
            file = pending.popleft()
            if file.fd != PENDING_FD:
                continue  # opened (or given up) meanwhile
            self._create_deferred(file)
            if deadline is not None and time.perf_counter_ns() >= deadline:
                return

    def take_closed(self) -> list[FileFacts]:
        """Files closed since the last call (by rotation or by :meth:`close`)."""
        closed, self._closed = self._closed, []
        return closed

    def close(self, session: SessionKey) -> None:
        """Close a session's open files, if any (e.g. when its intercept ends)."""
        for key in [key for key in self._files if key[0] == session]:
            self._finish(self._files.pop(key))

    @property
    def rotate_seconds(self) -> float:
        """A file whose packets span this long is closed before the next packet."""
        return self._rotate_ns / _NS

    @property
    def quiet_seconds(self) -> float | None:
        """A file closes once its last packet is this old (None: only by age or size)."""
        return None if self._quiet_ns is None else self._quiet_ns / _NS

    def close_expired(self, now_ns: int) -> None:
        """Close files whose age limit has passed by ``now_ns`` (wall clock, ns since the
        epoch), and with ``quiet_seconds``, files whose last packet is that old: a session
        that went quiet would otherwise keep its file open, unhashed, until its next
        packet. Call it about once a second.

        Closing a file the receiver's C path has bound is what rotation does too: its
        descriptor becomes CLOSED_FD, so C hands the stream's next datagram to Python,
        which opens the session's next file (receiver._fastpath call_file_of). C writes a
        file's ``last_ns`` back at the end of each call, before this runs."""
        quiet = self._quiet_ns
        # Packet times are never negative: without a quiet time no file is idle.
        idle_before = -1 if quiet is None else now_ns - quiet
        for key, file in list(self._files.items()):
            if now_ns >= file.deadline_ns or file.last_ns <= idle_before:
                self._finish(self._files.pop(key))

    def close_all(self) -> list[FileFacts]:
        """Flush and close every file; return every closed file not yet taken."""
        for key in list(self._files):
            self._finish(self._files.pop(key))
        self._close_root()
        return self.take_closed()

    @property
    def open_sessions(self) -> int:
        return len({session for session, _ in self._files})

    def open_files(self) -> list[FileFacts]:
        """The files being written, as far as they have reached the kernel, so their
        rows can show them before they close. ``path`` is the name the file will have
        once closed (the row keeps it); ``sha256`` is empty until then. Files with nothing
        written yet are left out: they vanish if closed empty."""
        return [
            FileFacts(
                path=file.final_relative or Path(),
                session=file.session,
                linktype=file.linktype,
                first_ns=file.first_ns,
                last_ns=file.committed_last_ns,
                packets=file.committed_packets,
                bytes=file.committed_size,
                sha256="",
            )
            for file in self._files.values()
            if file.committed_packets and file.fd >= 0
        ]

    @staticmethod
    def recover(root: Path) -> list[FileFacts]:
        """Close files a killed receiver left open under ``root``: truncate each to its last
        whole record, rename it to ``.pcap``, and describe it. Files with no whole record
        are removed; files that are not our pcap format are left alone, and so are files
        a live process is writing (it holds their lock)."""
        recovered = []
        parts = [
            part for suffix in CAPTURE_SUFFIXES for part in root.glob(f"*/*{suffix}{PART_SUFFIX}")
        ]
        for part in sorted(parts):
            try:
                lock = os.open(part, os.O_RDONLY)
            except OSError:
                continue
            try:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # being written by a live receiver or import
                try:
                    repaired = repair(part)
                except ValueError:
                    continue
                if repaired.first_ns is None or repaired.last_ns is None:
                    part.unlink()
                    continue
                final = part.with_name(part.name.removesuffix(PART_SUFFIX))
                part.rename(final)
            finally:
                os.close(lock)
            recovered.append(repaired.closed(final.relative_to(root)))
        return recovered

    def _rotate(self, session: SessionKey, time_ns: int, linktype: int) -> _OpenFile | None:
        self.generation += 1
        old = self._files.pop((session, linktype), None)
        if old is not None:
            self._finish(old)
        bound = self.max_open_files
        if bound is not None and len(self._files) >= bound:
            # A sixteenth of the bound at once: one sort per many opens.
            self._close_least_recent(max(len(self._files) - bound + 1, bound // 16))
        file = self._new_file(session, time_ns, linktype)
        budget = self.open_budget_ns
        if budget is not None and budget <= 0:
            self._pending.append(file)
        else:
            started = time.perf_counter_ns()
            try:
                self._create(file)
            except OSError as error:
                self._count(error, 1)
                self._log_open_failure(session, error)
                return None
            finally:
                if budget is not None:
                    self.open_budget_ns = budget - (time.perf_counter_ns() - started)
        self._files[(session, linktype)] = file
        return file

    def _close_least_recent(self, count: int) -> None:
        """Close the ``count`` least recently written open files, as rotation would."""
        files = self._files
        if count == 1:
            keys = [min(files, key=lambda key: files[key].last_ns)]
        else:
            keys = sorted(files, key=lambda key: files[key].last_ns)[:count]
        for key in keys:
            self._finish(self._files.pop(key))
        self.bound_closes += len(keys)
        now = time.monotonic()
        next_log, unlogged = self._bound_log
        unlogged += len(keys)
        if now >= next_log:
            logger.warning(
                "open-file bound of %d reached: closed %d least recently written files "
                "early (%d in all); their sessions go on in new files",
                self.max_open_files,
                unlogged,
                self.bound_closes,
            )
            self._bound_log = (now + LOG_INTERVAL, 0)
        else:
            self._bound_log = (next_log, unlogged)

    def _log_open_failure(self, session: SessionKey, error: OSError) -> None:
        now = time.monotonic()
        next_log, unlogged = self._failure_log
        unlogged += 1
        if now >= next_log:
            logger.error(
                "cannot open a pcap file for %s: %s; %d packets not stored (%d open files)",
                session_directory_name(session),
                error,
                unlogged,
                len(self._files),
            )
            self._failure_log = (now + LOG_INTERVAL, 0)
        else:
            self._failure_log = (next_log, unlogged)

    def _new_file(self, session: SessionKey, time_ns: int, linktype: int) -> _OpenFile:
        """A file of ``session`` starting at ``time_ns``, not yet on disk (:meth:`_create`).
        Its header counts as written: it is the first thing written once created."""
        header = capture_file_header(session, linktype)
        file = _OpenFile(PENDING_FD, self.root, session, linktype, time_ns)
        file.sha.update(header)
        file.size = file.committed_size = len(header)
        file.deadline_ns = time_ns + self._rotate_ns
        return file

    def _root_fd(self) -> int:
        """A descriptor of the root directory (made if missing), opened once: files are
        created and renamed relative to it. Resolving the absolute path of each measured
        half of the cost of creating a session's directory and file here (216 against
        463 us, /tmp on the reference VM), and thousands of sessions start at once."""
        fd = self._root_descriptor
        if fd is None:
            try:
                fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                self.root.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
                fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            self._root_descriptor = fd
        return fd

    def _close_root(self) -> None:
        if self._root_descriptor is not None:
            os.close(self._root_descriptor)
            self._root_descriptor = None

    def _create(self, file: _OpenFile) -> None:
        """Create ``file``'s directory and ``.part`` file and write its header."""
        session = file.session
        name = session_directory_name(session)
        root = self._root_fd()
        # The owner's alone, whatever the umask: the name carries the LIID. (An existing
        # directory keeps its mode: the start-up check, file_modes, fixes old ones.)
        try:
            os.mkdir(name, DIRECTORY_MODE, dir_fd=root)
        except FileExistsError:
            pass
        except FileNotFoundError:
            # The root went away (removed under us): made again, once.
            self._close_root()
            root = self._root_fd()
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, DIRECTORY_MODE, dir_fd=root)
        header = capture_file_header(session, file.linktype)
        suffix = capture_suffix(file.linktype)
        while True:
            self._sequence[session] += 1
            stem = _file_stem(file.first_ns, self._sequence[session])
            part = f"{name}/{stem}{suffix}{PART_SUFFIX}"
            try:
                os.stat(f"{name}/{stem}{suffix}", dir_fd=root)
                continue
            except FileNotFoundError:
                pass
            try:
                # O_EXCL: a restarted receiver's sequence numbers start again at 1.
                fd = os.open(
                    part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, FILE_MODE, dir_fd=root
                )
            except FileExistsError:
                continue
            break
        try:
            # Held while the file is open: recover() run by another receiver sharing this
            # directory (SO_REUSEPORT, an import) skips it. The kernel drops the lock when
            # the process dies, so a killed receiver's files are recovered.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.write(fd, header) != len(header):
                raise OSError(errno.ENOSPC, "short write of the pcap header")
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(part, dir_fd=root)
            raise
        file.part_path = self.root / part
        file.final_relative = Path(name, f"{stem}{suffix}")
        file.fd = fd
        if self.packet_index:
            self._create_index(file, f"{name}/{stem}{suffix}{INDEX_SUFFIX}", root)

    def _create_index(self, file: _OpenFile, relative: str, root: int) -> None:
        """Open the file's packet index (named after the closed file from the start: it
        is derived data, and its readers check it against whatever the file is called)."""
        try:
            fd = os.open(
                relative,
                os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND,
                FILE_MODE,
                dir_fd=root,
            )
        except OSError as error:
            self._index_failed(file, error)
            return
        file.index_fd = fd
        file.index_buffer += index_header(file.linktype)

    def _flush_index(self, file: _OpenFile) -> None:
        if file.index_fd < 0 or not file.index_buffer:
            return
        try:
            done = os.write(file.index_fd, file.index_buffer)
            while done < len(file.index_buffer):
                done += os.write(file.index_fd, bytes(file.index_buffer[done:]))
        except OSError as error:
            self._index_failed(file, error)
            return
        file.index_buffer.clear()

    def _index_failed(self, file: _OpenFile, error: OSError) -> None:
        """Give the file's index up: never the packets. The index is rebuilt from the
        file by whoever reads it (receiver.packet_index)."""
        self.index_errors += 1
        if file.index_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(file.index_fd)
            file.index_fd = -1
            if file.final_relative is not None:
                with contextlib.suppress(OSError):
                    os.unlink(f"{file.final_relative}{INDEX_SUFFIX}", dir_fd=self._root_fd())
        file.index_buffer.clear()
        logger.warning(
            "cannot write the packet index of %s: %s; it will be rebuilt from the file when read",
            file.final_relative,
            error,
        )

    def _close_index(self, file: _OpenFile, *, keep: bool) -> None:
        if file.index_fd < 0:
            return
        if keep:
            self._flush_index(file)
        if file.index_fd >= 0:
            os.close(file.index_fd)
            file.index_fd = -1
        if not keep and file.final_relative is not None:
            with contextlib.suppress(OSError):
                os.unlink(f"{file.final_relative}{INDEX_SUFFIX}", dir_fd=self._root_fd())

    def _create_deferred(self, file: _OpenFile) -> bool:
        """Create a deferred file; when that fails, its buffered packets are counted as
        not stored and the file is given up (the session's next packet tries again)."""
        try:
            self._create(file)
        except OSError as error:
            self._count(error, file.packets)
            self._log_open_failure(file.session, error)
            key = (file.session, file.linktype)
            if self._files.get(key) is file:
                del self._files[key]
            self.generation += 1
            if self._last is file:
                self._last = None
            file.fd = CLOSED_FD
            file.buffer.clear()
            return False
        # What waited in memory goes to the kernel now, spread over the opens, rather
        # than all files' at the next tick.
        self._flush(file)
        return True

    def _flush(self, file: _OpenFile) -> bool:
        buffer = file.buffer
        if not buffer:
            return True
        if file.fd == PENDING_FD:
            # Kept until the file is opened, unless it grew past its share of memory.
            if len(buffer) < PENDING_BUFFER_MAX:
                return True
            if not self._create_deferred(file):
                return False
        try:
            done = os.write(file.fd, buffer)
            while done < len(buffer):  # rare: a signal or a nearly full disk; copies are fine
                done += os.write(file.fd, bytes(buffer[done:]))
        except OSError as error:
            self._count(error, file.packets - file.committed_packets)
            buffer.clear()
            file.size = file.committed_size
            file.packets = file.committed_packets
            file.last_ns = file.committed_last_ns
            try:
                os.ftruncate(file.fd, file.committed_size)
            except OSError:
                # Cannot cut back the partial write: give the file up as a crash would
                # leave it; recover() repairs it on the next start.
                self._files.pop((file.session, file.linktype), None)
                self.generation += 1
                if self._last is file:
                    self._last = None
                os.close(file.fd)
                file.fd = CLOSED_FD
                self._close_index(file, keep=True)
            return False
        file.sha.update(buffer)
        if file.index_fd >= 0:
            # One C call per flush on what was just written (tens of ns per packet), so
            # the index costs the receive loop no Python per packet.
            try:
                file.index_buffer += index_records(
                    buffer, file.committed_size, file.linktype, file.linktype in PCAPNG_LINKTYPES
                )
            except ValueError as error:  # not whole records: a bug, but never the packets'
                self._index_failed(file, OSError(errno.EINVAL, str(error)))
            else:
                if len(file.index_buffer) >= INDEX_BUFFER_BYTES:
                    self._flush_index(file)
        buffer.clear()
        file.committed_size = file.size
        file.committed_packets = file.packets
        file.committed_last_ns = file.last_ns
        if file.committed_size - file.advised_size >= PAGE_CACHE_STEP:
            _release_written_pages(file)
        return True

    def _finish(self, file: _OpenFile) -> None:
        self.generation += 1
        if self._last is file:
            self._last = None
        if file.fd == PENDING_FD and not self._create_deferred(file):
            return
        self._flush(file)
        if file.fd < 0:  # given up by _flush
            return
        self._close_index(file, keep=file.committed_packets > 0)
        os.close(file.fd)
        # Closed for good: the C path sees this and hands the stream's next datagram to
        # Python, which opens the session's next file (receiver._fastpath call_file_of).
        file.fd = CLOSED_FD
        if file.committed_packets == 0:
            file.part_path.unlink(missing_ok=True)
            return
        # Set by _create, as every file that gets here was.
        final = file.final_relative or Path()
        try:
            # Relative to the root's descriptor: see _root_fd.
            root = self._root_fd()
            os.rename(f"{final}{PART_SUFFIX}", final, src_dir_fd=root, dst_dir_fd=root)
        except OSError as error:
            self._count(error, 0)  # stays .part; recover() closes it on the next start
            return
        self._closed.append(
            FileFacts(
                path=final,
                session=file.session,
                linktype=file.linktype,
                first_ns=file.first_ns,
                last_ns=file.committed_last_ns,
                packets=file.committed_packets,
                bytes=file.committed_size,
                sha256=file.sha.hexdigest(),
            )
        )

    def _count(self, error: OSError, packets: int) -> None:
        name = errno.errorcode.get(error.errno or 0, "EUNKNOWN")
        self.store_errors[name] += packets


def _release_written_pages(file: _OpenFile) -> None:
    """The page cache advice of PAGE_CACHE_STEP, for the range one to three steps back."""
    end = file.committed_size - PAGE_CACHE_STEP
    start = max(0, end - 2 * PAGE_CACHE_STEP)
    file.advised_size = file.committed_size
    # Advice only: on a file system without it the pages stay cached, as before.
    with contextlib.suppress(OSError):
        os.posix_fadvise(file.fd, start, end - start, os.POSIX_FADV_DONTNEED)


def repair(path: Path, *, truncate: bool = True) -> RepairedFile:
    """Cut a capture file we wrote back to its last whole record and describe it; with
    ``truncate=False`` only describe it (what a cut would leave), changing nothing.

    A pcap record is partial when its header is incomplete, its data is shorter than its
    included length, or its included length exceeds the file's snaplen (garbage); a
    pcapng block when it is cut or its two lengths disagree. Raises ValueError when the
    file does not start as the store starts its files (a little-endian nanosecond pcap
    header, or a little-endian pcapng section).
    """
    with path.open("rb") as probe:
        start = probe.read(4)
    if start == _U32_LE.pack(PCAPNG_SECTION_HEADER):
        return _repair_pcapng(path, truncate)
    sha = hashlib.sha256()
    packets = 0
    first_ns: int | None = None
    last_ns: int | None = None
    with path.open("r+b" if truncate else "rb") as stream:
        header = stream.read(FILE_HEADER_LENGTH)
        if len(header) < FILE_HEADER_LENGTH:
            raise ValueError(f"{path}: shorter than a pcap file header")
        magic, _major, _minor, _zone, _sigfigs, snaplen, linktype = FILE_HEADER.unpack(header)
        if magic != NANOSECOND_MAGIC:
            raise ValueError(f"{path}: not a little-endian nanosecond pcap file")
        sha.update(header)
        good = FILE_HEADER_LENGTH
        while True:
            record = stream.read(RECORD_HEADER_LENGTH)
            if len(record) < RECORD_HEADER_LENGTH:
                break
            seconds, nanoseconds, included, _original = RECORD_HEADER.unpack(record)
            if included > snaplen:
                break
            data = stream.read(included)
            if len(data) < included:
                break
            sha.update(record)
            sha.update(data)
            good += RECORD_HEADER_LENGTH + included
            packets += 1
            last_ns = seconds * _NS + nanoseconds
            if first_ns is None:
                first_ns = last_ns
        size = stream.seek(0, os.SEEK_END)
        if size > good and truncate:
            stream.truncate(good)
    return RepairedFile(
        path=path,
        linktype=linktype,
        first_ns=first_ns,
        last_ns=last_ns,
        packets=packets,
        bytes=good,
        sha256=sha.hexdigest(),
        truncated_bytes=size - good,
    )


_U32_LE: Final = struct.Struct("<I")
_BLOCK_HEAD: Final = struct.Struct("<II")  # type, total length
# An Enhanced Packet Block's body up to the data: interface, time high and low, lengths.
_EPB_FIELDS: Final = struct.Struct("<IIIII")
# The largest block the store writes: a whole datagram and its options (the Juniper
# header, at most 64 KiB of TLVs); anything longer is garbage after a crash.
_MAX_BLOCK: Final = SNAPLEN + 2 * 65536


def _repair_pcapng(path: Path, truncate: bool) -> RepairedFile:
    """:func:`repair` for a pcapng file: one section, interface 0 of the first
    Interface Description Block, nanosecond times (as :func:`capture_file_header`
    writes them)."""
    sha = hashlib.sha256()
    packets = 0
    first_ns: int | None = None
    last_ns: int | None = None
    linktype: int | None = None
    good = 0
    with path.open("r+b" if truncate else "rb") as stream:
        while True:
            head = stream.read(8)
            if len(head) < 8:
                break
            block_type, length = _BLOCK_HEAD.unpack(head)
            if length < 12 or length % 4 or length > _MAX_BLOCK:
                break
            rest = stream.read(length - 8)
            if len(rest) < length - 8 or _U32_LE.unpack_from(rest, length - 12)[0] != length:
                break
            if good == 0:
                if block_type != PCAPNG_SECTION_HEADER or _U32_LE.unpack_from(rest)[0] != (
                    PCAPNG_BYTE_ORDER_MAGIC
                ):
                    raise ValueError(f"{path}: not a little-endian pcapng file")
            elif block_type == PCAPNG_INTERFACE and linktype is None and length >= 20:
                linktype = int.from_bytes(rest[:2], "little")
            elif block_type == PCAPNG_ENHANCED_PACKET and length >= 32:
                _, high, low, _, _ = _EPB_FIELDS.unpack_from(rest)
                last_ns = high << 32 | low
                if first_ns is None:
                    first_ns = last_ns
                packets += 1
            sha.update(head)
            sha.update(rest)
            good += length
        if good == 0:
            raise ValueError(f"{path}: shorter than a pcapng section header")
        size = stream.seek(0, os.SEEK_END)
        if size > good and truncate:
            stream.truncate(good)
    if linktype is None:  # cut before its interface: no packet can be read
        first_ns = last_ns = None
        packets = 0
    return RepairedFile(
        path=path,
        linktype=LINKTYPE_ETHERNET if linktype is None else linktype,
        first_ns=first_ns,
        last_ns=last_ns,
        packets=packets,
        bytes=good,
        sha256=sha.hexdigest(),
        truncated_bytes=size - good,
    )
