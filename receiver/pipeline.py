"""The per-datagram pipeline: decode -> gate -> count -> store, and the periodic snapshots.

Standard library plus the sans-I/O receiver modules only, no Django, no sockets.
:class:`DatagramPipeline` takes datagrams one at a time (:meth:`~DatagramPipeline.handle`)
or a batch at a time (:meth:`~DatagramPipeline.handle_batch`, same result): it decodes
each (:mod:`receiver.jmirror`), asks the :class:`~receiver.gate.Gate` whom it belongs to,
counts it in its session's :class:`SessionDelta` and writes it to the
:class:`~receiver.store.PcapStore`. At each tick it hands a :class:`Snapshot` (deltas,
unclaimed streams, files, totals) to its hooks, which write the database and feed the
live view in other threads.

Two things feed it: the live receive loop (:class:`receiver.receive_loop.Receiver`, which
holds one and adds the sockets and the C drain) and ``manage.py import_pcap`` (a capture
file), so offline and live packets meet the same gate.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from receiver.contrail import CONTRAIL_MID, ContrailPacket, decode_contrail, evidence_options
from receiver.gate import Claim, Gate
from receiver.jmirror import DecodeError, classify_datagram
from receiver.pcap import enhanced_packet_block
from receiver.store import (
    LINKTYPE_ETHERNET,
    LINKTYPE_FOR_KIND,
    FileFacts,
    PcapStore,
    SessionKey,
)
from receiver.watch import LiveWatch

logger = logging.getLogger(__name__)

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
# Streams whose gate answer is remembered (see DatagramPipeline._store_classified).
CLAIM_CACHE_LIMIT: Final = 65_536
# Distinct Contrail headers whose pcapng options are kept (DatagramPipeline._store_contrail).
EVIDENCE_CACHE_LIMIT: Final = 4096
# A bug hit by every datagram would otherwise log at the packet rate.
INTERNAL_ERROR_LOG_EVERY: Final = 10_000
# The most recent packets of each session kept per tick for the live packet list: the
# browser shows a sample at high rates, never one update per packet
# (docs/architecture.md, Measured constraints).
RECENT_PACKETS: Final = 16
# A session counts as active (health page, metrics) this long after its last datagram;
# then its delta is let go, at the first tick after each PRUNE_SECONDS.
ACTIVE_SECONDS: Final = 60
PRUNE_SECONDS: Final = 10

StreamKey = tuple[str, int, int]  # router address, mid (raw 32 bits), sid
# A Contrail stream's key is (vRouter address, CONTRAIL_MID, analyzer port).

WRONG_CAPTURE_HOST: Final = "wrong_capture_host"
"""Drop reason of a Contrail frame claimed by an intercept whose capture host TLV names
another address than the registered vRouter it came from: counted, never stored, since
the frame's origin is in doubt."""


