"""The live receive loop: UDP sockets -> decode -> gate -> per-session pcap files.

Standard library plus the sans-I/O receiver modules only, no Django: the Django side
(``manage.py receive``) hands in a :class:`~receiver.gate.Gate` and a
:class:`~receiver.store.PcapStore`, replaces :attr:`Receiver.gate` when the records change,
and takes :class:`Snapshot` objects from the ``on_tick`` hook to write them to the
database in another thread. The loop itself never waits on anything but its sockets.

Hot path, chosen by measurement (DESIGN.md section 3): a plain blocking loop around
``socket.recvfrom_into`` (about 270k datagrams/s on the reference machine against 47k for
asyncio's datagram endpoint). One socket blocks with a short timeout; several sockets are
multiplexed with ``select`` and drained without blocking. Either way periodic work (store
flush, file expiry, the tick hook, the stop flag) runs at least every ``tick_interval``.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from receiver.gate import Gate
from receiver.jmirror import DecodeError, decode_datagram
from receiver.store import LINKTYPE_FOR_KIND, ClosedFile, PcapStore, SessionKey

logger = logging.getLogger(__name__)

DEFAULT_RCVBUF: Final = 32 * 2**20
UNCLAIMED_LIMIT: Final = 10_000
# A bug hit by every datagram would otherwise log at the packet rate.
INTERNAL_ERROR_LOG_EVERY: Final = 10_000
_MAX_DATAGRAM: Final = 65_535
# Datagrams taken from one socket per select round, so that several sockets share the
# loop fairly and the time check between rounds stays frequent.
_DRAIN_LIMIT: Final = 256

StreamKey = tuple[str, int, int]  # router address, mid (raw 32 bits), sid


class SessionDelta:
    """What one claimed session received since the last snapshot."""

    __slots__ = (
        "bytes",
        "first_ns",
        "intercept_pk",
        "last_ns",
        "liid",
        "packets",
        "router_id",
        "store_key",
        "stored",
    )

    def __init__(
        self, router_id: int, intercept_pk: int, liid: str, time_ns: int, store_key: SessionKey
    ) -> None:
        self.router_id = router_id
        # Built once per session and tick rather than once per stored packet.
        self.store_key = store_key
        self.intercept_pk = intercept_pk
        self.liid = liid
        self.packets = 0
        self.bytes = 0
        self.stored = 0
        self.first_ns = time_ns
        self.last_ns = time_ns

    def merge(self, later: SessionDelta) -> None:
        """Add a later delta of the same session (used when a database write failed)."""
        self.packets += later.packets
        self.bytes += later.bytes
        self.stored += later.stored
        self.last_ns = later.last_ns
        # The claim may have moved to another intercept (records edited): the latest wins.
        self.intercept_pk = later.intercept_pk
        self.liid = later.liid
        self.store_key = later.store_key


@dataclass(slots=True)
class Unclaimed:
    """A (router, mid, sid) whose packets were dropped, for LI administrators to map."""

    reason: str
    count: int
    first_ns: int
    last_ns: int


@dataclass(slots=True)
class ListenerCounters:
    """Totals since start for all of this receiver's sockets."""

    datagrams: int = 0
    bytes: int = 0
    malformed: int = 0
    # Claimed, but an inner packet with no pcap link type (neither IP nor PPP): counted,
    # never stored, since tshark could not show it.
    unstorable: int = 0
    internal_error: int = 0
    unclaimed_overflow: int = 0
    drops: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the loop hands out at a tick: session deltas since the previous snapshot,
    files closed since then, and copies of the running totals. Owned by the receiver once
    made, so another thread may read it freely."""

    time_ns: int
    sessions: dict[StreamKey, SessionDelta]
    closed_files: list[ClosedFile]
    listener: ListenerCounters
    unclaimed: dict[StreamKey, Unclaimed]
    store_errors: Counter[str]
    final: bool = False


TickHook = Callable[[Snapshot], None]


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 as ``[::1]:30030``) as a (host, port) pair; ValueError if not."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, as [::1]:30030")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"{text!r}: port {port} is out of range")
    return host, port


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
        warning = (
            f"receive buffer on {host}:{port} is {effective} bytes, not the {rcvbuf} asked: "
            f"the kernel caps it at net.core.rmem_max (raise it with "
            f"`sysctl -w net.core.rmem_max={rcvbuf}`), or bursts will be dropped"
        )
    return sock, warning


class Receiver:
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
    ) -> None:
        if not listen:
            raise ValueError("a receiver needs at least one address to listen on")
        self.gate = gate
        self.store = store
        self.counters = ListenerCounters()
        self.unclaimed: dict[StreamKey, Unclaimed] = {}
        self.warnings: list[str] = []
        # Every file closed by the last run()'s shutdown, for callers without a hook.
        self.final_closed: list[ClosedFile] = []
        self._sessions: dict[StreamKey, SessionDelta] = {}
        self._tick_ns = int(tick_interval * 1e9)
        self._on_tick = tuple(on_tick)
        self._unclaimed_limit = unclaimed_limit
        # Shared with the caller when given, so one event can stop several threads.
        self._stop = stop_event if stop_event is not None else threading.Event()
        self.sockets: list[socket.socket] = []
        try:
            for host, port in listen:
                sock, warning = open_socket(host, port, rcvbuf)
                self.sockets.append(sock)
                if warning:
                    self.warnings.append(warning)
        except OSError:
            self.close_sockets()
            raise

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) pairs; useful after binding port 0."""
        return [sock.getsockname()[:2] for sock in self.sockets]

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

    def run(self) -> None:
        """Receive until :meth:`stop`; then close every file, hand a final snapshot to the
        hooks and close the sockets. Bad datagrams never raise out of here."""
        try:
            self._receive()
        finally:
            # Flush, close and hash every file now: after a SIGTERM nothing may stay open.
            self.final_closed = self.store.close_all()
            self._tick(time.time_ns(), final=True, closed=self.final_closed)
            self.close_sockets()

    def _receive(self) -> None:
        # Non-blocking sockets drained until empty, and select() only when all are: a
        # socket with a timeout would cost a poll() before every recvfrom_into.
        for sock in self.sockets:
            sock.setblocking(False)
        buffer = bytearray(_MAX_DATAGRAM)
        view = memoryview(buffer)
        handle = self._handle
        timeout = self._tick_ns / 1e9 / 2
        next_tick = time.time_ns() + self._tick_ns
        stop = self._stop
        while not stop.is_set():
            ready, _, _ = select.select(self.sockets, [], [], timeout)
            for sock in ready:
                recv = sock.recvfrom_into
                for _ in range(_DRAIN_LIMIT):
                    try:
                        size, source = recv(buffer)
                    except BlockingIOError:
                        break
                    except OSError as error:
                        logger.debug("receive error: %s", error)
                        break
                    handle(bytes(view[:size]), source[0], time.time_ns())
            now = time.time_ns()
            if now >= next_tick:
                next_tick = now + self._tick_ns
                self._tick(now)

    def _handle(self, payload: bytes, source: str, time_ns: int) -> None:
        counters = self.counters
        counters.datagrams += 1
        counters.bytes += len(payload)
        try:
            self._claim_and_store(payload, source, time_ns)
        except DecodeError:
            counters.malformed += 1
        except Exception:
            # A bug, not bad input: count it, say so now and then, and keep receiving.
            counters.internal_error += 1
            if counters.internal_error % INTERNAL_ERROR_LOG_EVERY == 1:
                logger.exception(
                    "internal error handling a datagram from %s (%d so far)",
                    source,
                    counters.internal_error,
                )

    def _claim_and_store(self, payload: bytes, source: str, time_ns: int) -> None:
        packet = decode_datagram(payload)
        mid = packet.mid
        sid = packet.sid
        claim = self.gate.claim(source, mid, sid, time_ns)
        key = (source, mid, sid)
        if isinstance(claim, str):
            self.counters.drops[claim] += 1
            self._unclaimed(key, claim, time_ns)
            return
        router, intercept = claim
        delta = self._sessions.get(key)
        if delta is None or delta.intercept_pk != intercept.intercept_id_pk:
            fresh = SessionDelta(
                router.router_id,
                intercept.intercept_id_pk,
                intercept.liid,
                time_ns,
                # The registered address, also when a dual-stack socket maps it.
                SessionKey(intercept.liid, router.address, mid, sid),
            )
            if delta is not None:  # the records changed hands mid-tick: keep the counts
                fresh.packets, fresh.bytes, fresh.stored = delta.packets, delta.bytes, delta.stored
                fresh.first_ns = delta.first_ns
            delta = self._sessions[key] = fresh
        delta.packets += 1
        delta.bytes += len(payload)
        delta.last_ns = time_ns
        if not intercept.keep_content:
            return
        linktype = LINKTYPE_FOR_KIND.get(packet.inner)
        if linktype is None:
            self.counters.unstorable += 1
            return
        self.store.write(delta.store_key, time_ns, packet.data, linktype)
        delta.stored += 1

    def _unclaimed(self, key: StreamKey, reason: str, time_ns: int) -> None:
        entry = self.unclaimed.get(key)
        if entry is not None:
            entry.count += 1
            entry.last_ns = time_ns
            entry.reason = reason
        elif len(self.unclaimed) < self._unclaimed_limit:
            self.unclaimed[key] = Unclaimed(reason, 1, time_ns, time_ns)
        else:
            # Bounded: random junk from many sources must not grow memory without limit.
            self.counters.unclaimed_overflow += 1

    def _tick(
        self, now_ns: int, *, final: bool = False, closed: list[ClosedFile] | None = None
    ) -> None:
        store = self.store
        try:
            if not final:
                store.flush_due(time.monotonic())
                store.close_expired(now_ns)
        except Exception:
            logger.exception("store maintenance failed; capture goes on")
        if not self._on_tick:
            return
        sessions, self._sessions = self._sessions, {}
        counters = self.counters
        snapshot = Snapshot(
            time_ns=now_ns,
            sessions=sessions,
            closed_files=store.take_closed() if closed is None else closed,
            listener=ListenerCounters(
                datagrams=counters.datagrams,
                bytes=counters.bytes,
                malformed=counters.malformed,
                unstorable=counters.unstorable,
                internal_error=counters.internal_error,
                unclaimed_overflow=counters.unclaimed_overflow,
                drops=Counter(counters.drops),
            ),
            unclaimed={
                key: Unclaimed(each.reason, each.count, each.first_ns, each.last_ns)
                for key, each in self.unclaimed.items()
            },
            store_errors=Counter(store.store_errors),
            final=final,
        )
        for hook in self._on_tick:
            try:
                hook(snapshot)
            except Exception:
                logger.exception("tick hook %r failed; capture goes on", hook)
