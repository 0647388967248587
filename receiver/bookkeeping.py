"""The receiver's bookkeeping: its counters and files written to the database.

:class:`Bookkeeper` takes the receive loop's snapshots (:class:`receiver.pipeline.Snapshot`)
and writes them in batches from a thread of its own (:func:`receiver.service.serve`), so a
slow or absent database never holds up the receive loop: counters are deltas, kept and
written once it answers again. The rows themselves are written by the models' managers
(:mod:`jmirror_web.intercepts.models`). At start, :func:`record_recovered` and
:func:`close_finished_rows` complete the rows of files an earlier receiver left open.
``manage.py import_pcap`` uses the same bookkeeper for the capture files it imports.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from django.conf import settings
from django.db import DatabaseError, connection, transaction

from jmirror_web.intercepts.models import (
    CaptureFile,
    FileCounts,
    Intercept,
    ListenerCounts,
    OutsideSessionsDirectory,
    ReceiverProcess,
    Router,
    Session,
    SessionCounts,
    TrafficCounts,
    TrafficMinute,
    UnclaimedStream,
)
from receiver.metrics import BookkeepingBacklog
from receiver.pipeline import (
    AGGREGATE_MID,
    UNCLAIMED_STREAMS_PER_SOURCE,
    ListenerCounters,
    Snapshot,
    SocketCounters,
    StreamKey,
    Unclaimed,
    admit_unclaimed,
    aggregate_key,
)
from receiver.store import CAPTURE_SUFFIXES, FileFacts, parse_session_directory, repair

logger = logging.getLogger(__name__)

# Rows of unclaimed streams kept in the database: junk from many sources must not grow
# the table without bound. A source past UNCLAIMED_STREAMS_PER_SOURCE rows gets one
# aggregate row for the rest, and the last tenth is kept for aggregate rows and new
# sources (receiver.pipeline.admit_unclaimed); what still does not fit is counted as
# overflow and logged.
UNCLAIMED_ROWS_LIMIT: Final = 10_000
# A full unclaimed table is logged at most this often.
UNCLAIMED_LOG_INTERVAL: Final = 60.0
# Unclaimed streams waiting for the database, and written per write. Random junk decodes
# as jmirror with random mids: tens of thousands of one-packet "streams" a second, which
# written one by one would keep this thread (and its share of the GIL) busy for seconds
# while the capture loop starves. Bounded, busiest first; the rest counted as overflow.
UNCLAIMED_PENDING_LIMIT: Final = 5_000
UNCLAIMED_PER_WRITE: Final = 200
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


class _UnclaimedRows:
    """What admit_unclaimed needs of the database's unclaimed table: whether a key has a
    row (of those probed, or made in this write) and how many rows there are."""

    def __init__(self, existing: set[StreamKey], count: int) -> None:
        self.existing = existing
        self._made: set[StreamKey] = set()
        self._count = count

    def add(self, key: StreamKey, row: UnclaimedStream) -> UnclaimedStream:
        self._made.add(key)
        return row

    def __contains__(self, key: object) -> bool:
        return key in self.existing or key in self._made

    def __len__(self) -> int:
        return self._count + len(self._made)

    def __iter__(self) -> Iterator[StreamKey]:
        return iter(self.existing | self._made)


def moment(time_ns: int) -> datetime:
    """Nanoseconds since the epoch as an aware UTC datetime (to the microsecond)."""
    return _EPOCH + timedelta(microseconds=time_ns // 1000)


def file_path(root: Path, relative: Path) -> str:
    """The CaptureFile path of the store's file ``relative`` to ``root``: as the model
    names files under the sessions directory (CaptureFile.stored_path), else absolute (a
    store rooted elsewhere, as tests and benchmarks make; such rows are not read)."""
    path = root / relative
    try:
        return CaptureFile.stored_path(path)
    except OutsideSessionsDirectory:
        return str(path)


# A session's counters waiting for the database, merged from every snapshot since the
# last write: a list (indexed by the names below) rather than a SessionDelta copy, so
# absorbing a snapshot costs one small list or a few additions per session.
_ROUTER, _INTERCEPT, _FIRST, _LAST, _PACKETS, _BYTES, _STORED, _ADDRESS = range(8)
Pending = list[Any]


class Bookkeeper:
    """Collects the receiver's snapshots and writes them to the database in batches.

    Only its own thread touches the pending state. A failed write keeps everything for
    the next attempt: counters are deltas, so nothing is counted twice or lost.
    ``session_ids`` maps (router id, mid, sid) to Session primary keys once written, for
    the live summaries (read from another thread: entries are only ever added).

    A write costs a few statements whatever the number of sessions: every session
    counter in one INSERT ... ON CONFLICT per chunk of rows (Session.objects.add_counts),
    and the rows of files being written only when their packets changed since the last
    write, with the files just closed, in one more (CaptureFile.objects.record).
    """

    def __init__(self, root: Path, *, started_ns: int | None = None) -> None:
        self.root = root
        self.sessions: dict[StreamKey, Pending] = {}
        self.unclaimed: dict[StreamKey, Unclaimed] = {}
        self.closed: list[FileFacts] = []
        self.open: list[FileFacts] = []
        self.listener: ListenerCounters | None = None
        self.sockets: list[SocketCounters] = []
        self.store_errors: dict[str, int] = {}
        self.stopped = False
        self.session_ids: dict[tuple[int, int, int], int] = {}
        self.process: ReceiverProcess | None = None
        self.started = moment(started_ns if started_ns is not None else time.time_ns())
        self._unclaimed_rows: int | None = None
        self.unclaimed_rows_dropped = 0
        # Pending streams per source (admit_unclaimed), and datagrams this thread counted
        # in an aggregate row rather than their stream's own.
        self._pending_sources: dict[str, int] = {}
        self.unclaimed_rows_aggregated = 0
        self._unclaimed_logged: tuple[float, int, int] = (0.0, 0, 0)
        # Packets of each open file as last written (by its path relative to root): a
        # file whose count did not move is not written again.
        self._open_written: dict[Path, int] = {}
        # Registered router address -> router id, learnt from the session counters, for
        # the session of a file (FileFacts.session names its router by address).
        self._router_ids: dict[str, int] = {}
        self._row_prefix: str | None = None
        # Backlog: when the oldest snapshot not yet written was absorbed (ns since the
        # epoch; None when everything is written), and what the last write carried.
        self._oldest_unwritten_ns: int | None = None
        self.last_write_rows = 0
        self.last_write_lag = 0.0
        self.active_sessions = 0
        self.round_ns = 0
        self.bound_closes = 0

    def backlog(self) -> BookkeepingBacklog:
        """Session counters waiting for the database and the age in seconds of the oldest
        unwritten snapshot (read from other threads: plain reads of two attributes)."""
        oldest = self._oldest_unwritten_ns
        lag = 0.0 if oldest is None else max(0.0, (time.time_ns() - oldest) / 1e9)
        return BookkeepingBacklog(len(self.sessions), lag)

    def absorb(self, snapshot: Snapshot) -> None:
        # Runs beside the receive loop (sharing its interpreter lock): one merge per
        # session and nothing else per session here; the rows are built by write().
        pending = self.sessions
        for key, delta in snapshot.sessions.items():
            row = pending.get(key)
            if row is None:
                pending[key] = [
                    delta.router_id,
                    delta.intercept_pk,
                    delta.first_ns,
                    delta.last_ns,
                    delta.packets,
                    delta.bytes,
                    delta.stored,
                    delta.store_key.router,
                ]
            else:
                # The claim may have moved to another intercept (records edited): the
                # latest wins, as in SessionDelta.merge.
                row[_INTERCEPT] = delta.intercept_pk
                if delta.first_ns < row[_FIRST]:
                    row[_FIRST] = delta.first_ns
                if delta.last_ns > row[_LAST]:
                    row[_LAST] = delta.last_ns
                row[_PACKETS] += delta.packets
                row[_BYTES] += delta.bytes
                row[_STORED] += delta.stored
        if self._oldest_unwritten_ns is None and (snapshot.sessions or snapshot.closed_files):
            # When it was taken in, not snapshot.time_ns: an import's snapshots carry the
            # capture's times. receiver.service.serve() takes every queued snapshot before
            # each write, so at most one write's time passes between a snapshot and its
            # taking.
            self._oldest_unwritten_ns = time.time_ns()
        for key, entry in snapshot.unclaimed.items():
            admitted = admit_unclaimed(
                self.unclaimed, self._pending_sources, key, UNCLAIMED_PENDING_LIMIT
            )
            if admitted is None:
                self.unclaimed_rows_dropped += entry.count
                continue
            if admitted != key:
                self.unclaimed_rows_aggregated += entry.count
            waiting = self.unclaimed.get(admitted)
            if waiting is not None:
                waiting.merge(entry)
            else:
                self.unclaimed[admitted] = entry.copy()
        self.closed += snapshot.closed_files
        # Totals and open files: the latest snapshot says all there is to say.
        self.open = snapshot.open_files
        self.listener = snapshot.listener
        self.sockets = snapshot.sockets
        self.store_errors = dict(snapshot.store_errors)
        self.stopped = snapshot.final
        self.active_sessions = snapshot.active_sessions
        # The longest round since the last write, of every snapshot absorbed since.
        self.round_ns = max(self.round_ns, snapshot.round_ns)
        self.bound_closes = snapshot.bound_closes

    def write(self) -> bool:
        """Write what is pending; False (logged) when the database refused, with what was
        not written kept for the next call. Sessions and files go in one transaction, then
        a bounded batch of unclaimed streams, then this receiver's totals, so that junk
        traffic never holds the counters of real sessions back."""
        written = True
        carried = len(self.sessions)
        try:
            with transaction.atomic():
                self._write_sessions()
                open_written = self._write_files()
            self.sessions.clear()
            self.closed.clear()
            self._open_written = open_written
            oldest, self._oldest_unwritten_ns = self._oldest_unwritten_ns, None
            self.last_write_rows = carried
            self.last_write_lag = 0.0 if oldest is None else (time.time_ns() - oldest) / 1e9
            self._write_unclaimed()
            with transaction.atomic():
                self._write_process()
        except DatabaseError as error:
            logger.warning(
                "database write failed (%s); keeping %d session counters, %d file rows and "
                "%d unclaimed streams for the next attempt",
                error,
                len(self.sessions),
                len(self.closed),
                len(self.unclaimed),
            )
            # A broken connection is not reused; Django opens a new one on the next query.
            connection.close()
            written = False
        return written

    def register(self) -> None:
        """Make this receiver's row (at start, before any packet: the records are read
        then too, so a database that does not answer stops the start)."""
        now = datetime.now(UTC)
        self.process = ReceiverProcess.objects.create(
            hostname=socket.gethostname(),
            node=settings.NODE_NAME,
            pid=os.getpid(),
            started_at=self.started,
            reported_at=now,
        )

    def _write_sessions(self) -> None:
        rows = []
        router_ids = self._router_ids
        for (_source, mid, sid), row in self.sessions.items():
            if not row[_PACKETS]:
                continue  # handed on without traffic: nothing to add
            rows.append(
                SessionCounts(
                    row[_ROUTER],
                    mid,
                    sid,
                    row[_INTERCEPT],
                    moment(row[_FIRST]),
                    moment(row[_LAST]),
                    row[_PACKETS],
                    row[_BYTES],
                    row[_STORED],
                )
            )
            router_ids[row[_ADDRESS]] = row[_ROUTER]
        # Entries are only added (the live thread reads the map meanwhile).
        ids = Session.objects.add_counts(rows)
        self.session_ids.update(ids)
        # The same counts by minute (of the write's latest packet of each session): the
        # dashboard's traffic over time, in one more statement.
        TrafficMinute.objects.add(
            [
                TrafficCounts(
                    ids[(row.router_id, row.mid, row.sid)],
                    row.last_seen.replace(second=0, microsecond=0),
                    row.packets,
                    row.bytes,
                )
                for row in rows
                if (row.router_id, row.mid, row.sid) in ids
            ]
        )

    def _session_for(self, closed: FileFacts) -> int | None:
        """The Session primary key of a file's session: known from this run's counters,
        else asked of the database (a file of a session written by an earlier run)."""
        key = closed.session
        if key is None:
            return None
        router_id = self._router_ids.get(key.router)
        if router_id is not None:
            session_id = self.session_ids.get((router_id, key.mid, key.sid))
            if session_id is not None:
                return session_id
        found: int | None = (
            Session.objects.filter(router__address=key.router, mid=key.mid, sid=key.sid)
            .values_list("pk", flat=True)
            .first()
        )
        return found

    def _write_files(self) -> dict[Path, int]:
        """The rows of files just closed, and of files still being written (closed=False,
        so a session's files show before they rotate; completed on close, same path)
        whose packets moved since the last write, in one batch. Returns the packets of
        each open file as now written, for the next write to compare with."""
        rows: list[FileCounts] = []
        for closed in self.closed:
            if closed.session is None:
                continue  # recovered files are written at start by record_recovered()
            session_id = self._session_for(closed)
            if session_id is None:
                logger.error("closed %s but its session has no row", closed.path)
                continue
            rows.append(self._file_counts(closed, session_id, closed=True))
        before = self._open_written
        written: dict[Path, int] = {}
        for each in self.open:
            if before.get(each.path) == each.packets:
                written[each.path] = each.packets
                continue
            session_id = self._session_for(each)
            if session_id is None:
                continue
            rows.append(self._file_counts(each, session_id, closed=False))
            written[each.path] = each.packets
        CaptureFile.objects.record(rows)
        return written

    def _file_counts(self, file: FileFacts, session_id: int, *, closed: bool) -> FileCounts:
        if self._row_prefix is None:
            # file_path() of any file under root, by joining text (pathlib per file costs
            # microseconds, thousands of times a write).
            self._row_prefix = file_path(self.root, Path("x"))[:-1]
        return FileCounts(
            path=self._row_prefix + str(file.path),
            session_id=session_id,
            first_packet=moment(file.first_ns),
            last_packet=moment(file.last_ns),
            packets=file.packets,
            bytes=file.bytes,
            sha256=file.sha256 if closed else "",
            closed=closed,
            node=settings.NODE_NAME,
            closed_at=datetime.now(UTC) if closed else None,
        )

    def _write_unclaimed(self) -> None:
        """The busiest pending unclaimed streams, at most UNCLAIMED_PER_WRITE, in a few
        queries; at shutdown what is left is counted as overflow (the 5 s budget). A new
        row is admitted as admit_unclaimed says: past its source's limit, or with the
        table near full, the datagrams go to the source's aggregate row."""
        if not self.unclaimed:
            return
        batch = sorted(self.unclaimed.items(), key=lambda item: -item[1].count)
        batch = batch[:UNCLAIMED_PER_WRITE]
        sources = {key[0] for key, _ in batch}
        with transaction.atomic():
            if self._unclaimed_rows is None:
                self._unclaimed_rows = UnclaimedStream.objects.count()
            probe = [key for key, _ in batch] + [aggregate_key(source) for source in sources]
            rows = _UnclaimedRows(
                UnclaimedStream.objects.keys_among(
                    sources, {key[1] for key in probe}, {key[2] for key in probe}
                ),
                self._unclaimed_rows,
            )
            per_source = UnclaimedStream.objects.streams_per_source(sources)
            routers = dict(Router.objects.values_list("address", "pk"))
            fresh: dict[StreamKey, UnclaimedStream] = {}
            updates: dict[StreamKey, Unclaimed] = {}
            for key, entry in batch:
                admitted = admit_unclaimed(rows, per_source, key, UNCLAIMED_ROWS_LIMIT)
                if admitted is None:
                    self.unclaimed_rows_dropped += entry.count
                    continue
                if admitted != key:
                    self.unclaimed_rows_aggregated += entry.count
                source, mid, sid = admitted
                if admitted in fresh:
                    row = fresh[admitted]
                    row.packets += entry.count
                    row.last_seen = max(row.last_seen, moment(entry.last_ns))
                    row.reason = entry.reason
                elif admitted in rows.existing:
                    # One UPDATE per row, however many streams an aggregate row takes.
                    update = updates.get(admitted)
                    if update is None:
                        updates[admitted] = entry.copy()
                    else:
                        update.count += entry.count
                        update.last_ns = max(update.last_ns, entry.last_ns)
                        update.reason = entry.reason
                else:
                    fresh[admitted] = rows.add(
                        admitted,
                        UnclaimedStream(
                            source=source,
                            router_id=routers.get(source)
                            or routers.get(source.removeprefix("::ffff:")),
                            mid=mid,
                            sid=sid,
                            reason=entry.reason,
                            packets=entry.count,
                            first_seen=moment(entry.first_ns),
                            last_seen=moment(entry.last_ns),
                        ),
                    )
            for stream, update in updates.items():
                UnclaimedStream.objects.add_counts(
                    stream,
                    packets=update.count,
                    last_seen=moment(update.last_ns),
                    reason=update.reason,
                )
            # A row another receiver made meanwhile wins; this one's count is lost (rare).
            UnclaimedStream.objects.bulk_create(list(fresh.values()), ignore_conflicts=True)
            self._unclaimed_rows += len(fresh)
        for key, _ in batch:
            del self.unclaimed[key]
            if key[1] != AGGREGATE_MID:
                left = self._pending_sources.get(key[0], 1) - 1
                if left > 0:
                    self._pending_sources[key[0]] = left
                else:
                    self._pending_sources.pop(key[0], None)
        if self.stopped:
            self.unclaimed_rows_dropped += sum(each.count for each in self.unclaimed.values())
            self.unclaimed.clear()
            self._pending_sources.clear()
        self._log_unclaimed_limits()

    def _log_unclaimed_limits(self) -> None:
        """Say when unclaimed streams went to an aggregate row or were not listed at all
        (at most once per UNCLAIMED_LOG_INTERVAL): never silently."""
        logged_at, aggregated, dropped = self._unclaimed_logged
        counts = (self.unclaimed_rows_aggregated, self.unclaimed_rows_dropped)
        if counts == (aggregated, dropped):
            return
        now = time.monotonic()
        if logged_at and now - logged_at < UNCLAIMED_LOG_INTERVAL:
            return
        self._unclaimed_logged = (now, *counts)
        logger.warning(
            "unclaimed-stream table (%d rows at most, %d per source): %d more datagrams "
            "counted in a source's aggregate row and %d more not listed (table full) since "
            "the last report",
            UNCLAIMED_ROWS_LIMIT,
            UNCLAIMED_STREAMS_PER_SOURCE,
            counts[0] - aggregated,
            counts[1] - dropped,
        )

    def _write_process(self) -> None:
        listener = self.listener
        if listener is None:
            return
        now = datetime.now(UTC)
        fields = {
            "reported_at": now,
            "stopped_at": now if self.stopped else None,
            "datagrams": listener.datagrams,
            "bytes": listener.bytes,
            "malformed": listener.malformed,
            "unstorable": listener.unstorable,
            "internal_errors": listener.internal_error,
            "unclaimed_overflow": listener.unclaimed_overflow + self.unclaimed_rows_dropped,
            "drops": dict(listener.drops),
            "store_errors": self.store_errors,
            "open_files": len(self.open),
            "active_sessions": self.active_sessions,
            "round_ms": self.round_ns / 1e6,
            "longest_round_ms": listener.longest_round_ns / 1e6,
            "bound_closes": self.bound_closes,
            "bookkeeping_backlog": self.last_write_rows,
            "bookkeeping_lag_seconds": self.last_write_lag,
        }
        if self.process is None:
            self.register()
        assert self.process is not None
        sockets = [
            ListenerCounts(each.address, each.datagrams, each.bytes, each.kernel_drops, each.rcvbuf)
            for each in self.sockets
        ]
        self.process.report(sockets, **fields)


def closed_file_counts(root: Path, closed: FileFacts, session_id: int) -> FileCounts:
    """The row of a closed file under ``root``."""
    return FileCounts(
        path=file_path(root, closed.path),
        session_id=session_id,
        first_packet=moment(closed.first_ns),
        last_packet=moment(closed.last_ns),
        packets=closed.packets,
        bytes=closed.bytes,
        sha256=closed.sha256,
        closed=True,
        node=settings.NODE_NAME,
        closed_at=datetime.now(UTC),
    )


def record_recovered(root: Path, recovered: Sequence[FileFacts]) -> set[int]:
    """Close the rows of files a killed receiver left open, creating missing rows (and
    their session) from the directory name. Returns the ids of the sessions concerned."""
    sessions: set[int] = set()
    for closed in recovered:
        path = file_path(root, closed.path)
        row = CaptureFile.objects.filter(path=path).first()
        if row is not None:
            CaptureFile.objects.save_closed(closed_file_counts(root, closed, row.session_id))
            sessions.add(row.session_id)
            continue
        named = parse_session_directory(closed.path.parent.name)
        router = None
        if named is not None:
            liid, address, mid, sid = named
            router = Router.objects.filter(address=address).first()
        if named is None or router is None:
            logger.error("recovered %s but cannot tell its router: no database row made", path)
            continue
        session, _ = Session.objects.get_or_create(
            router=router,
            mid=mid,
            sid=sid,
            defaults={
                "intercept": Intercept.objects.filter(liid=liid).first(),
                "first_seen": moment(closed.first_ns),
                "last_seen": moment(closed.last_ns),
            },
        )
        CaptureFile.objects.save_closed(closed_file_counts(root, closed, session.pk))
        sessions.add(session.pk)
    return sessions


def close_finished_rows(root: Path, sessions: set[int] | None = None) -> int:
    """Close the rows of finished files (renamed from ``.part`` to ``.pcap`` or
    ``.pcapng``) that are still open or missing: their receiver closed and hashed them at
    its exit, but the database did not answer in time for the rows. Each file is read
    again for its SHA-256, packets and time range (nothing in it is changed). Returns how
    many rows were closed or made; the ids of their sessions are added to ``sessions``."""
    recorded = CaptureFile.objects.closed_paths()
    finished = []
    found = (path for suffix in CAPTURE_SUFFIXES for path in root.glob(f"*/*{suffix}"))
    for path in sorted(found):
        relative = path.relative_to(root)
        if file_path(root, relative) in recorded:
            continue
        try:
            described = repair(path, truncate=False)
        except (OSError, ValueError) as error:
            logger.error("cannot read %s to close its row: %s", path, error)
            continue
        if described.first_ns is None or described.last_ns is None or described.truncated_bytes:
            logger.error("%s is not a whole capture file: its row is left as it is", path)
            continue
        finished.append(described.closed(relative))
    touched = record_recovered(root, finished)
    if sessions is not None:
        sessions |= touched
    return len(finished)