class SessionDelta:
    """What one claimed session received since the last snapshot.

    The pipeline keeps one per session while the session is active: the C path is bound to
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
    """Totals since start for everything this pipeline was fed."""

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
    """What the pipeline hands out at a tick: session deltas and unclaimed streams since the
    previous snapshot (``previous_ns``), files closed since then, files still open, and
    copies of the running totals. Owned by the receiver of it once made, so another thread
    may read it freely."""

    time_ns: int
    previous_ns: int
    sessions: dict[StreamKey, SessionDelta]
    closed_files: list[FileFacts]
    open_files: list[FileFacts]
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
# Told at each tick which delta replaces each bound one (None: the session is let go).
HandOver = Callable[[dict[SessionDelta, SessionDelta | None]], None]


def _nobody_bound(successors: dict[SessionDelta, SessionDelta | None]) -> None:
    """No part outside the pipeline holds its session deltas (a capture file's import)."""


class ContrailBinding(NamedTuple):
    """A Contrail datagram stored under a claim that holds for its whole stream until
    ``high``: the C path may take the vRouter's next datagrams with the same Juniper
    header (``header_length`` bytes), storing them with ``options``."""

    delta: SessionDelta
    low: int
    high: int
    header_length: int
    options: bytes


class DatagramPipeline:
    """The per-datagram pipeline: decode, gate, count, store; and the periodic snapshots.

    Not thread-safe except as :class:`~receiver.receive_loop.Receiver` documents: one
    thread feeds it. Where another part takes some datagrams itself (the receive loop's C
    path, bound to session deltas), ``hand_over`` is told of each tick's replacement
    deltas and ``socket_counters`` gives the sockets' counters for the snapshot.
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
        hand_over: HandOver | None = None,
        socket_counters: Callable[[], list[SocketCounters]] | None = None,
    ) -> None:
        self.gate = gate
        self.store = store
        self.counters = ListenerCounters()
        # Every unclaimed stream since start (bounded), for callers without a hook.
        self.unclaimed: dict[StreamKey, Unclaimed] = {}
        # Every file closed by the last shutdown, for callers without a hook.
        self.final_closed: list[FileFacts] = []
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
        self._evidence: dict[bytes, bytes] = {}
        self._unclaimed_since_tick: dict[StreamKey, Unclaimed] = {}
        # Rows per source in _unclaimed_since_tick and in unclaimed (admit_unclaimed).
        self._unclaimed_sources: dict[str, int] = {}
        self._unclaimed_total_sources: dict[str, int] = {}
        # When a full unclaimed table was last logged, and the counts then.
        self._unclaimed_logged: tuple[float, int, int] = (0.0, 0, 0)
        # The gate's answer for the last datagram _store_classified dropped, for the C
        # path to take the stream's (or source's) next ones (Receiver._native_drainer).
        self.last_drop: tuple[str, int, int] | None = None
        self._on_tick = tuple(on_tick)
        self._unclaimed_limit = unclaimed_limit
        # Receive time of the start: wall clock live, the first packet's time offline.
        self._previous_tick_ns = time.time_ns() if start_ns is None else start_ns
        #: Bumped when the C path's bindings must all go (Receiver._native_drainer): what
        #: browsers watch changed (bindings say whether to keep a sample), or a failure.
        self.bindings_epoch = 0
        self._hand_over = hand_over if hand_over is not None else _nobody_bound
        self._socket_counters = socket_counters if socket_counters is not None else list

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
                    self.internal_error(source)
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
            self.internal_error(source)
            return None
        linktype = LINKTYPE_FOR_KIND.get(inner)
        if delta is None or linktype is None:
            return None
        return delta, low, high, linktype

    def handle_contrail_batch(
        self,
        payloads: Sequence[bytes | memoryview],
        sources: Sequence[str],
        times: Sequence[int],
        port: int,
    ) -> None:
        """:meth:`handle_contrail` for each datagram of a batch received on ``port``.
        Payloads may be views valid only during the call (what is kept is copied)."""
        handle = self.handle_contrail
        for payload, source, time_ns in zip(payloads, sources, times, strict=True):
            handle(payload if type(payload) is bytes else bytes(payload), source, port, time_ns)

    def handle_contrail(
        self, payload: bytes, source: str, port: int, time_ns: int
    ) -> ContrailBinding | None:
        """One CN2 / Contrail datagram from ``source`` to analyzer ``port``, received at
        ``time_ns``: decoded, gated by the CN2 claims, counted and, when claimed, its
        Ethernet frame stored with the Juniper header as pcapng options. Never raises.

        A claim that hangs on each frame's virtual networks or addresses is asked frame
        by frame (docs/architecture.md, Contrail). When the frame was stored under a claim
        that holds for the whole stream (by analyzer port): what the C path needs to take
        the vRouter's next datagrams with the same header (Receiver._contrail_native_drainer)."""
        counters = self.counters
        counters.datagrams += 1
        counters.bytes += len(payload)
        try:
            packet = decode_contrail(payload)
            return self._store_contrail(payload, packet, source, port, time_ns)
        except DecodeError:
            counters.malformed += 1
        except Exception:
            self.internal_error(source)
        return None

    def _store_contrail(
        self, payload: bytes, packet: ContrailPacket, source: str, port: int, time_ns: int
    ) -> ContrailBinding | None:
        key: StreamKey = (source, CONTRAIL_MID, port)
        gate = self.gate
        if gate is not self._claims_gate:
            self._claims.clear()
            self._claims_gate = gate
        cached = self._claims.get(key)
        if cached is not None and cached[0] <= time_ns < cached[1]:
            low, high, claim = cached
            whole_stream = True
        else:
            claim, low, high, whole_stream = gate.claim_contrail_span(
                source, port, packet.source_vn, packet.dest_vn, packet.src, packet.dst, time_ns
            )
            # Kept per (vRouter, port) only when it holds for every frame of the stream;
            # an answer that hangs on this frame's VNs or addresses is asked again.
            if whole_stream:
                if len(self._claims) >= CLAIM_CACHE_LIMIT:
                    self._claims.clear()
                self._claims[key] = (low, high, claim)
        if isinstance(claim, str):
            self.counters.drops[claim] += 1
            self._unclaimed(key, claim, time_ns)
            return None
        router, intercept = claim
        # The capture host is the vRouter's IPv4 router id: it can only be held to an
        # IPv4 source. Over IPv6 it is kept, with the rest of the header, in the evidence.
        capture_host = packet.capture_host
        if (
            capture_host is not None
            and capture_host != router.address
            and ":" not in router.address
        ):
            self.counters.drops[WRONG_CAPTURE_HOST] += 1
            return None
        delta = self._sessions.get(key)
        if delta is None or delta.intercept_pk != intercept.intercept_id_pk:
            delta = self._new_session(key, claim, time_ns, delta)
        delta.packets += 1
        delta.bytes += len(payload)
        delta.last_ns = time_ns
        if not intercept.keep_content:
            return None
        # A vRouter repeats the same few headers (a flow's capture host, flags and VNs):
        # their options are made once per distinct header, not per frame (measured
        # 13 us a frame to make).
        header = payload[: packet.header_length]
        options = self._evidence.get(header)
        if options is None:
            if len(self._evidence) >= EVIDENCE_CACHE_LIMIT:
                self._evidence.clear()  # hostile variety: bounded, not grown
            options = self._evidence[header] = evidence_options(packet, payload)
        block = enhanced_packet_block(0, time_ns, packet.frame, options)
        if not self.store.write_block(delta.store_key, time_ns, block, LINKTYPE_ETHERNET):
            return None
        delta.stored += 1
        if delta.watched:
            delta.recent.append((time_ns, payload))
        if not whole_stream:
            return None
        return ContrailBinding(delta, low, high, packet.header_length, options)

    def internal_error(self, source: str) -> None:
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
        intercept = claim.intercept
        delta = self._sessions.get(key)
        if delta is None or delta.intercept_pk != intercept.intercept_id_pk:
            delta = self._new_session(key, claim, time_ns, delta)
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

    def _new_session(
        self, key: StreamKey, claim: Claim, time_ns: int, previous: SessionDelta | None
    ) -> SessionDelta:
        """A new delta for stream ``key``'s session: the stream is new, or ``previous``
        was another intercept's (the records changed hands mid-tick: its counts go on)."""
        router, intercept = claim
        _, mid, sid = key
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
        if previous is not None:
            fresh.packets, fresh.bytes = previous.packets, previous.bytes
            fresh.stored, fresh.first_ns = previous.stored, previous.first_ns
        self._sessions[key] = fresh
        return fresh

    def _unclaimed(self, key: StreamKey, reason: str, time_ns: int) -> None:
        entry = self._unclaimed_since_tick.get(key)
        if entry is not None:
            entry.count += 1
            entry.last_ns = time_ns
            entry.reason = reason
        else:
            self._unclaimed_count(key, reason, 1, time_ns, time_ns)

    def count_dropped_elsewhere(
        self,
        stream: StreamKey,
        reason: str,
        count: int,
        first_ns: int,
        last_ns: int,
        *,
        aggregate: bool,
    ) -> None:
        """Count ``count`` datagrams of unclaimed ``stream`` that another part (the C
        path) dropped, as :meth:`handle` would have; ``aggregate``: counted in the
        source's aggregate row already, so counted as aggregated here too."""
        entry = None if aggregate else self._unclaimed_since_tick.get(stream)
        if entry is not None:
            entry.count += count
            entry.last_ns = last_ns
            entry.reason = reason
        else:
            self._unclaimed_count(stream, reason, count, first_ns, last_ns)

    @property
    def unclaimed_since_tick(self) -> bool:
        """Whether this tick's unclaimed table lists any stream yet."""
        return bool(self._unclaimed_since_tick)

    def note_round(self, took_ns: int) -> None:
        """A receive round of the loop took ``took_ns``: the longest per tick is in the
        snapshot."""
        if took_ns > self._round_ns:
            self._round_ns = took_ns

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

    def tick(
        self, now_ns: int, *, final: bool = False, closed: list[FileFacts] | None = None
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
            sockets=self._socket_counters(),
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
            self.bindings_epoch += 1
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

    def finish(self, now_ns: int) -> list[FileFacts]:
        """Close and hash every file and hand the final snapshot to the hooks."""
        self.final_closed = self.store.close_all()
        self.tick(now_ns, final=True, closed=self.final_closed)
        return self.final_closed
