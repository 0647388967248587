"""Summarising stored packets into conversations and names, in the background
(``manage.py summarise``, which the receiver runs as its child process).

Incremental: each capture file's :class:`SummaryProgress` says how many of its packets
are summarised; a run reads the file's packet index (:func:`jmirror_web.console.
stored_packets.file_index`) from there, aggregates the flows from the index records
alone, reads only the packets the index marks as name candidates (DNS, TLS handshakes,
HTTP requests) for their names, and adds it all in one transaction with the progress,
so that a crash or a second summariser never counts a packet twice: the progress moves
only from the value the batch started at. A purged file is never summarised, and the
file's row is locked as purge locks it.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO, Final, cast

from django.db import DatabaseError, IntegrityError, models, transaction
from django.db.models import F, Value
from django.db.models.functions import Greatest, Least

from jmirror_web.console.stored_packets import IndexUnavailable, file_index, packet_data
from jmirror_web.conversations.models import (
    MAX_CONVERSATIONS,
    MAX_NAMES,
    Conversation,
    ObservedName,
    SessionSummary,
    SummaryProgress,
    TcpSeen,
    unsummarised_files,
)
from jmirror_web.intercepts.evidence_store import CaptureUnavailable, open_capture
from jmirror_web.intercepts.models import CaptureFile, OutsideSessionsDirectory
from jmirror_web.object_store import StorageError
from receiver.names import names_in
from receiver.packet_index import RECORD, RECORD_SIZE, Flag, PacketIndex

logger = logging.getLogger(__name__)

BATCH_PACKETS: Final = 100_000
"""Packets of one file summarised per transaction."""
FILES_PER_PASS: Final = 1000
# A file that could not be read is tried again after this long, its count unchanged: on
# a host without the local copy it becomes readable once uploaded to the evidence store.
RETRY_UNREADABLE: Final = timedelta(minutes=10)
# Up to this many addresses (names) in a slice, only the rows with them are read back
# (twice that many query parameters: within SQLite's limit).
_FEW: Final = 400
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# The protocols whose ports the packet index records (receiver.packet_index).
_PORTED: Final = frozenset({6, 17, 132, 136})
# Per direction (shifted by 5 for the higher end of a key): what its TCP packets showed.
_S, _SA, _F, _R, _N = 1, 2, 4, 8, 16
_TCP_FIN, _TCP_SYN, _TCP_RST, _TCP_ACK = 1, 2, 4, 16

Endpoint = tuple[int, bytes, int]  # IP version, 16-byte address, port
FlowKey = tuple[int, Endpoint, Endpoint]  # protocol, lower end, higher end


@dataclass
class _Flow:
    low_first: bool  # the lower end sent the first packet seen
    first_ns: int
    last_ns: int
    packets: list[int] = field(default_factory=lambda: [0, 0])  # from low, from high
    bytes: list[int] = field(default_factory=lambda: [0, 0])
    tcp: int = 0


@dataclass
class _Name:
    count: int
    first_ns: int
    last_ns: int


@dataclass
class Batch:
    """What one slice of a file's packets adds."""

    flows: dict[FlowKey, _Flow] = field(default_factory=dict)
    names: dict[tuple[str, str, str], _Name] = field(default_factory=dict)
    unread: int = 0  # name candidates whose bytes could not be read


