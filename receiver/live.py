"""Live summaries: the one message contract between the receiver and the websocket
consumers, and the thread that publishes them (standard library only, no Django).

The receiver never sends a message per packet (DESIGN.md section 3). Every
:data:`PUBLISH_INTERVAL` at most, each session that received packets gets one
:class:`SessionSummary` (counts and rates for the interval, and a sample of its most recent
stored packets), sent to the groups of its session, intercept and case; the receiver as a
whole gets one :class:`HealthSummary` (no case data in it) sent to :data:`HEALTH_GROUP`.
Summaries carry what arrived in the interval, not totals: several receivers may serve one
session (SO_REUSEPORT), and a page adds their intervals to the totals it loaded.

Best effort: :meth:`LivePublisher.offer` never blocks the capture (a full queue drops the
snapshot, counted), and while the channel layer fails, summaries are dropped (counted)
and sending is retried with a growing pause, so live updates resume once it is back.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Final, Literal, Protocol, TypedDict

from receiver.jmirror import decode_datagram
from receiver.packet_summary import PacketRow, packet_row
from receiver.worker import SessionDelta, Snapshot, StreamKey

logger = logging.getLogger(__name__)

SESSION_MESSAGE: Final = "live.session"
"""Message type of :class:`SessionSummary`; Channels calls a consumer's ``live_session``."""
HEALTH_MESSAGE: Final = "live.health"
"""Message type of :class:`HealthSummary`; Channels calls a consumer's ``live_health``."""
HEALTH_GROUP: Final = "live.health"
PUBLISH_INTERVAL: Final = 0.25
# How long one batch of sends may take before the layer counts as failing.
SEND_TIMEOUT: Final = 2.0
_RETRY_PAUSES: Final = (1.0, 2.0, 5.0, 10.0)
_QUEUE_SIZE: Final = 64


def session_group(session_id: int) -> str:
    return f"live.session.{session_id}"


def intercept_group(intercept_id: int) -> str:
    return f"live.intercept.{intercept_id}"


def case_group(case_id: int) -> str:
    return f"live.case.{case_id}"


class SessionSummary(TypedDict):
    """What one session received during one interval (``time_ns - interval_ns`` to
    ``time_ns``), sent to its session, intercept and case groups."""

    type: Literal["live.session"]
    time_ns: int
    interval_ns: int
    # None until the session's row exists (the first second of a new session): the
    # stream is then known by router, mid and sid only.
    session_id: int | None
    router_id: int
    mid: int
    sid: int
    intercept_id: int
    case_id: int
    liid: str
    packets: int
    bytes: int
    stored: int
    packets_per_second: float
    bytes_per_second: float
    first_ns: int
    last_ns: int
    # The most recent stored packets of the interval, oldest first (a sample at high rates).
    recent: list[PacketRow]


class ListenerHealth(TypedDict):
    address: str
    datagrams: int
    bytes: int
    kernel_drops: int | None
    rcvbuf: int


class HealthSummary(TypedDict):
    """The receiver's health for the system administrators: totals since it started and
    rates over the interval. Counts only: no case, session or address in it."""

    type: Literal["live.health"]
    time_ns: int
    interval_ns: int
    receiver: str  # hostname:pid
    datagrams: int
    bytes: int
    datagrams_per_second: float
    bytes_per_second: float
    malformed: int
    unstorable: int
    internal_errors: int
    drops: dict[str, int]
    store_errors: dict[str, int]
    open_files: int
    active_sessions: int
    listeners: list[ListenerHealth]
    # Summaries this publisher could not deliver (layer down or too slow) since start.
    live_dropped: int


LiveMessage = SessionSummary | HealthSummary
Batch = list[tuple[str, LiveMessage]]


def session_summary(
    key: StreamKey, delta: SessionDelta, *, time_ns: int, interval_ns: int, session_id: int | None
) -> SessionSummary:
    _address, mid, sid = key
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
        recent=[packet_row(when, decode_datagram(payload)) for when, payload in delta.recent],
    )


def health_summary(
    snapshot: Snapshot, *, interval_ns: int, previous: Snapshot | None, receiver: str, dropped: int
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
        active_sessions=len(snapshot.sessions),
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


class LivePublisher:
    """Turns the capture's snapshots into summaries and sends them, in its own thread.

    ``session_ids`` maps (router id, mid, sid) to Session primary keys as the database
    bookkeeping learns them; a session not yet in it is summarised to its intercept and
    case groups only.
    """

    def __init__(
        self,
        send: Callable[[Batch], None],
        *,
        session_ids: Mapping[tuple[int, int, int], int],
        receiver: str,
        interval: float = PUBLISH_INTERVAL,
    ) -> None:
        self._send = send
        self._session_ids = session_ids
        self._receiver = receiver
        self._interval = interval
        self._queue: queue.Queue[Snapshot] = queue.Queue(maxsize=_QUEUE_SIZE)
        self.dropped = 0
        self.sent_batches = 0
        self._failures = 0
        self._retry_at = 0.0
        self._pending: dict[StreamKey, SessionDelta] = {}
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
                return

    def _absorb(self, snapshot: Snapshot) -> None:
        for key, delta in snapshot.sessions.items():
            pending = self._pending.get(key)
            if pending is None:
                self._pending[key] = delta.copy()
            else:
                pending.merge(delta)

    def batch(self, snapshot: Snapshot) -> Batch:
        """The messages for everything absorbed since the last batch (and clears it)."""
        interval_ns = max(snapshot.time_ns - self._published_ns, 1)
        batch: Batch = []
        for key, delta in self._pending.items():
            session_id = self._session_ids.get((delta.router_id, key[1], key[2]))
            summary = session_summary(
                key, delta, time_ns=snapshot.time_ns, interval_ns=interval_ns, session_id=session_id
            )
            if session_id is not None:
                batch.append((session_group(session_id), summary))
            batch.append((intercept_group(delta.intercept_pk), summary))
            batch.append((case_group(delta.case_pk), summary))
        health = health_summary(
            snapshot,
            interval_ns=interval_ns,
            previous=self._previous,
            receiver=self._receiver,
            dropped=self.dropped,
        )
        health["active_sessions"] = len(self._pending)
        batch.append((HEALTH_GROUP, health))
        self._pending = {}
        self._previous = snapshot
        self._published_ns = snapshot.time_ns
        return batch

    def _publish(self, snapshot: Snapshot) -> None:
        batch = self.batch(snapshot)
        if time.monotonic() < self._retry_at:
            self.dropped += len(batch)
            return
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
