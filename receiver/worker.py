"""The live receive loop: UDP sockets -> decode -> gate -> per-session pcap files.

Standard library plus the sans-I/O receiver modules only, no Django: the Django side
(``manage.py receive``) hands in a :class:`~receiver.gate.Gate` and a
:class:`~receiver.store.PcapStore`, replaces :attr:`Receiver.gate` when the records change,
and takes :class:`Snapshot` objects from the ``on_tick`` hook to write them to the
database in another thread. The loop itself never waits on anything but its sockets.

:class:`Capture` is the per-datagram pipeline (decode -> gate -> counters -> store) and
the snapshots; :class:`Receiver` adds the sockets. ``manage.py import_pcap`` feeds a
``Capture`` from a capture file, so offline and live packets meet the same gate.

Hot path, chosen by measurement (docs/architecture.md, Measured constraints):
non-blocking sockets drained until empty and ``select`` only when all are (a plain loop
ran about 270k datagrams/s on the reference machine against 47k for asyncio's datagram
endpoint), with a 250 us pause after a short round so that the next one costs a batch.
Three drains, fastest first:

- :mod:`receiver._fastpath` (C, built by the install where a compiler is): ``recvmmsg``
  with kernel timestamps, and the pcap append and counts of every datagram whose stream
  Python has bound to it, and the drop of every datagram whose answer Python gave for its
  source or stream before (junk costs no more than a stored packet); each other
  datagram comes back to :meth:`Capture.handle`, in order. 1.1 against 2.6 us per 128-byte datagram
  for the Python drain, 2.6 against 4.3 us per 1,400-byte one, kernel receive included
  (``benchmarks/drain_benchmark.py``).
- ``recvmmsg`` through ctypes (:mod:`receiver.batch_receive`): up to 64 datagrams per
  system call, as views into one buffer, handed to :meth:`Capture.handle_batch`, where a
  stream's consecutive datagrams share its gate answer and session.
- elsewhere, ``recvfrom_into`` and :meth:`Capture.handle` per datagram.

All three give the same files and counts (property tests against :meth:`Capture.handle`).
Periodic work (store flush, file expiry, the tick hook, the stop flag) runs at least
every ``tick_interval``; a round of the loop longer than :data:`STALL_NS` is counted and
logged, with the garbage collector's share of it.
"""

from __future__ import annotations

import gc
import logging
import select
import socket
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Final

from jmirror_web.environment import parse_listen as parse_listen
from receiver.batch_receive import BatchReceiver, remember_source
from receiver.gate import (
    DROP_REASONS,
    NO_INTERCEPT,
    OUTSIDE_WINDOW,
    UNKNOWN_ROUTER,
    Claim,
    Gate,
)
from receiver.jmirror import DecodeError, classify_datagram
from receiver.store import LINKTYPE_FOR_KIND, ClosedFile, PcapStore, SessionKey
from receiver.watch import LiveWatch

try:
    from receiver._fastpath import FastReceiver
except ImportError:  # not built here (see setup.py): the pure-Python path runs instead
    FastReceiver = None  # type: ignore[assignment,misc]

logger = logging.getLogger(__name__)

DEFAULT_RCVBUF: Final = 32 * 2**20
UNCLAIMED_LIMIT: Final = 10_000
# New unclaimed streams remembered per tick: random junk makes a new "stream" of almost
# every datagram, and every one of them is work for the database thread.
UNCLAIMED_PER_TICK: Final = 1_000
# Distinct unclaimed streams of one source kept apart in each table (per tick, since
# start, waiting for the database, database rows); its further streams are counted in
# the source's aggregate row, so junk with random mids from one source cannot crowd out
# the streams of others. A real router sends a few streams per subscriber.
UNCLAIMED_STREAMS_PER_SOURCE: Final = 64
# The aggregate row's mid: outside the 32 bits a jmirror mid has, so no stream has it.
AGGREGATE_MID: Final = 2**32
# Streams whose gate answer is remembered (see Capture._store_classified).
CLAIM_CACHE_LIMIT: Final = 65_536
# A bug hit by every datagram would otherwise log at the packet rate.
INTERNAL_ERROR_LOG_EVERY: Final = 10_000
_MAX_DATAGRAM: Final = 65_535
# Datagrams taken from one socket per select round, so that several sockets share the
# loop fairly and the time check between rounds stays frequent.
_DRAIN_LIMIT: Final = 256
# Datagrams per recvmmsg call: 64 measured as fast as 256 with a sixteenth of the memory.
BATCH: Final = 64
# The most recent packets of each session kept per tick for the live packet list: the
# browser shows a sample at high rates, never one update per packet
# (docs/architecture.md, Measured constraints).
RECENT_PACKETS: Final = 16
# Linux's SO_MEMINFO (not in Python's socket module): nine u32 counters, the last being
# the datagrams the kernel dropped because the receive buffer was full.
_SO_MEMINFO: Final = 55
_MEMINFO = struct.Struct("9I")
# A receive round (drain every ready socket, then the tick) longer than this is a stall:
# at 160k datagrams/s a 64 MiB socket buffer holds about 0.4 s of 128-byte datagrams.
STALL_NS: Final = 100_000_000
STALL_LOG_EVERY_NS: Final = 10_000_000_000
# A session counts as active (health page, metrics) this long after its last datagram;
# then its delta is let go, at the first tick after each PRUNE_SECONDS.
ACTIVE_SECONDS: Final = 60
PRUNE_SECONDS: Final = 10
# At most this share of the loop's time goes to ticks: with thousands of open files a
# tick (flush every buffer, hand every session on) takes milliseconds, and the next one
# then waits longer than tick_interval, so the cost per datagram stays bounded.
TICK_SHARE: Final = 0.1

