"""The packet index: a record per stored packet, written beside its capture file.

Why: an analyst pages and filters a session's stored packets in the browser, and a
session can hold millions of packets in gigabytes of pcap. Re-reading the files for every
page does not scale; the index does: a fixed-size record per packet saying where it is
in its file, when it came, and the summary fields a list is filtered by. A page then
reads one index slice and only its own packets from the pcap.

Written at capture: :class:`receiver.store.PcapStore` indexes each buffer it flushes (one
C call per flush, :mod:`receiver._packet_index`) and appends the records to the file's
index, ``<capture file>.idx``. The index is derived data, never evidence: the pcap is the
truth, and :func:`load_index` checks every index against its file and rebuilds what is
missing or does not fit (a file written before indexes existed, a crash between the two
writes, a host reading another host's file from the object store). It is removed with
its capture file.

Format (little-endian): a 16-byte header (``MAGIC``, the record size, the link type) and
then one 64-byte record per packet:

====== ====== ============================================================================
offset type   field
====== ====== ============================================================================
0      u64    where the packet's pcap record (pcapng block) starts in the capture file
8      i64    receive time, ns since the epoch (UTC)
16     u32    captured length
20     u32    original length
24     u8     IP version: 4, 6, or 0 (not an IP packet: link control, ARP...)
25     u8     IP protocol (after IPv6 extension headers)
26     u8     TCP flags
27     u8     :class:`Flag` bits
28     u16    source port; for version 0 the link protocol (PPP protocol, Ethertype)
30     u16    destination port
32     16B    source address (IPv4 in the first 4 bytes, the rest zero)
48     16B    destination address
====== ====== ============================================================================
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import mmap
import operator
import os
import struct
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntFlag
from pathlib import Path
from typing import Final, NamedTuple

MAGIC: Final = b"JMIDX\x01\x00\x00"
RECORD_SIZE: Final = 64
HEADER: Final = struct.Struct("<8sII")
HEADER_SIZE: Final = HEADER.size
RECORD: Final = struct.Struct("<QqIIBBBBHH16s16s")
INDEX_SUFFIX: Final = ".idx"
# select_records' protocol value for packets that are not IP (link control).
PROTOCOL_LINK: Final = 256
NO_PORT: Final = -1
ANY_PROTOCOL: Final = -1

_LINKTYPE_ETHERNET: Final = 1
_LINKTYPE_PPP_HDLC: Final = 50
_LINKTYPE_RAW: Final = 101
_MAX_VLAN_TAGS: Final = 8
_MAX_IPV6_EXTENSIONS: Final = 8
_PORTED: Final = frozenset({6, 17, 132, 136})
_HTTP_STARTS: Final = (b"GET ", b"POST", b"HEAD", b"PUT ", b"CONN", b"DELE", b"OPTI", b"PATC")
_PCAP_RECORD: Final = struct.Struct("<IIII")
_EPB: Final = struct.Struct("<IIIIIII")


class Flag(IntFlag):
    PPP = 1  # came in HDLC-framed PPP
    NAME_CANDIDATE = 2  # may carry a name: DNS, a TLS handshake, an HTTP request
    LATER_FRAGMENT = 4  # an IP fragment after the first: no ports
    MALFORMED = 8  # says it is IP but its header does not fit


class IndexRecord(NamedTuple):
    offset: int
    time_ns: int
    captured: int
    length: int
    version: int
    protocol: int
    tcp_flags: int
    flags: int
    sport: int
    dport: int
    src: bytes
    dst: bytes

    @property
    def source(self) -> str:
        return _address_text(self.version, self.src)

    @property
    def destination(self) -> str:
        return _address_text(self.version, self.dst)


def _address_text(version: int, raw: bytes) -> str:
    if version == 4:
        return str(ipaddress.IPv4Address(raw[:4]))
    if version == 6:
        return str(ipaddress.IPv6Address(raw))
    return ""


def address_key(text: str) -> tuple[int, bytes]:
    """``(version, 16 bytes)`` of an address as records hold it; ValueError if not one."""
    address = ipaddress.ip_address(text.strip())
    return address.version, address.packed.ljust(16, b"\0")


# Building records (the Python twin of receiver/_packet_index.c) ---------------------------


def _transport(r: bytearray, proto: int, t: bytes | memoryview, n: int) -> None:
    if proto in _PORTED and n >= 4:
        struct.pack_into("<HH", r, 28, (t[0] << 8) | t[1], (t[2] << 8) | t[3])
        if proto == 6:
            if n >= 14:
                r[26] = t[13]
            offset = (t[12] >> 4) * 4 if n >= 20 else 0
            if n >= 20 and 20 <= offset < n:
                payload = bytes(t[offset : min(n, offset + 4)])
                if payload[0] == 0x16 or (len(payload) == 4 and payload in _HTTP_STARTS):
                    r[27] |= Flag.NAME_CANDIDATE
        elif proto == 17 and n >= 20 and 53 in ((t[0] << 8) | t[1], (t[2] << 8) | t[3]):
            r[27] |= Flag.NAME_CANDIDATE


def _ipv4(r: bytearray, d: memoryview, n: int) -> None:
    header = (d[0] & 0x0F) * 4 if n else 0
    if n < 20 or d[0] >> 4 != 4 or header < 20 or header > n:
        r[27] |= Flag.MALFORMED
        return
    r[24] = 4
    r[25] = d[9]
    r[32:36] = d[12:16]
    r[48:52] = d[16:20]
    if ((d[6] << 8) | d[7]) & 0x1FFF:
        r[27] |= Flag.LATER_FRAGMENT
        return
    total = (d[2] << 8) | d[3]
    end = total if header <= total < n else n
    _transport(r, d[9], d[header:end], end - header)


def _ipv6(r: bytearray, d: memoryview, n: int) -> None:
    if n < 40 or d[0] >> 4 != 6:
        r[27] |= Flag.MALFORMED
        return
    r[24] = 6
    r[32:48] = d[8:24]
    r[48:64] = d[24:40]
    end = min(n, 40 + ((d[4] << 8) | d[5]))
    following, at = d[6], 40
    for _ in range(_MAX_IPV6_EXTENSIONS):
        if following in (0, 43, 60):
            if at + 8 > end:
                break
            following, at = d[at], at + (d[at + 1] + 1) * 8
        elif following == 44:
            if at + 8 > end:
                break
            fragment = ((d[at + 2] << 8) | d[at + 3]) >> 3
            following, at = d[at], at + 8
            if fragment:
                r[25] = following
                r[27] |= Flag.LATER_FRAGMENT
                return
        elif following == 51:
            if at + 8 > end:
                break
            following, at = d[at], at + (d[at + 1] + 2) * 4
        else:
            break
    r[25] = following
    if at <= end:
        _transport(r, following, d[at:end], end - at)


def _network(r: bytearray, linktype: int, d: memoryview) -> None:
    n = len(d)
    if linktype == _LINKTYPE_RAW:
        (_ipv6 if n >= 1 and d[0] >> 4 == 6 else _ipv4)(r, d, n)
    elif linktype == _LINKTYPE_PPP_HDLC:
        r[27] |= Flag.PPP
        at = 2 if n >= 2 and d[0] == 0xFF and d[1] == 0x03 else 0
        if at < n and d[at] & 1:
            protocol, at = d[at], at + 1
        elif at + 2 <= n:
            protocol, at = (d[at] << 8) | d[at + 1], at + 2
        else:
            r[27] |= Flag.MALFORMED
            return
        if protocol == 0x21:
            _ipv4(r, d[at:], n - at)
        elif protocol == 0x57:
            _ipv6(r, d[at:], n - at)
        else:
            struct.pack_into("<H", r, 28, protocol)
    elif linktype == _LINKTYPE_ETHERNET:
        if n < 14:
            r[27] |= Flag.MALFORMED
            return
        at = 12
        kind = (d[at] << 8) | d[at + 1]
        tags = 0
        while tags < _MAX_VLAN_TAGS and kind in (0x8100, 0x88A8) and at + 6 <= n:
            at += 4
            kind = (d[at] << 8) | d[at + 1]
            tags += 1
        at += 2
        if kind == 0x0800:
            _ipv4(r, d[at:], n - at)
        elif kind == 0x86DD:
            _ipv6(r, d[at:], n - at)
        else:
            struct.pack_into("<H", r, 28, kind)


def python_index_records(
    buffer: bytes | bytearray, offset: int, linktype: int, pcapng: bool
) -> bytes:
    """The index records of the whole pcap records (pcapng blocks) in ``buffer``, which
    starts at byte ``offset`` of its file. ValueError when it does not end on a whole one."""
    records, consumed = python_index_prefix(buffer, offset, linktype, pcapng)
    if consumed != len(buffer):
        unit = "block" if pcapng else "record"
        raise ValueError(
            f"the buffer does not end on a whole {unit} ({consumed} of {len(buffer)} bytes "
            "are whole)"
        )
    return records


def python_index_prefix(
    buffer: bytes | bytearray, offset: int, linktype: int, pcapng: bool
) -> tuple[bytes, int]:
    """The records of the whole pcap records (blocks) at the start of ``buffer``, and how
    many bytes of it they are."""
    view = memoryview(buffer)
    length = len(view)
    out = bytearray()
    at = 0
    while at < length:
        if pcapng:
            if length - at < 12:
                break
            kind, size = struct.unpack_from("<II", view, at)
            if size < 12 or size > length - at:
                break
            if kind != 6 or size < 32:
                at += size
                continue
            _k, _s, _i, high, low, captured, original = _EPB.unpack_from(view, at)
            if captured > size - 32:
                break
            time_ns = (high << 32) | low
            data_at = at + 28
        else:
            if length - at < 16:
                break
            seconds, nanoseconds, captured, original = _PCAP_RECORD.unpack_from(view, at)
            if captured > length - at - 16:
                break
            time_ns = seconds * 1_000_000_000 + nanoseconds
            data_at = at + 16
            size = 16 + captured
        record = bytearray(RECORD_SIZE)
        struct.pack_into("<QqII", record, 0, offset + at, time_ns, captured, original)
        _network(record, linktype, view[data_at : data_at + captured])
        out += record
        at += size
    return bytes(out), at


def python_select_records(
    index: bytes | memoryview,
    first: int,
    last: int,
    start_ns: int,
    end_ns: int,
    version: int,
    address: bytes,
    port: int,
    protocol: int,
    names_only: bool,
) -> bytes:
    """The numbers (native uint32s) of the records of ``index`` in [first, last) that
    match: received in [start_ns, end_ns); with ``version`` (0: any) and ``address`` as
    source or destination; ``port`` (-1: any) either side; IP ``protocol`` (-1: any,
    :data:`PROTOCOL_LINK`: not IP); only name candidates when ``names_only``."""
    if len(index) % RECORD_SIZE or (version and len(address) != 16):
        raise ValueError("an index is whole 64-byte records and an address 16 bytes")
    found = array("I")
    last = min(last, len(index) // RECORD_SIZE)
    for number in range(max(0, first), last):
        (
            _o,
            time_ns,
            _c,
            _l,
            record_version,
            record_protocol,
            _t,
            flags,
            sport,
            dport,
            src,
            dst,
        ) = RECORD.unpack_from(index, number * RECORD_SIZE)
        if not start_ns <= time_ns < end_ns:
            continue
        if names_only and not flags & Flag.NAME_CANDIDATE:
            continue
        if protocol >= 0:
            if protocol == PROTOCOL_LINK:
                if record_version != 0:
                    continue
            elif record_version == 0 or record_protocol != protocol:
                continue
        if version and (record_version != version or address not in (src, dst)):
            continue
        if port >= 0 and (
            record_version == 0 or flags & Flag.LATER_FRAGMENT or port not in (sport, dport)
        ):
            continue
        found.append(number)
    return found.tobytes()


def python_index_times(index: bytes | memoryview) -> tuple[bytes, bool]:
    """Every record's time (native int64s) and whether they never decrease."""
    if len(index) % RECORD_SIZE:
        raise ValueError("an index is whole 64-byte records")
    times = array("q")
    if len(index):
        times.frombytes(memoryview(index).cast("q")[1 :: RECORD_SIZE // 8].tobytes())
    ordered = all(map(operator.le, times, itertools.islice(times, 1, None)))
    return times.tobytes(), ordered


IndexRecords = Callable[[bytes | bytearray, int, int, bool], bytes]
IndexPrefix = Callable[[bytes | bytearray, int, int, bool], tuple[bytes, int]]
SelectRecords = Callable[
    [bytes | memoryview, int, int, int, int, int, bytes, int, int, bool], bytes
]
index_records: IndexRecords
index_times: Callable[[bytes | memoryview], tuple[bytes, bool]]
index_prefix: IndexPrefix
select_records: SelectRecords
try:
    from receiver._packet_index import index_prefix as _c_index_prefix
    from receiver._packet_index import index_records as _c_index_records
    from receiver._packet_index import index_times as _c_index_times
    from receiver._packet_index import select_records as _c_select_records
except ImportError:  # not built here: the Python twins, slower, same records
    index_records = python_index_records
    index_times = python_index_times
    index_prefix = python_index_prefix
    select_records = python_select_records
else:
    index_records = _c_index_records
    index_times = _c_index_times
    index_prefix = _c_index_prefix
    select_records = _c_select_records


def index_header(linktype: int) -> bytes:
    return HEADER.pack(MAGIC, RECORD_SIZE, linktype)


def index_path(capture: Path) -> Path:
    """Where the index of ``capture`` (a closed file's path, or its ``.part``) is."""
    name = capture.name.removesuffix(".part")
    return capture.with_name(name + INDEX_SUFFIX)


def remove_index(capture: Path) -> None:
    """Remove the index of ``capture``, if there is one (with its capture file)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(index_path(capture))


# Reading ---------------------------------------------------------------------------------


@dataclass
class PacketIndex:
    """The records of one capture file (bytes after the header). Immutable: its times
    are worked out once and kept with it."""

    linktype: int
    # bytes, or a read-only view of the index file mapped into memory.
    records: bytes | memoryview
    _times: array[int] | None = field(default=None, repr=False, compare=False)
    _ordered: bool | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.records) // RECORD_SIZE

    def record(self, number: int) -> IndexRecord:
        """Record ``number`` (from 0)."""
        return IndexRecord._make(RECORD.unpack_from(self.records, number * RECORD_SIZE))

    def times(self) -> array[int]:
        """Every record's receive time, in file order: 8 bytes each (a list of ints would
        be 40)."""
        if self._times is None:
            found, self._ordered = index_times(self.records)
            self._times = array("q")
            self._times.frombytes(found)
        return self._times

    @property
    def ordered(self) -> bool:
        """Whether the times never decrease (a receiver's clock can step back)."""
        if self._ordered is None:
            self.times()
        return bool(self._ordered)

    def select(
        self,
        first: int = 0,
        last: int | None = None,
        *,
        start_ns: int = -(2**63),
        end_ns: int = 2**63 - 1,
        address: tuple[int, bytes] | None = None,
        port: int = NO_PORT,
        protocol: int = ANY_PROTOCOL,
        names_only: bool = False,
    ) -> array[int]:
        """The numbers of the matching records in [first, last)."""
        version, raw = address if address is not None else (0, b"")
        found = select_records(
            self.records,
            first,
            len(self) if last is None else last,
            start_ns,
            end_ns,
            version,
            raw,
            port,
            protocol,
            names_only,
        )
        numbers = array("I")
        numbers.frombytes(found)
        return numbers


def read_index_file(path: Path) -> PacketIndex | None:
    """The index at ``path`` as written, cut to whole records; None when it is missing
    or not an index. Mapped, not read: a page touches only its records (and reading
    2,000,000 records measured twice the time of mapping them). Index files are only
    ever appended to or replaced whole (never cut short), so a mapping stays valid."""
    try:
        with open(path, "rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            if size < HEADER_SIZE:
                return None
            data = memoryview(mmap.mmap(stream.fileno(), size, access=mmap.ACCESS_READ))
    except FileNotFoundError:
        return None
    magic, record_size, linktype = HEADER.unpack_from(data)
    if magic != MAGIC or record_size != RECORD_SIZE:
        return None
    whole = (size - HEADER_SIZE) // RECORD_SIZE * RECORD_SIZE
    return PacketIndex(linktype, data[HEADER_SIZE : HEADER_SIZE + whole])
