"""Live summaries: the thread that publishes them to the websocket consumers, in the
messages of :mod:`receiver.live_contract` (standard library only, no Django).

The receiver never sends a message per packet (docs/architecture.md, Measured constraints). Every
:data:`PUBLISH_INTERVAL` at most, each session that received packets gets one
:class:`SessionSummary` (counts and rates for the interval, and a sample of its most recent
stored packets), sent to the groups of its session, intercept and case; the receiver as a
whole gets one :class:`HealthSummary` (no case data in it) sent to :data:`HEALTH_GROUP`.
Summaries carry what arrived in the interval, not totals: several receivers may serve one
session (SO_REUSEPORT), and a page adds their intervals to the totals it loaded.

Only what some browser watches is summarised: the publisher's :attr:`watch`
(:class:`~receiver.watch.LiveWatch`, kept in step with the live pages' registry by the
bookkeeping thread) names the sessions, intercepts and cases that live pages subscribe
to. A session it does not cover costs the live thread a membership test per snapshot and
nothing more: it is neither copied, summarised nor decoded. When a dashboard is open, the
counts of the sessions not covered are summed per case instead, into one
:class:`CaseCounts` per case and round (no rows, no per-session work).

The cost of a round is bounded whatever the number of watched sessions: at most
:data:`LIVE_SESSIONS_PER_ROUND` session summaries, :data:`LIVE_ROWS_PER_ROUND` decoded
packet rows in all and :data:`LIVE_CASES_PER_ROUND` case counts. A session left out of a
round keeps its counts for a later one (oldest waiting first, so every watched session
gets its turn, and its summary's interval then spans the rounds it waited): pages add up
intervals, and nothing is lost, only late. Rows past the bound are left out (they are a
sample of recent packets anyway). Both are counted in the health summary
(``live_deferred``, ``live_rows_dropped``).

Best effort: :meth:`LivePublisher.offer` never blocks the capture (a full queue drops the
snapshot, counted), and while the channel layer fails, summaries are dropped (counted)
and sending is retried with a growing pause, so live updates resume once it is back.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Final, Protocol

from receiver.contrail import CONTRAIL_MID, decode_contrail
from receiver.jmirror import decode_datagram
from receiver.live_contract import (
    CASE_MESSAGE,
    HEALTH_GROUP,
    HEALTH_MESSAGE,
    SESSION_MESSAGE,
    CaseCounts,
    HealthSummary,
    ListenerHealth,
    LiveMessage,
    SessionSummary,
    case_group,
    intercept_group,
    session_group,
)
from receiver.packet_summary import contrail_packet_row, packet_row
from receiver.pipeline import SessionDelta, Snapshot, StreamKey
from receiver.watch import NOBODY, LiveWatch

logger = logging.getLogger(__name__)

PUBLISH_INTERVAL: Final = 0.25
# What one round may cost at most, however many sessions are watched: summaries built,
# packet rows decoded (the dearest part), case counts sent. A summary is sent to up to
# three groups, so a round is at most 3 * 500 + 500 + 1 group messages.
LIVE_SESSIONS_PER_ROUND: Final = 500
LIVE_ROWS_PER_ROUND: Final = 256
LIVE_CASES_PER_ROUND: Final = 500
# Sessions (and cases) whose counts wait for a round, at most: past it a new one's counts
# are dropped, counted. Far above what the rounds drain (500 every 0.25 s).
PENDING_LIMIT: Final = 20_000
# How long one batch of sends may take before the layer counts as failing.
SEND_TIMEOUT: Final = 2.0
_RETRY_PAUSES: Final = (1.0, 2.0, 5.0, 10.0)
_QUEUE_SIZE: Final = 64

Batch = list[tuple[str, LiveMessage]]


def session_summary(
    key: StreamKey,
    delta: SessionDelta,
    *,
    time_ns: int,
    interval_ns: int,
    session_id: int | None,
    recent: Sequence[tuple[int, bytes]] | None = None,
) -> SessionSummary:
    """``delta`` as a summary, with ``recent`` (default: all of ``delta.recent``) decoded
    into its rows."""
    _address, mid, sid = key
    sample = delta.recent if recent is None else recent
    seconds = max(interval_ns, 1) / 1e9
    return SessionSummary(
        type=SESSION_MESSAGE,
        time_ns=time_ns,
        interval_ns=interval_ns,
        session_id=session_id,
        router_id=delta.router_id,
        mid=mid,
        sid=sid,
        intercept_id=delta.intercept_pk,
        case_id=delta.case_pk,
        liid=delta.liid,
        packets=delta.packets,
        bytes=delta.bytes,
        stored=delta.stored,
        packets_per_second=round(delta.packets / seconds, 1),
        bytes_per_second=round(delta.bytes / seconds, 1),
        first_ns=delta.first_ns,
        last_ns=delta.last_ns,
        recent=[
            contrail_packet_row(when, decode_contrail(payload))
            if mid == CONTRAIL_MID
            else packet_row(when, decode_datagram(payload))
            for when, payload in sample
        ],
    )


def case_counts(
    case_id: int, packets: int, bytes_: int, stored: int, *, time_ns: int, interval_ns: int
) -> CaseCounts:
    seconds = max(interval_ns, 1) / 1e9
    return CaseCounts(
        type=CASE_MESSAGE,
        time_ns=time_ns,
        interval_ns=interval_ns,
        case_id=case_id,
        packets=packets,
        bytes=bytes_,
        stored=stored,
        packets_per_second=round(packets / seconds, 1),
        bytes_per_second=round(bytes_ / seconds, 1),
    )


def share_rows(total: int, wants: Sequence[int]) -> list[int]:
    """How many of ``total`` rows each of the sessions wanting ``wants`` rows gets: an
    equal share each, what a session does not need shared again among the others; when
    there are fewer rows than sessions, the first ones (waiting longest) get one each."""
    given = [0] * len(wants)
    needy = [index for index, want in enumerate(wants) if want > 0]
    while total > 0 and needy:
        each = max(total // len(needy), 1)
        still: list[int] = []
        for index in needy:
            give = min(each, wants[index] - given[index], total)
            given[index] += give
            total -= give
            if given[index] < wants[index]:
                still.append(index)
        needy = still
    return given


def health_summary(
    snapshot: Snapshot,
    *,
    interval_ns: int,
    previous: Snapshot | None,
    receiver: str,
    dropped: int,
    deferred: int = 0,
    rows_dropped: int = 0,
) -> HealthSummary:
    listener = snapshot.listener
    seconds = max(interval_ns, 1) / 1e9
    before_datagrams = previous.listener.datagrams if previous else 0
    before_bytes = previous.listener.bytes if previous else 0
    return HealthSummary(
        type=HEALTH_MESSAGE,
        time_ns=snapshot.time_ns,
        interval_ns=interval_ns,
        receiver=receiver,
        datagrams=listener.datagrams,
        bytes=listener.bytes,
        datagrams_per_second=round((listener.datagrams - before_datagrams) / seconds, 1),
        bytes_per_second=round((listener.bytes - before_bytes) / seconds, 1),
        malformed=listener.malformed,
        unstorable=listener.unstorable,
        internal_errors=listener.internal_error,
        drops=dict(listener.drops),
        store_errors=dict(snapshot.store_errors),
        open_files=len(snapshot.open_files),
        active_sessions=snapshot.active_sessions,
        listeners=[
            ListenerHealth(
                address=each.address,
                datagrams=each.datagrams,
                bytes=each.bytes,
                kernel_drops=each.kernel_drops,
                rcvbuf=each.rcvbuf,
            )
            for each in snapshot.sockets
        ],
        live_dropped=dropped,
        live_deferred=deferred,
        live_rows_dropped=rows_dropped,
    )


class GroupSender(Protocol):
    """What a Channels layer offers (``channel_layer.group_send``)."""

    def group_send(self, group: str, message: dict[str, Any]) -> Coroutine[Any, Any, None]: ...


class ChannelLayerSender:
    """Sends a batch through a channel layer from a thread of its own, on an event loop
    owned by that thread (channels-redis binds its connections to the loop)."""

    def __init__(self, layer: GroupSender) -> None:
        self.layer = layer
        self._loop = asyncio.new_event_loop()

    def __call__(self, batch: Batch) -> None:
        self._loop.run_until_complete(asyncio.wait_for(self._send(batch), SEND_TIMEOUT))

    async def _send(self, batch: Batch) -> None:
        # One round trip's worth of waiting for the whole batch, not one per message.
        await asyncio.gather(*(self.layer.group_send(g, dict(m)) for g, m in batch))

    def close(self) -> None:
        self._loop.close()


class LoopSender:
    """Sends a batch through a channel layer that lives on another thread's event loop:
    the in-process layer of the embedded default, where the receiver runs inside the web
    server and its consumers' queues belong to the server's loop."""

    def __init__(self, layer: GroupSender, loop: asyncio.AbstractEventLoop) -> None:
        self.layer = layer
        self.loop = loop

    def __call__(self, batch: Batch) -> None:
        if not self.loop.is_running():
            return  # the server has not started or has stopped: nobody is listening
        future = asyncio.run_coroutine_threadsafe(self._send(batch), self.loop)
        future.result(timeout=SEND_TIMEOUT)

    async def _send(self, batch: Batch) -> None:
        await asyncio.gather(*(self.layer.group_send(g, dict(m)) for g, m in batch))


class _Waiting:
    """A watched session's counts not sent yet, since ``since_ns``.

    The snapshot's delta is shared with the other tick hooks, which only read it: it is
    kept as it is, and copied only when a later one must be merged into it (a session
    sent every round, as most are, is never copied)."""

    __slots__ = ("delta", "owned", "since_ns")

    def __init__(self, delta: SessionDelta, since_ns: int) -> None:
        self.delta = delta
        self.owned = False
        self.since_ns = since_ns

    def merge(self, later: SessionDelta) -> None:
        if not self.owned:
            self.delta = self.delta.copy()
            self.owned = True
        self.delta.merge(later)


class _CaseWaiting:
    """A case's counts of sessions no page covers, not sent yet, since ``since_ns``."""

    __slots__ = ("bytes", "packets", "since_ns", "stored")

    def __init__(self, since_ns: int) -> None:
        self.packets = 0
        self.bytes = 0
        self.stored = 0
        self.since_ns = since_ns

    def add(self, packets: int, bytes_: int, stored: int) -> None:
        self.packets += packets
        self.bytes += bytes_
        self.stored += stored