# Time per receive round for opening new sessions' files at once; past it they are
# deferred (receiver.store: thousands of sessions starting together would otherwise hold
# the loop for seconds, 0.2 ms each).
OPEN_BUDGET_NS: Final = 1_000_000
# Time for deferred opens after a round that emptied the sockets, and after one that
# found nothing to receive (never unbounded: a burst of thousands of sessions would hold
# the loop for seconds when the traffic resumes).
OPEN_SLACK_NS: Final = 4_000_000
OPEN_IDLE_NS: Final = 10_000_000

# The pause after a short receive round (see Receiver._receive): at 150,000 datagrams/s
# about 40 datagrams gather meanwhile.
PACE_SECONDS: Final = 0.00025

_LAST_NS: Final = 2**63 - 1
# The C path's codes of the drop reasons (receiver/_fastpath.c).
_REASON_CODES: Final[dict[str, int]] = {reason: code for code, reason in enumerate(DROP_REASONS, 1)}

StreamKey = tuple[str, int, int]  # router address, mid (raw 32 bits), sid


class SessionDelta:
    """What one claimed session received since the last snapshot.

    The capture keeps one per session while the session is active: the C path is bound to
    it, and at each tick the ones with traffic are handed on in the snapshot and replaced
    by their :meth:`successor` (receiver._fastpath hand_over), so a tick costs a little per
    session that had traffic and never a rebinding of every session through Python.
    """

    __slots__ = (
        "bytes",
        "case_pk",
        "first_ns",
        "intercept_pk",
        "last_ns",
        "liid",
        "packets",
        "recent",
        "router_id",
        "store_key",
        "stored",
        "watched",
    )

    def __init__(
        self,
        router_id: int,
        intercept_pk: int,
        case_pk: int,
        liid: str,
        time_ns: int,
        store_key: SessionKey,
        watched: bool = True,
    ) -> None:
        self.router_id = router_id
        # Built once per session and tick rather than once per stored packet.
        self.store_key = store_key
        self.intercept_pk = intercept_pk
        self.case_pk = case_pk
        self.liid = liid
        self.packets = 0
        self.bytes = 0
        self.stored = 0
        self.first_ns = time_ns
        self.last_ns = time_ns
        # Stored packets only (nothing of an intercept without content goes to the live
        # view), as received: they are decoded for display off the capture thread. Kept
        # only while a browser watches the session (receiver.watch).
        self.recent: deque[tuple[int, bytes]] = deque(maxlen=RECENT_PACKETS)
        self.watched = watched

    def successor(self) -> SessionDelta:
        """An empty delta continuing this session after a tick. Its first and last times
        are this one's last packet's: a lower bound for what comes next."""
        return SessionDelta(
            self.router_id,
            self.intercept_pk,
            self.case_pk,
            self.liid,
            self.last_ns,
            self.store_key,
            self.watched,
        )

    def copy(self) -> SessionDelta:
        """An independent copy: a snapshot's deltas are shared by every tick hook, and
        each hook that accumulates must merge into its own."""
        twin = SessionDelta(
            self.router_id,
            self.intercept_pk,
            self.case_pk,
            self.liid,
            self.first_ns,
            self.store_key,
            self.watched,
        )
        twin.merge(self)
        return twin

    def merge(self, later: SessionDelta) -> None:
        """Add a later delta of the same session (kept while a database write fails)."""
        self.packets += later.packets
        self.bytes += later.bytes
        self.stored += later.stored
        self.last_ns = later.last_ns
        # The claim may have moved to another intercept (records edited): the latest wins.
        self.intercept_pk = later.intercept_pk
        self.case_pk = later.case_pk
        self.liid = later.liid
        self.store_key = later.store_key
        self.recent.extend(later.recent)


def aggregate_key(source: str) -> StreamKey:
    """The key of ``source``'s aggregate row: its streams past the per-source limit."""
    return (source, AGGREGATE_MID, 0)


def admit_unclaimed(
    table: Collection[StreamKey],
    per_source: dict[str, int],
    key: StreamKey,
    limit: int,
) -> StreamKey | None:
    """The key under which a datagram of unclaimed stream ``key`` is counted in ``table``
    (at most ``limit`` rows): its own row if it has one, or if its source has fewer than
    UNCLAIMED_STREAMS_PER_SOURCE rows and the table is below nine tenths of ``limit``;
    else the source's aggregate row. The last tenth is kept for aggregate rows and for
    the first stream of a source not seen yet, so a new router's stream is listed however
    much junk came before. None when not even that fits (the caller counts it as
    overflow). Counts a new row of the source in ``per_source``; the caller adds the row."""
    if key in table:
        return key
    source, mid, _ = key
    if mid != AGGREGATE_MID:
        streams = per_source.get(source, 0)
        if (streams < UNCLAIMED_STREAMS_PER_SOURCE and len(table) < limit - limit // 10) or (
            streams == 0 and len(table) < limit
        ):
            per_source[source] = streams + 1
            return key
        key = aggregate_key(source)
        if key in table:
            return key
    return key if len(table) < limit else None


@dataclass(slots=True)
class Unclaimed:
    """A (router, mid, sid) whose packets were dropped, for LI administrators to map."""

    reason: str
    count: int
    first_ns: int
    last_ns: int

    def copy(self) -> Unclaimed:
        return Unclaimed(self.reason, self.count, self.first_ns, self.last_ns)

    def merge(self, later: Unclaimed) -> None:
        self.count += later.count
        self.last_ns = later.last_ns
        self.reason = later.reason