def _moment(time_ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=time_ns // 1000)


def _address(version: int, raw: bytes) -> str:
    return str(ipaddress.IPv4Address(raw[:4]) if version == 4 else ipaddress.IPv6Address(raw))


def _tcp_bits(flags: int) -> int:
    bits = 0
    if flags & _TCP_SYN:
        bits |= _SA if flags & _TCP_ACK else _S
    else:
        bits |= _N
    if flags & _TCP_FIN:
        bits |= _F
    if flags & _TCP_RST:
        bits |= _R
    return bits


# What each value of the TCP flags byte adds to a direction's bits.
_TCP_BITS: Final = tuple(_tcp_bits(flags) for flags in range(256))
# Plain ints: an IntFlag operand would make every test in the loop build a Flag.
_SKIPPED: Final = int(Flag.MALFORMED)
_PORTLESS: Final = int(Flag.LATER_FRAGMENT)
_CANDIDATE: Final = int(Flag.NAME_CANDIDATE)


def read_batch(capture: CaptureFile, index: PacketIndex, first: int, last: int) -> Batch:
    """Aggregate records [first, last) of ``capture``'s index.

    The loop runs once per packet and is kept flat (about 1 us a packet): counts go to
    a list per direction of a flow, keyed by the record's own fields; the directions are
    paired into flows afterwards, once per flow."""
    batch = Batch()
    directed: dict[tuple[int, int, bytes, int, bytes, int], list[int]] = {}
    view = memoryview(index.records)[first * RECORD_SIZE : last * RECORD_SIZE]
    candidates: list[tuple[int, int, int]] = []  # offset, captured length, time
    tcp_bits = _TCP_BITS
    ported = _PORTED
    for (
        offset,
        time_ns,
        captured,
        length,
        version,
        protocol,
        tcp_flags,
        flags,
        sport,
        dport,
        src,
        dst,
    ) in RECORD.iter_unpack(view):
        if version == 0 or flags & _SKIPPED:
            continue  # link control (PPP, ARP): no conversation of addresses
        if flags & _CANDIDATE:
            candidates.append((offset, captured, time_ns))
        if flags & _PORTLESS or protocol not in ported:
            sport = dport = 0
            bits = 0
        else:
            bits = tcp_bits[tcp_flags] if protocol == 6 else 0
        key = (protocol, version, src, sport, dst, dport)
        entry = directed.get(key)
        if entry is None:
            directed[key] = [1, length, time_ns, time_ns, bits]
        else:
            entry[0] += 1
            entry[1] += length
            if time_ns < entry[2]:
                entry[2] = time_ns
            elif time_ns > entry[3]:
                entry[3] = time_ns
            entry[4] |= bits
    _pair(directed, batch.flows)
    if candidates:
        _read_names(capture, index, candidates, batch)
    return batch


def _pair(
    directed: dict[tuple[int, int, bytes, int, bytes, int], list[int]],
    flows: dict[FlowKey, _Flow],
) -> None:
    """The directions of each flow as one, keyed by its lower end."""
    for (protocol, version, src, sport, dst, dport), (
        packets,
        size,
        first_ns,
        last_ns,
        bits,
    ) in directed.items():
        source: Endpoint = (version, src, sport)
        destination: Endpoint = (version, dst, dport)
        from_low = source <= destination
        key: FlowKey = (
            (protocol, source, destination) if from_low else (protocol, destination, source)
        )
        side = 0 if from_low else 1
        flow = flows.get(key)
        if flow is None:
            flow = flows[key] = _Flow(from_low, first_ns, last_ns)
        else:
            if first_ns < flow.first_ns:
                flow.first_ns, flow.low_first = first_ns, from_low
            flow.last_ns = max(flow.last_ns, last_ns)
        flow.packets[side] += packets
        flow.bytes[side] += size
        flow.tcp |= bits << (5 * side)


def _read_names(
    capture: CaptureFile,
    index: PacketIndex,
    candidates: list[tuple[int, int, int]],
    batch: Batch,
) -> None:
    try:
        stream, _growing = open_capture(capture)
    except (CaptureUnavailable, OutsideSessionsDirectory, OSError, StorageError) as error:
        logger.warning("summaries: names of %s not read: %s", capture.path, error)
        batch.unread += len(candidates)
        return
    try:
        for offset, captured, time_ns in candidates:
            try:
                data = packet_data(cast(BinaryIO, stream), index.linktype, offset, captured)
            except (OSError, StorageError):
                data = None
            if data is None:
                batch.unread += 1
                continue
            for seen in names_in(index.linktype, data):
                key = (seen.kind, seen.name, seen.address)
                name = batch.names.get(key)
                if name is None:
                    batch.names[key] = _Name(1, time_ns, time_ns)
                else:
                    name.count += 1
                    name.first_ns = min(name.first_ns, time_ns)
                    name.last_ns = max(name.last_ns, time_ns)
    finally:
        stream.close()


def _tcp_seen(bits_a: int, bits_b: int) -> int:
    both = bits_a | bits_b
    seen = 0
    if both & _S:
        seen |= TcpSeen.SYN
    if both & _SA:
        seen |= TcpSeen.SYN_ACK
    if bits_a & _F:
        seen |= TcpSeen.FIN_AB
    if bits_b & _F:
        seen |= TcpSeen.FIN_BA
    if both & _R:
        seen |= TcpSeen.RST
    if both & _N:
        seen |= TcpSeen.NO_SYN
    return seen


def _later(field_name: str, moment: datetime) -> Any:
    return Greatest(field_name, Value(moment, output_field=models.DateTimeField()))


def _earlier(field_name: str, moment: datetime) -> Any:
    return Least(field_name, Value(moment, output_field=models.DateTimeField()))


def _store_flows(session_id: int, flows: dict[FlowKey, _Flow]) -> int:
    """Add the flows to the session's conversations; how many new ones the cap left out."""
    rows = Conversation.objects.filter(session_id=session_id)
    addresses = {_address(end[0], end[1]) for _protocol, *ends in flows for end in ends}
    # Only the rows this slice may add to, when few addresses say which (a long session
    # has many conversations, a slice of a few seconds few addresses).
    candidates = (
        rows.filter(address_a__in=addresses, address_b__in=addresses)
        if len(addresses) <= _FEW
        else rows
    )
    existing = {
        (protocol, a, pa, b, pb): pk
        for pk, protocol, a, pa, b, pb in candidates.values_list(
            "pk", "protocol", "address_a", "port_a", "address_b", "port_b"
        )
    }
    room = MAX_CONVERSATIONS - (rows.count() if flows else 0)
    created: list[Conversation] = []
    left_out = 0
    for (protocol, low, high), flow in flows.items():
        low_text = (_address(low[0], low[1]), low[2])
        high_text = (_address(high[0], high[1]), high[2])
        forward = (protocol, *low_text, *high_text)
        backward = (protocol, *high_text, *low_text)
        if forward in existing or backward in existing:
            low_is_a = forward in existing
            pk = existing[forward] if low_is_a else existing[backward]
        else:
            low_is_a = flow.low_first
            pk = None
        a, b = (0, 1) if low_is_a else (1, 0)
        bits = (flow.tcp & 31, flow.tcp >> 5)
        tcp = _tcp_seen(bits[a], bits[b]) if protocol == 6 else 0
        first, last = _moment(flow.first_ns), _moment(flow.last_ns)
        if pk is not None:
            Conversation.objects.filter(pk=pk).update(
                packets_ab=F("packets_ab") + flow.packets[a],
                bytes_ab=F("bytes_ab") + flow.bytes[a],
                packets_ba=F("packets_ba") + flow.packets[b],
                bytes_ba=F("bytes_ba") + flow.bytes[b],
                first_seen=_earlier("first_seen", first),
                last_seen=_later("last_seen", last),
                tcp_seen=F("tcp_seen").bitor(tcp),
            )
            continue
        if len(created) >= room:
            left_out += 1
            continue
        (address_a, port_a), (address_b, port_b) = (
            (low_text, high_text) if low_is_a else (high_text, low_text)
        )
        created.append(
            Conversation(
                session_id=session_id,
                protocol=protocol,
                address_a=address_a,
                port_a=port_a,
                address_b=address_b,
                port_b=port_b,
                first_seen=first,
                last_seen=last,
                packets_ab=flow.packets[a],
                bytes_ab=flow.bytes[a],
                packets_ba=flow.packets[b],
                bytes_ba=flow.bytes[b],
                tcp_seen=tcp,
            )
        )
    Conversation.objects.bulk_create(created, batch_size=1000)
    return left_out


def _store_names(session_id: int, names: dict[tuple[str, str, str], _Name]) -> int:
    rows = ObservedName.objects.filter(session_id=session_id)
    seen_names = {name for _kind, name, _address in names}
    candidates = rows.filter(name__in=seen_names) if len(seen_names) <= _FEW else rows
    existing = {
        (kind, name, address): pk
        for pk, kind, name, address in candidates.values_list("pk", "kind", "name", "address")
    }
    room = MAX_NAMES - (rows.count() if names else 0)
    created: list[ObservedName] = []
    left_out = 0
    for key, seen in names.items():
        first, last = _moment(seen.first_ns), _moment(seen.last_ns)
        pk = existing.get(key)
        if pk is not None:
            ObservedName.objects.filter(pk=pk).update(
                count=F("count") + seen.count,
                first_seen=_earlier("first_seen", first),
                last_seen=_later("last_seen", last),
            )
        elif len(created) < room:
            kind, name, address = key
            created.append(
                ObservedName(
                    session_id=session_id,
                    kind=kind,
                    name=name,
                    address=address,
                    first_seen=first,
                    last_seen=last,
                    count=seen.count,
                )
            )
        else:
            left_out += 1
    ObservedName.objects.bulk_create(created, batch_size=1000)
    return left_out


def summarise_file(capture: CaptureFile, batch_packets: int = BATCH_PACKETS) -> int:
    """Summarise the next slice of ``capture``'s packets; how many (0: nothing to do,
    the file unreadable, or another summariser took the slice)."""
    progress, _ = SummaryProgress.objects.get_or_create(capture=capture)
    first = progress.packets
    if first >= capture.packets:
        return 0
    try:
        index = file_index(capture)
    except IndexUnavailable as error:
        logger.warning("summaries: %s not summarised: %s", capture.path, error)
        SummaryProgress.objects.filter(pk=progress.pk).update(
            failed_at=capture.packets, error=str(error)[:300], updated_at=datetime.now(UTC)
        )
        return 0
    last = min(len(index), first + batch_packets)
    batch = read_batch(capture, index, first, last)
    try:
        with transaction.atomic():
            # Locked as purge locks it: a file purged meanwhile is not summarised, and a
            # purge waits for this batch (then deletes what it added).
            if (
                not CaptureFile.objects.select_for_update()
                .filter(pk=capture.pk, purged_at__isnull=True)
                .exists()
            ):
                return 0
            moved = SummaryProgress.objects.filter(pk=progress.pk, packets=first).update(
                packets=last, failed_at=None, error=""
            )
            if not moved:
                return 0  # another summariser did this slice
            conversations_left_out = _store_flows(capture.session_id, batch.flows)
            names_left_out = _store_names(capture.session_id, batch.names) + batch.unread
            if conversations_left_out or names_left_out:
                SessionSummary.objects.get_or_create(session_id=capture.session_id)
                SessionSummary.objects.filter(session_id=capture.session_id).update(
                    conversations_left_out=F("conversations_left_out") + conversations_left_out,
                    names_left_out=F("names_left_out") + names_left_out,
                )
    except IntegrityError:
        # A second summariser created one of these rows first: the whole batch again.
        logger.info("summaries: %s slice at %d raced another summariser", capture.path, first)
        return 0
    return last - first


def _pending() -> Iterator[CaptureFile]:
    """Files with packets not summarised yet (and not unreadable at their count, unless
    that was :data:`RETRY_UNREADABLE` ago)."""
    files = (
        unsummarised_files()
        .exclude(
            summary_progress__failed_at=F("packets"),
            summary_progress__updated_at__gt=datetime.now(UTC) - RETRY_UNREADABLE,
        )
        .order_by("pk")
    )
    yield from files[:FILES_PER_PASS]


def summarise(budget_seconds: float, *, batch_packets: int = BATCH_PACKETS) -> tuple[int, bool]:
    """Summarise new packets of every file for about ``budget_seconds``: how many
    packets, and whether nothing is left."""
    deadline = time.monotonic() + budget_seconds
    total = 0
    for capture in _pending():
        while True:
            try:
                done = summarise_file(capture, batch_packets)
            except DatabaseError:
                raise  # the database is away: the caller tries again later
            except Exception as error:
                logger.exception("summaries: %s not summarised", capture.path)
                SummaryProgress.objects.filter(capture=capture).update(
                    failed_at=capture.packets, error=f"internal error: {error!r}"[:300]
                )
                done = 0
            total += done
            if not done or time.monotonic() >= deadline:
                break
            capture.refresh_from_db(fields=["packets", "purged_at"])
        if time.monotonic() >= deadline:
            return total, False
    return total, not any(True for _ in _pending())