class LivePublisher:
    """Turns the capture's snapshots into summaries and sends them, in its own thread.

    ``session_ids`` maps (router id, mid, sid) to Session primary keys as the database
    bookkeeping learns them; a session not yet in it is summarised to its intercept and
    case groups only. :attr:`watch` says what live pages subscribe to (assigned from
    another thread: it is read once per snapshot and per round); a summary goes only to
    the groups of it that some page watches.
    """

    def __init__(
        self,
        send: Callable[[Batch], None],
        *,
        session_ids: Mapping[tuple[int, int, int], int],
        receiver: str,
        interval: float = PUBLISH_INTERVAL,
        watch: LiveWatch = NOBODY,
        sessions_per_round: int = LIVE_SESSIONS_PER_ROUND,
        rows_per_round: int = LIVE_ROWS_PER_ROUND,
        cases_per_round: int = LIVE_CASES_PER_ROUND,
    ) -> None:
        self._send = send
        self._session_ids = session_ids
        self._receiver = receiver
        self._interval = interval
        self.watch = watch
        self._sessions_per_round = sessions_per_round
        self._rows_per_round = rows_per_round
        self._cases_per_round = cases_per_round
        self._queue: queue.Queue[Snapshot] = queue.Queue(maxsize=_QUEUE_SIZE)
        self.dropped = 0
        self.deferred = 0
        self.rows_dropped = 0
        self.sent_batches = 0
        self._failures = 0
        self._retry_at = 0.0
        # Insertion-ordered: a session left out of a round keeps its place ahead of those
        # that arrived after it, so the oldest waiting go first.
        self._pending: dict[StreamKey, _Waiting] = {}
        self._cases: dict[int, _CaseWaiting] = {}
        self._previous: Snapshot | None = None
        self._published_ns = time.time_ns()

    def offer(self, snapshot: Snapshot) -> None:
        """A tick hook: hands the snapshot over without ever waiting."""
        try:
            self._queue.put_nowait(snapshot)
        except queue.Full:
            self.dropped += len(snapshot.sessions) + 1

    def run(self, stop: threading.Event) -> None:
        """Publish until ``stop`` is set and the final snapshot has been handled."""
        next_publish = time.monotonic() + self._interval
        while True:
            try:
                snapshot = self._queue.get(timeout=self._interval)
            except queue.Empty:
                if stop.is_set():
                    return
                continue
            self._absorb(snapshot)
            now = time.monotonic()
            if now >= next_publish or snapshot.final:
                next_publish = now + self._interval
                self._publish(snapshot)
            if snapshot.final:
                # What the bounds left for a later round has none: counted, not lost unseen.
                self.dropped += len(self._pending) + len(self._cases)
                return

    def _absorb(self, snapshot: Snapshot) -> None:
        watch = self.watch
        if not watch and not watch.dashboard:
            return  # nobody watches: not even a membership test per session
        since = self._published_ns
        pending = self._pending
        for key, delta in snapshot.sessions.items():
            _address, mid, sid = key
            if watch.covers(delta.router_id, mid, sid, delta.intercept_pk, delta.case_pk):
                waiting = pending.get(key)
                if waiting is not None:
                    waiting.merge(delta)
                elif len(pending) < PENDING_LIMIT:
                    pending[key] = _Waiting(delta, since)
                else:
                    self.dropped += 1
            elif watch.dashboard:
                self._count_case(delta.case_pk, delta.packets, delta.bytes, delta.stored, since)

    def _count_case(self, case_pk: int, packets: int, bytes_: int, stored: int, since: int) -> None:
        counts = self._cases.get(case_pk)
        if counts is None:
            if len(self._cases) >= PENDING_LIMIT:
                self.dropped += 1
                return
            counts = self._cases[case_pk] = _CaseWaiting(since)
        counts.add(packets, bytes_, stored)

    def batch(self, snapshot: Snapshot) -> Batch:
        """The messages for what was absorbed since the last batch, within the per-round
        bounds; what the bounds leave out waits for the next batch."""
        time_ns = snapshot.time_ns
        watch = self.watch
        batch = self._session_messages(time_ns, watch)
        batch += self._case_messages(time_ns, watch)
        health = health_summary(
            snapshot,
            interval_ns=max(time_ns - self._published_ns, 1),
            previous=self._previous,
            receiver=self._receiver,
            dropped=self.dropped,
            deferred=self.deferred,
            rows_dropped=self.rows_dropped,
        )
        batch.append((HEALTH_GROUP, health))
        self._previous = snapshot
        self._published_ns = time_ns
        return batch

    def _session_messages(self, time_ns: int, watch: LiveWatch) -> Batch:
        taken: list[tuple[StreamKey, _Waiting]] = []
        unwatched: list[tuple[StreamKey, _Waiting]] = []
        for key, waiting in self._pending.items():
            if len(taken) >= self._sessions_per_round:
                break
            delta = waiting.delta
            if watch.covers(delta.router_id, key[1], key[2], delta.intercept_pk, delta.case_pk):
                taken.append((key, waiting))
            else:
                unwatched.append((key, waiting))
        for key, _waiting in taken:
            del self._pending[key]
        for key, waiting in unwatched:
            # No page watches it any more: its counts still reach the dashboards.
            del self._pending[key]
            delta = waiting.delta
            if watch.dashboard:
                self._count_case(
                    delta.case_pk, delta.packets, delta.bytes, delta.stored, waiting.since_ns
                )
        self.deferred += len(self._pending)
        addressed: list[tuple[StreamKey, _Waiting, int | None, list[str]]] = []
        for key, waiting in taken:
            delta = waiting.delta
            stream = (delta.router_id, key[1], key[2])
            session_id = self._session_ids.get(stream)
            # Only to the groups some page listens to: a message to an empty group still
            # costs the layer a round trip.
            groups = []
            if session_id is not None and stream in watch.streams:
                groups.append(session_group(session_id))
            if delta.intercept_pk in watch.intercepts:
                groups.append(intercept_group(delta.intercept_pk))
            if delta.case_pk in watch.cases or watch.dashboard:
                groups.append(case_group(delta.case_pk))
            if groups:
                addressed.append((key, waiting, session_id, groups))
            else:
                # Watched by its session page only, and its row's id not known here yet:
                # that page reads its totals from the records again.
                self.dropped += 1
        shares = share_rows(self._rows_per_round, [len(w.delta.recent) for _, w, _, _ in addressed])
        batch: Batch = []
        for (key, waiting, session_id, groups), rows in zip(addressed, shares, strict=True):
            delta = waiting.delta
            self.rows_dropped += len(delta.recent) - rows
            summary = session_summary(
                key,
                delta,
                time_ns=time_ns,
                interval_ns=max(time_ns - waiting.since_ns, 1),
                session_id=session_id,
                recent=list(delta.recent)[len(delta.recent) - rows :],
            )
            batch += [(group, summary) for group in groups]
        return batch

    def _case_messages(self, time_ns: int, watch: LiveWatch) -> Batch:
        if not watch.dashboard:
            self._cases.clear()  # no dashboard open: nobody would add these counts up
            return []
        batch: Batch = []
        for case_pk in list(itertools.islice(self._cases, self._cases_per_round)):
            counts = self._cases.pop(case_pk)
            message = case_counts(
                case_pk,
                counts.packets,
                counts.bytes,
                counts.stored,
                time_ns=time_ns,
                interval_ns=max(time_ns - counts.since_ns, 1),
            )
            batch.append((case_group(case_pk), message))
        return batch

    def _publish(self, snapshot: Snapshot) -> None:
        if time.monotonic() < self._retry_at:
            # The layer failed a moment ago: what waits is dropped, counted, without
            # decoding rows nobody will receive.
            self.dropped += len(self._pending) + len(self._cases) + 1
            self._pending.clear()
            self._cases.clear()
            self._previous = snapshot
            self._published_ns = snapshot.time_ns
            return
        batch = self.batch(snapshot)
        try:
            self._send(batch)
        except Exception as error:  # whatever the layer raises: capture must not care
            self.dropped += len(batch)
            pause = _RETRY_PAUSES[min(self._failures, len(_RETRY_PAUSES) - 1)]
            if self._failures == 0:
                logger.warning(
                    "live summaries not delivered (%s: %s); capture goes on, retrying",
                    type(error).__name__,
                    error,
                )
            self._failures += 1
            self._retry_at = time.monotonic() + pause
            return
        if self._failures:
            logger.info("live summaries delivered again after %d failures", self._failures)
        self._failures = 0
        self.sent_batches += 1