@dataclass(slots=True)
class ListenerCounters:
    """Totals since start for everything this capture was fed."""

    datagrams: int = 0
    bytes: int = 0
    malformed: int = 0
    # Claimed, but an inner packet with no pcap link type (neither IP nor PPP): counted,
    # never stored, since tshark could not show it.
    unstorable: int = 0
    internal_error: int = 0
    # Datagrams of unclaimed streams not listed anywhere (every table full), and those
    # counted in a source's aggregate row rather than their stream's own.
    unclaimed_overflow: int = 0
    unclaimed_aggregated: int = 0
    # Receive rounds longer than STALL_NS, and the longest round so far (live capture).
    stalls: int = 0
    longest_round_ns: int = 0
    drops: Counter[str] = field(default_factory=Counter)

    def copy(self) -> ListenerCounters:
        return ListenerCounters(
            datagrams=self.datagrams,
            bytes=self.bytes,
            malformed=self.malformed,
            unstorable=self.unstorable,
            internal_error=self.internal_error,
            unclaimed_overflow=self.unclaimed_overflow,
            unclaimed_aggregated=self.unclaimed_aggregated,
            stalls=self.stalls,
            longest_round_ns=self.longest_round_ns,
            drops=Counter(self.drops),
        )


class GarbageCollectorPauses:
    """Time the garbage collector stops the process, from ``gc.callbacks`` (called around
    every collection, in whichever thread triggered it), so that a stall of the receive
    loop can say whether the collector caused it."""

    def __init__(self) -> None:
        self.total_ns = 0
        self.longest_ns = 0
        self._started_ns = 0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started_ns = time.perf_counter_ns()
            return
        pause = time.perf_counter_ns() - self._started_ns
        self.total_ns += pause
        if pause > self.longest_ns:
            self.longest_ns = pause

    def __enter__(self) -> GarbageCollectorPauses:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


@dataclass(slots=True)
class SocketCounters:
    """One listening socket: what it received since start and what the kernel says."""

    address: str  # HOST:PORT, IPv6 in brackets
    datagrams: int = 0
    bytes: int = 0
    rcvbuf: int = 0
    # Datagrams the kernel dropped because the receive buffer was full (None: unknown).
    kernel_drops: int | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the capture hands out at a tick: session deltas and unclaimed streams since the
    previous snapshot (``previous_ns``), files closed since then, files still open, and
    copies of the running totals. Owned by the receiver of it once made, so another thread
    may read it freely."""

    time_ns: int
    previous_ns: int
    sessions: dict[StreamKey, SessionDelta]
    closed_files: list[ClosedFile]
    open_files: list[ClosedFile]
    listener: ListenerCounters
    sockets: list[SocketCounters]
    unclaimed: dict[StreamKey, Unclaimed]
    store_errors: Counter[str]
    final: bool = False
    # Files closed early because the store's open-file bound was reached.
    bound_closes: int = 0
    # Sessions with a datagram in the last ACTIVE_SECONDS (receive time).
    active_sessions: int = 0
    # The longest receive round since the previous snapshot (ListenerCounters keeps the
    # longest since start).
    round_ns: int = 0


TickHook = Callable[[Snapshot], None]


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def open_socket(host: str, port: int, rcvbuf: int) -> tuple[socket.socket, str | None]:
    """A bound UDP socket with SO_REUSEPORT and the asked receive buffer, and a warning
    when the kernel granted less buffer than asked."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        # Several receiver processes may share one port; the kernel spreads flows.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    # Linux doubles the value set (bookkeeping overhead) and caps it at net.core.rmem_max.
    effective = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    warning = None
    if effective < rcvbuf:
        bound_host, bound_port = sock.getsockname()[:2]
        where = format_address(bound_host, bound_port)
        warning = (
            f"receive buffer on {where} is {effective} bytes, not the {rcvbuf} asked: "
            f"the kernel caps it at net.core.rmem_max (raise it with "
            f"`sysctl -w net.core.rmem_max={rcvbuf}`), or bursts will be dropped"
        )
    return sock, warning


def _enable_timestamps(sock: socket.socket) -> bool:
    """Ask for the kernel's receive time of each datagram (SO_TIMESTAMPNS, Linux's value;
    Python does not name it): the moment it reached the host, as tcpdump records it."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, 35, 1)
    except OSError:
        return False
    return True


def kernel_drops(sock: socket.socket) -> int | None:
    """Datagrams the kernel dropped on this socket since it opened (Linux SO_MEMINFO), or
    None where the kernel does not say."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, _SO_MEMINFO, _MEMINFO.size)
    except OSError:
        return None
    if len(raw) < _MEMINFO.size:
        return None
    drops: int = _MEMINFO.unpack(raw)[8]
    return drops


class Capture:
    """The per-datagram pipeline: decode, gate, count, store; and the periodic snapshots.

    Not thread-safe except as :class:`Receiver` documents: one thread feeds it.
    """

    def __init__(
        self,
        gate: Gate,
        store: PcapStore,
        *,
        tick_interval: float = 0.25,
        on_tick: Sequence[TickHook] = (),
        unclaimed_limit: int = UNCLAIMED_LIMIT,
        start_ns: int | None = None,
    ) -> None:
        self.gate = gate
        self.store = store
        self.counters = ListenerCounters()
        # Every unclaimed stream since start (bounded), for callers without a hook.
        self.unclaimed: dict[StreamKey, Unclaimed] = {}
        self.warnings: list[str] = []
        # Every file closed by the last shutdown, for callers without a hook.
        self.final_closed: list[ClosedFile] = []
        #: What browsers watch live (assigned from another thread, like :attr:`gate`):
        #: only those sessions' latest packets are kept. None: every session's.
        self.watch: LiveWatch | None = None
        # The watch the sessions' `watched` flags were set by.
        self._watch_applied: LiveWatch | None = None
        # One delta per active session (see SessionDelta), until it is idle for
        # ACTIVE_SECONDS: then it is let go at a tick.
        self._sessions: dict[StreamKey, SessionDelta] = {}
        self._next_prune_ns = 0
        # The longest receive round since the last tick (Receiver._receive).
        self._round_ns = 0
        self._claims: dict[StreamKey, tuple[int, int, Claim | str]] = {}
        self._claims_gate: Gate | None = None
        self._unclaimed_since_tick: dict[StreamKey, Unclaimed] = {}
        # Rows per source in _unclaimed_since_tick and in unclaimed (admit_unclaimed).
        self._unclaimed_sources: dict[str, int] = {}
        self._unclaimed_total_sources: dict[str, int] = {}
        # When a full unclaimed table was last logged, and the counts then.
        self._unclaimed_logged: tuple[float, int, int] = (0.0, 0, 0)
        # The gate's answer for the last datagram _store_classified dropped, for the C
        # path to take the stream's (or source's) next ones (Receiver._native_drainer).
        self.last_drop: tuple[str, int, int] | None = None
        self._tick_ns = int(tick_interval * 1e9)
        self._on_tick = tuple(on_tick)
        self._unclaimed_limit = unclaimed_limit
        # Receive time of the start: wall clock live, the first packet's time offline.
        self._previous_tick_ns = time.time_ns() if start_ns is None else start_ns
        # Bumped when the C path's bindings must all go (Receiver._native_drainer): what
        # browsers watch changed (bindings say whether to keep a sample), or a failure.
        self._bindings_epoch = 0

    def handle_batch(
        self,
        payloads: Sequence[bytes | memoryview],
        sources: Sequence[str],
        times: Sequence[int],
    ) -> None:
        """:meth:`handle` for each datagram in turn, with the same result (a property test
        checks it), cheaper: the receive loop's path, one call per ``recvmmsg`` batch.

        Consecutive datagrams of one stream (the usual case: a router mirrors a busy
        subscriber) share the stream's gate answer and session delta, so such a datagram
        costs its decode, its counts and its store write only. The gate is read once per
        batch: one replaced by another thread applies from the next batch, well inside
        the 2 s the records allow.

        Payloads may be views into the receive buffer, valid only during the call: the
        store copies what it writes, and the few packets kept for the live view are
        copied at the end.
        """
        counters = self.counters
        classify = classify_datagram
        write = self.store.write
        linktypes = LINKTYPE_FOR_KIND
        store_classified = self._store_classified
        # The stream of the previous datagram while its claim holds, and its session
        # (None: the stream is not stored).
        current_source = ""
        current_mid = current_sid = -1
        low = high = 0
        delta: SessionDelta | None = None
        touched: list[SessionDelta] = []
        received_bytes = 0
        try:
            for payload, source, time_ns in zip(payloads, sources, times, strict=True):
                size = len(payload)
                received_bytes += size
                try:
                    mid, sid, inner = classify(payload)
                    if (
                        delta is not None
                        and low <= time_ns < high
                        and sid == current_sid
                        and mid == current_mid
                        and source == current_source
                    ):
                        delta.packets += 1
                        delta.bytes += size
                        delta.last_ns = time_ns
                        linktype = linktypes.get(inner)
                        if linktype is None:
                            counters.unstorable += 1
                            continue
                        # Counted as stored only once written (no file: a store error).
                        if write(delta.store_key, time_ns, payload[8:], linktype):
                            delta.stored += 1
                            if delta.watched:
                                # A view at worst: made bytes before returning (finally).
                                delta.recent.append((time_ns, payload))  # type: ignore[arg-type]
                        continue
                    current_source, current_mid, current_sid = source, mid, sid
                    delta, low, high = store_classified(payload, (source, mid, sid), inner, time_ns)
                    if delta is not None and delta not in touched:
                        touched.append(delta)
                except DecodeError:
                    counters.malformed += 1
                    delta = None
                except Exception:
                    delta = None
                    self._internal_error(source)
        finally:
            counters.datagrams += len(payloads)
            counters.bytes += received_bytes
            for session in touched:
                recent = session.recent
                for index, (time_ns, kept) in enumerate(recent):
                    if type(kept) is not bytes:  # a view into the receive buffer
                        recent[index] = (time_ns, bytes(kept))

    def handle(
        self, payload: bytes, source: str, time_ns: int
    ) -> tuple[SessionDelta, int, int, int] | None:
        """One datagram from ``source`` received at ``time_ns``. Never raises. When the
        packet was stored: its session delta, the span of receive times its gate answer
        holds for and its link type, with which the C path takes the stream's next
        datagrams (Receiver._native_drainer)."""
        counters = self.counters
        counters.datagrams += 1
        counters.bytes += len(payload)
        try:
            mid, sid, inner = classify_datagram(payload)
            delta, low, high = self._store_classified(payload, (source, mid, sid), inner, time_ns)
        except DecodeError:
            counters.malformed += 1
            return None
        except Exception:
            self._internal_error(source)
            return None
        linktype = LINKTYPE_FOR_KIND.get(inner)
        if delta is None or linktype is None:
            return None
        return delta, low, high, linktype

    def _internal_error(self, source: str) -> None:
        # A bug, not bad input: count it, say so now and then, and keep receiving.
        counters = self.counters
        counters.internal_error += 1
        if counters.internal_error % INTERNAL_ERROR_LOG_EVERY == 1:
            logger.exception(
                "internal error handling a datagram from %s (%d so far)",
                source,
                counters.internal_error,
            )

    def _store_classified(
        self, payload: bytes | memoryview, key: StreamKey, inner: str, time_ns: int
    ) -> tuple[SessionDelta | None, int, int]:
        """Gate, count and store a decoded datagram of stream ``key``. Returns the
        session delta when the stream's packets are stored, and the span of receive times
        over which that answer holds."""
        source, mid, sid = key
        # The gate's answer per stream, kept until the next warrant boundary or a new gate.
        gate = self.gate
        if gate is not self._claims_gate:
            self._claims.clear()
            self._claims_gate = gate
        cached = self._claims.get(key)
        if cached is not None and cached[0] <= time_ns < cached[1]:
            low, high, claim = cached
        else:
            claim, low, high = gate.claim_span(source, mid, sid, time_ns)
            if len(self._claims) >= CLAIM_CACHE_LIMIT:
                self._claims.clear()  # junk from many sources: bounded, not grown
            self._claims[key] = (low, high, claim)
        if isinstance(claim, str):
            self.counters.drops[claim] += 1
            self._unclaimed(key, claim, time_ns)
            self.last_drop = (claim, low, high)
            return None, low, high
        router, intercept = claim
        delta = self._sessions.get(key)
        if delta is None or delta.intercept_pk != intercept.intercept_id_pk:
            watch = self.watch
            fresh = SessionDelta(
                router.router_id,
                intercept.intercept_id_pk,
                intercept.case_id,
                intercept.liid,
                time_ns,
                # The registered address, also when a dual-stack socket maps it.
                SessionKey(intercept.liid, router.address, mid, sid),
                watch is None
                or watch.covers(
                    router.router_id, mid, sid, intercept.intercept_id_pk, intercept.case_id
                ),
            )
            if delta is not None:  # the records changed hands mid-tick: keep the counts
                fresh.packets, fresh.bytes, fresh.stored = delta.packets, delta.bytes, delta.stored
                fresh.first_ns = delta.first_ns
            delta = self._sessions[key] = fresh
        delta.packets += 1
        delta.bytes += len(payload)
        delta.last_ns = time_ns
        if not intercept.keep_content:
            return None, low, high
        linktype = LINKTYPE_FOR_KIND.get(inner)
        if linktype is None:
            self.counters.unstorable += 1
        elif self.store.write(delta.store_key, time_ns, payload[8:], linktype):
            delta.stored += 1
            if delta.watched:
                # A view from handle_batch is made bytes before that returns.
                delta.recent.append((time_ns, payload))  # type: ignore[arg-type]
        return delta, low, high

    def _unclaimed(self, key: StreamKey, reason: str, time_ns: int) -> None:
        entry = self._unclaimed_since_tick.get(key)
        if entry is not None:
            entry.count += 1
            entry.last_ns = time_ns
            entry.reason = reason
        else:
            self._unclaimed_count(key, reason, 1, time_ns, time_ns)

    def _unclaimed_count(
        self, key: StreamKey, reason: str, count: int, first_ns: int, last_ns: int
    ) -> None:
        """Count ``count`` datagrams of unclaimed stream ``key`` (or of a source's
        aggregate) in this tick's table: bounded, per source too (admit_unclaimed), so
        junk can neither grow memory nor crowd out the streams of other sources."""
        table = self._unclaimed_since_tick
        counters = self.counters
        admitted = admit_unclaimed(table, self._unclaimed_sources, key, UNCLAIMED_PER_TICK)
        if admitted is None:
            counters.unclaimed_overflow += count
            return
        if admitted[1] == AGGREGATE_MID:
            counters.unclaimed_aggregated += count
        entry = table.get(admitted)
        if entry is None:
            table[admitted] = Unclaimed(reason, count, first_ns, last_ns)
        else:
            entry.count += count
            entry.last_ns = last_ns
            entry.reason = reason

    def _log_unclaimed_limits(self) -> None:
        """Say (at most once a minute) that unclaimed streams were aggregated or not
        listed since the last time: never silently."""
        counters = self.counters
        logged_at, aggregated, overflow = self._unclaimed_logged
        if (counters.unclaimed_aggregated, counters.unclaimed_overflow) == (aggregated, overflow):
            return
        now = time.monotonic()
        if logged_at and now - logged_at < 60:
            return
        self._unclaimed_logged = (now, counters.unclaimed_aggregated, counters.unclaimed_overflow)
        logger.warning(
            "unclaimed streams: %d more datagrams counted in a source's aggregate row (a "
            "source sent more than %d distinct streams) and %d more not listed at all (the "
            "unclaimed table is full) since the last report; totals %d and %d",
            counters.unclaimed_aggregated - aggregated,
            UNCLAIMED_STREAMS_PER_SOURCE,
            counters.unclaimed_overflow - overflow,
            counters.unclaimed_aggregated,
            counters.unclaimed_overflow,
        )

    def socket_counters(self) -> list[SocketCounters]:
        """Per-socket counters; none for a capture fed from a file."""
        return []

    def tick(
        self, now_ns: int, *, final: bool = False, closed: list[ClosedFile] | None = None
    ) -> None:
        """Periodic work: flush due buffers, close files past their age, hand a snapshot to
        the hooks. ``now_ns`` is receive time (wall clock live, capture time offline)."""
        store = self.store
        try:
            if not final:
                store.flush_due(time.monotonic())
                store.close_expired(now_ns)
        except Exception:
            logger.exception("store maintenance failed; capture goes on")
        handed, successors = self._take_sessions(now_ns, final)
        unclaimed, self._unclaimed_since_tick = self._unclaimed_since_tick, {}
        self._unclaimed_sources = {}
        total = self.unclaimed
        for key, entry in unclaimed.items():
            admitted = admit_unclaimed(
                total, self._unclaimed_total_sources, key, self._unclaimed_limit
            )
            if admitted is None:
                continue  # the hooks have it; this table is for callers without one
            known = total.get(admitted)
            if known is not None:
                known.merge(entry)
            else:
                total[admitted] = entry.copy()
        self._log_unclaimed_limits()
        self._hand_over(successors)
        round_ns, self._round_ns = self._round_ns, 0
        if not self._on_tick:
            return
        snapshot = Snapshot(
            time_ns=now_ns,
            previous_ns=self._previous_tick_ns,
            sessions=handed,
            closed_files=store.take_closed() if closed is None else closed,
            open_files=store.open_files(),
            listener=self.counters.copy(),
            sockets=self.socket_counters(),
            unclaimed=unclaimed,
            store_errors=Counter(store.store_errors),
            final=final,
            bound_closes=store.bound_closes,
            active_sessions=len(self._sessions),
            round_ns=round_ns,
        )
        self._previous_tick_ns = now_ns
        for hook in self._on_tick:
            try:
                hook(snapshot)
            except Exception:
                logger.exception("tick hook %r failed; capture goes on", hook)

    def _take_sessions(
        self, now_ns: int, final: bool
    ) -> tuple[dict[StreamKey, SessionDelta], dict[SessionDelta, SessionDelta | None]]:
        """The deltas of sessions that had traffic since the last tick, each replaced by
        its successor; and the replacements (None: a session idle for ACTIVE_SECONDS, let
        go) for the C path. A little work per session that had traffic, and once every
        PRUNE_SECONDS a pass over the idle ones."""
        sessions = self._sessions
        watch = self.watch
        if watch != self._watch_applied:
            # What browsers watch changed (rare: a page opened or closed): the sessions
            # say anew whether to keep a sample, and the C path rebinds with that. By
            # value: the registry is read twice a second into a new, equal object, and
            # rebinding every session for nothing cost a datagram per session through
            # Python each time (a large share of the loop at 10,000 sessions).
            self._watch_applied = watch
            for (_, mid, sid), delta in sessions.items():
                delta.watched = watch is None or watch.covers(
                    delta.router_id, mid, sid, delta.intercept_pk, delta.case_pk
                )
            self._bindings_epoch += 1
        handed: dict[StreamKey, SessionDelta] = {}
        successors: dict[SessionDelta, SessionDelta | None] = {}
        # Sessions whose packets wait in memory for their files (a burst of new
        # sessions): counted once the files exist and the packets are written, so the
        # counters never run ahead of the files; their deltas go on adding up meanwhile.
        waiting = self.store.pending_sessions() if not final else frozenset()
        for key, delta in sessions.items():
            if delta.packets and delta.store_key not in waiting:
                handed[key] = delta
                # Same keys, new values: safe while iterating.
                successors[delta] = sessions[key] = delta.successor()
        if final:
            sessions.clear()
        elif now_ns >= self._next_prune_ns:
            self._next_prune_ns = now_ns + PRUNE_SECONDS * 1_000_000_000
            idle_before = now_ns - ACTIVE_SECONDS * 1_000_000_000
            # Not one handed on just now: C would stay bound to its (let go) successor.
            for key in [
                key
                for key, delta in sessions.items()
                if delta.last_ns < idle_before and key not in handed
            ]:
                successors[sessions.pop(key)] = None
        return handed, successors

    def _hand_over(self, successors: dict[SessionDelta, SessionDelta | None]) -> None:
        """Where the capture's sessions are bound elsewhere (the C path), bind them to
        their successors."""

    def finish(self, now_ns: int) -> list[ClosedFile]:
        """Close and hash every file and hand the final snapshot to the hooks."""
        self.final_closed = self.store.close_all()
        self.tick(now_ns, final=True, closed=self.final_closed)
        return self.final_closed


class Receiver(Capture):
    """Receives jmirror datagrams on one or more UDP addresses and stores claimed ones.

    Construct, then :meth:`run` in the thread that should do the capture; :meth:`stop`
    from any thread (or a signal handler) makes :meth:`run` close every file and return.
    Assigning :attr:`gate` from another thread is safe: the loop reads the reference once
    per datagram and a Gate never changes.
    """

    def __init__(
        self,
        listen: Sequence[tuple[str, int]],
        gate: Gate,
        store: PcapStore,
        *,
        rcvbuf: int = DEFAULT_RCVBUF,
        tick_interval: float = 0.25,
        on_tick: Sequence[TickHook] = (),
        unclaimed_limit: int = UNCLAIMED_LIMIT,
        stop_event: threading.Event | None = None,
        native: bool = True,
    ) -> None:
        if not listen:
            raise ValueError("a receiver needs at least one address to listen on")
        super().__init__(
            gate,
            store,
            tick_interval=tick_interval,
            on_tick=on_tick,
            unclaimed_limit=unclaimed_limit,
        )
        # Shared with the caller when given, so one event can stop several threads.
        self._stop = stop_event if stop_event is not None else threading.Event()
        #: Whether the sockets are drained by receiver._fastpath (C) rather than Python.
        self.native = native and FastReceiver is not None
        self._natives: list[FastReceiver] = []
        # Source addresses by the C path's raw keys (remember_source: bounded).
        self._native_sources: dict[bytes | int, str] = {}
        self.sockets: list[socket.socket] = []
        self._socket_counters: list[SocketCounters] = []
        self._addresses: list[tuple[str, int]] = []
        try:
            for host, port in listen:
                sock, warning = open_socket(host, port, rcvbuf)
                self.sockets.append(sock)
                bound_host, bound_port = sock.getsockname()[:2]
                self._addresses.append((bound_host, bound_port))
                self._socket_counters.append(
                    SocketCounters(
                        address=format_address(bound_host, bound_port),
                        rcvbuf=sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                    )
                )
                if warning:
                    self.warnings.append(warning)
        except OSError:
            self.close_sockets()
            raise

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) pairs; useful after binding port 0."""
        return list(self._addresses)

    def stop(self) -> None:
        """Ask :meth:`run` to finish: it returns within about ``tick_interval`` plus the
        time to flush and hash the open files."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def close_sockets(self) -> None:
        for sock in self.sockets:
            sock.close()

    def _drainer(self, sock: socket.socket) -> Callable[[], None]:
        """A function that takes what is waiting on ``sock`` (up to a bound, so several
        sockets share the loop fairly) through :meth:`handle`."""
        handle = self.handle
        time_ns = time.time_ns
        counters = self._socket_counters[self.sockets.index(sock)]
        if self.native:
            return self._native_drainer(sock, counters)
        if BatchReceiver.available():
            # Kernel receive times (SO_TIMESTAMPNS): the moment each datagram reached the
            # host, as tcpdump records it, whatever the loop was doing then.
            batch = BatchReceiver(sock, batch=BATCH, max_datagram=_MAX_DATAGRAM, timestamps=True)
            receive = batch.receive_timed
            handle_batch = self.handle_batch

            def drain_batches() -> None:
                for _ in range(_DRAIN_LIMIT // BATCH):
                    try:
                        # Views into the batch buffer: handle_batch copies what it keeps.
                        payloads, sources, times = receive(views=True)
                    except OSError as error:
                        logger.debug("receive error: %s", error)
                        return
                    if not payloads:
                        return
                    before = self.counters.bytes
                    handle_batch(payloads, sources, times)
                    counters.datagrams += len(payloads)
                    counters.bytes += self.counters.bytes - before

            return drain_batches
        buffer = bytearray(_MAX_DATAGRAM)
        view = memoryview(buffer)
        recv = sock.recvfrom_into

        def drain_one_by_one() -> None:
            received = 0
            received_bytes = 0
            for _ in range(_DRAIN_LIMIT):
                try:
                    size, source = recv(buffer)
                except BlockingIOError:
                    break
                except OSError as error:
                    logger.debug("receive error: %s", error)
                    break
                received += 1
                received_bytes += size
                handle(bytes(view[:size]), source[0], time_ns())
            counters.datagrams += received
            counters.bytes += received_bytes

        return drain_one_by_one

    def _native_drainer(self, sock: socket.socket, counters: SocketCounters) -> Callable[[], None]:
        """The drain through receiver._fastpath: C receives each batch and stores the
        datagrams of streams bound to it; every other datagram comes back here, one at a
        time and in order, through :meth:`Capture.handle`, and binds its stream when it
        was stored. Bindings hold session deltas and open files; they outlive ticks (the
        deltas are replaced in place: :meth:`_hand_over`) and files opening or closing
        (C hands a closed file's stream back), and are cleared when the gate or what
        browsers watch changes."""
        store = self.store
        native = FastReceiver(
            sock.fileno(),
            sock.family,
            BATCH,
            _MAX_DATAGRAM,
            store.rotate_bytes,
            store.buffer_bytes,
            timestamps=_enable_timestamps(sock),
        )
        self._natives.append(native)
        handle = self.handle
        listener = self.counters
        addresses = self._native_sources
        # What the bindings were made under: gate, bindings epoch.
        bound: list[object] = [None, -1]

        def current() -> bool:
            return bound[0] is self.gate and bound[1] == self._bindings_epoch

        def rebase() -> None:
            gate = self.gate
            new_gate = bound[0] is not gate
            bound[:] = [gate, self._bindings_epoch]
            try:
                # C may fold a source's unclaimed streams into its aggregate row only
                # knowing every stream this tick's table lists apart: from empty, and
                # with no other socket's receiver adding to it.
                native.clear(len(self._natives) == 1 and not self._unclaimed_since_tick)
            except Exception:  # handing the live sample on failed (no memory): counted
                self._internal_error("the C receive path")
            if new_gate:
                # From now on C drops what this gate drops (receiver/_fastpath.c); also
                # when clear() failed, or C would go on dropping by the old gate's ids.
                try:
                    native.set_gate(gate.mirror_ids, UNCLAIMED_STREAMS_PER_SOURCE)
                except Exception:  # no memory: C decides nothing until the next gate
                    self._internal_error("the C receive path")

        def drain_native() -> None:
            for _ in range(_DRAIN_LIMIT // BATCH):
                try:
                    count = native.receive()
                except OSError as error:
                    logger.debug("receive error: %s", error)
                    break
                if not count:
                    break
                index = 0
                while True:
                    if not current():
                        rebase()
                    try:
                        index = native.store(index)
                    except Exception:
                        # A bug or no memory: what C stored stays; Python takes the rest.
                        index = native.failed_at
                        rebase()
                        self._internal_error("the C receive path")
                    if index >= count:
                        break
                    if native.pending:
                        # What C dropped comes first: the unclaimed streams stay in order.
                        self._take_dropped(native)
                    try:
                        payload, key, time_ns = native.datagram(index)
                    except ValueError:  # truncated: dropped and counted by C
                        index += 1
                        continue
                    source = addresses.get(key) or remember_source(addresses, key)
                    found = handle(payload, source, time_ns)
                    verdict = self.last_drop
                    if verdict is not None:
                        self.last_drop = None
                        # Dropped as unclaimed: C drops the source's or stream's next ones.
                        if not current():
                            rebase()
                        reason, low, high = verdict
                        try:
                            native.refuse(index, _REASON_CODES[reason], low, min(high, _LAST_NS))
                        except Exception:  # a bug: the stream stays in Python
                            self._internal_error(source)
                    elif found is not None:
                        if not current():
                            rebase()
                        delta, low, high, linktype = found
                        file = store.open_file(delta.store_key, linktype)
                        if file is not None:
                            try:
                                # A span open to the end of time ends at 2**63, one past
                                # C's largest time; no receive time reaches either.
                                native.bind(
                                    index,
                                    linktype,
                                    low,
                                    min(high, _LAST_NS),
                                    delta,
                                    file,
                                    delta.watched,
                                )
                            except Exception:  # no memory: the stream stays in Python
                                self._internal_error(source)
                    index += 1
            received, received_bytes, fast, fast_bytes = native.take_counts()
            listener.datagrams += fast
            listener.bytes += fast_bytes
            counters.datagrams += received
            counters.bytes += received_bytes

        return drain_native

    def tick(
        self, now_ns: int, *, final: bool = False, closed: list[ClosedFile] | None = None
    ) -> None:
        # What the C path dropped joins the counters and this tick's unclaimed streams.
        for native in self._natives:
            if native.pending:
                self._take_dropped(native)
        if not final:
            # Every packet this snapshot counts as stored is handed to the kernel first,
            # so the counters in the database never run ahead of the files: after a
            # kill -9 they can only lag, and the next start raises them to what the files
            # hold (receiver.reconcile). At most one write per open file and tick.
            try:
                self.store.flush()
            except Exception:
                logger.exception("store flush failed; capture goes on")
        super().tick(now_ns, final=final, closed=closed)

    def _hand_over(self, successors: dict[SessionDelta, SessionDelta | None]) -> None:
        # C hands each bound stream's latest datagrams to the delta the snapshot takes,
        # then binds the stream to its successor (None: let go). It forgets the sources'
        # verdicts too, as this tick's unclaimed table is new (see rebase): complete when
        # only this socket's receiver feeds it.
        complete = len(self._natives) == 1
        for native in self._natives:
            try:
                native.hand_over(successors, complete)
            except Exception:
                # No memory: bindings to deltas already handed on would count into them,
                # so every binding goes and the streams rebind through Python.
                self._internal_error("the C receive path")
                self._bindings_epoch += 1
                try:
                    native.clear()
                except Exception:
                    self._internal_error("the C receive path")

    def _take_dropped(self, native: FastReceiver) -> None:
        """Count what C dropped since the last call as :meth:`Capture.handle` would have."""
        try:
            malformed, unknown, no_intercept, outside, streams = native.take_dropped()
        except Exception:  # no memory: kept in C for the next call
            self._internal_error("the C receive path")
            return
        counters = self.counters
        counters.malformed += malformed
        drops = counters.drops
        for reason, dropped in (
            (UNKNOWN_ROUTER, unknown),
            (NO_INTERCEPT, no_intercept),
            (OUTSIDE_WINDOW, outside),
        ):
            if dropped:
                drops[reason] += dropped
        addresses = self._native_sources
        table = self._unclaimed_since_tick
        for key, mid, sid, aggregate, code, count, first_ns, last_ns in streams:
            source = addresses.get(key) or remember_source(addresses, key)
            stream = aggregate_key(source) if aggregate else (source, mid, sid)
            reason = DROP_REASONS[code - 1]
            # An aggregate row counts as aggregated, as each of its datagrams would.
            entry = None if aggregate else table.get(stream)
            if entry is not None:
                entry.count += count
                entry.last_ns = last_ns
                entry.reason = reason
            else:
                self._unclaimed_count(stream, reason, count, first_ns, last_ns)

    def socket_counters(self) -> list[SocketCounters]:
        for sock, counters in zip(self.sockets, self._socket_counters, strict=True):
            if sock.fileno() >= 0:
                counters.kernel_drops = kernel_drops(sock)
        return [
            SocketCounters(each.address, each.datagrams, each.bytes, each.rcvbuf, each.kernel_drops)
            for each in self._socket_counters
        ]

    def run(self) -> None:
        """Receive until :meth:`stop`; then close every file, hand a final snapshot to the
        hooks and close the sockets. Bad datagrams never raise out of here."""
        try:
            self._receive()
        finally:
            # Flush, close and hash every file now: after a SIGTERM nothing may stay open.
            self.finish(time.time_ns())
            self.close_sockets()

    def _receive(self) -> None:
        # Non-blocking sockets drained until empty, and select() only when all are: a
        # socket with a timeout would cost a poll() before every receive. Where Linux's
        # recvmmsg is reachable, up to BATCH datagrams come per system call
        # (receiver.batch_receive: 1.6 against 2.4 us per 128-byte datagram to receive).
        for sock in self.sockets:
            sock.setblocking(False)
        drains = [self._drainer(sock) for sock in self.sockets]
        ready_drains = dict(zip(self.sockets, drains, strict=True))
        timeout = self._tick_ns / 1e9 / 2
        next_tick = time.time_ns() + self._tick_ns
        stop = self._stop
        counters = self.counters
        monotonic_ns = time.monotonic_ns
        last_stall_log = 0
        store = self.store
        store.open_budget_ns = OPEN_BUDGET_NS
        with GarbageCollectorPauses() as collector:
            while not stop.is_set():
                # With files waiting to be opened, no waiting for datagrams: a quiet
                # moment goes to the files.
                ready, _, _ = select.select(
                    self.sockets, [], [], 0 if store.pending_opens else timeout
                )
                round_start = monotonic_ns()
                gc_before = collector.total_ns
                before = counters.datagrams
                for sock in ready:
                    ready_drains[sock]()
                drained = counters.datagrams - before
                if store.pending_opens:
                    # Files of sessions that started while opens were over budget. While
                    # the sockets had more than a round's worth waiting, draining them
                    # comes first (a file costs a few hundred datagrams' time, and the
                    # socket buffer holds about a second); the slack of a round that
                    # emptied them goes to the files (the pause below included).
                    behind = drained >= _DRAIN_LIMIT * len(ready)
                    store.open_pending(
                        (OPEN_BUDGET_NS // 2 if behind else OPEN_SLACK_NS)
                        if ready
                        else OPEN_IDLE_NS
                    )
                elif 0 < drained < BATCH // 2:
                    # A short round: the loop is ahead of the traffic. Waiting a moment
                    # lets datagrams gather, so that the next system calls, wake-up and
                    # round cost a batch, not a few datagrams, each (the socket buffer
                    # holds far more than this pause brings).
                    time.sleep(PACE_SECONDS)
                store.open_budget_ns = OPEN_BUDGET_NS
                now = time.time_ns()
                if now >= next_tick:
                    tick_start = monotonic_ns()
                    self.tick(now)
                    # A tick's work grows with the open files and active sessions: spaced
                    # out so that it stays within TICK_SHARE of the loop's time.
                    spent = monotonic_ns() - tick_start
                    next_tick = now + max(self._tick_ns, int(spent / TICK_SHARE))
                # A round is normally a millisecond or two; a long one means the kernel
                # buffer filled meanwhile, so say what held it up.
                took = monotonic_ns() - round_start
                if took > self._round_ns:
                    self._round_ns = took
                if took > counters.longest_round_ns:
                    counters.longest_round_ns = took
                if took > STALL_NS:
                    counters.stalls += 1
                    if round_start - last_stall_log > STALL_LOG_EVERY_NS:
                        last_stall_log = round_start
                        logger.warning(
                            "receive loop held up for %d ms (garbage collection: %d ms of it; "
                            "%d such stalls so far); the socket buffer may have overflowed",
                            took // 1_000_000,
                            (collector.total_ns - gc_before) // 1_000_000,
                            counters.stalls,
                        )
