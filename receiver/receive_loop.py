"""The live receive loop: UDP sockets drained into a :class:`~receiver.pipeline.DatagramPipeline`.

Standard library plus the sans-I/O receiver modules only, no Django: the Django side
(``manage.py receive``, :mod:`receiver.service`) hands in a :class:`~receiver.gate.Gate`
and a :class:`~receiver.store.PcapStore`, replaces :attr:`Receiver.gate` when the records
change, and takes :class:`~receiver.pipeline.Snapshot` objects from the ``on_tick`` hook to
write them to the database in another thread. The loop itself never waits on anything but
its sockets.

What happens to each datagram (decode -> gate -> counters -> store) is the pipeline's
(:mod:`receiver.pipeline`); a :class:`Receiver` holds one (:attr:`Receiver.pipeline`) and
adds the sockets, the drains and the C part.

Hot path, chosen by measurement (docs/architecture.md, Measured constraints):
non-blocking sockets drained until empty and ``select`` only when all are (a plain loop
ran about 270k datagrams/s on the reference machine against 47k for asyncio's datagram
endpoint), with a 250 us pause after a short round so that the next one costs a batch.
Three drains, fastest first:

- :mod:`receiver._fastpath` (C, built by the install where a compiler is): ``recvmmsg``
  with kernel timestamps, and the pcap append and counts of every datagram whose stream
  Python has bound to it, and the drop of every datagram whose answer Python gave for its
  source or stream before (junk costs no more than a stored packet); each other
  datagram comes back to :meth:`DatagramPipeline.handle`, in order. 1.1 against 2.6 us per
  128-byte datagram for the Python drain, 2.6 against 4.3 us per 1,400-byte one, kernel
  receive included (``benchmarks/drain_benchmark.py``).
- ``recvmmsg`` through ctypes (:mod:`receiver.batch_receive`): up to 64 datagrams per
  system call, as views into one buffer, handed to :meth:`DatagramPipeline.handle_batch`,
  where a stream's consecutive datagrams share its gate answer and session.
- elsewhere, ``recvfrom_into`` and :meth:`DatagramPipeline.handle` per datagram.

All three give the same files and counts (property tests against
:meth:`DatagramPipeline.handle`). Periodic work (store flush, file expiry, the tick hook,
the stop flag) runs at least every ``tick_interval``; a round of the loop longer than
:data:`STALL_NS` is counted and logged, with the garbage collector's share of it.
"""

from __future__ import annotations

import gc
import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final

from receiver.batch_receive import BatchReceiver, remember_source
from receiver.gate import DROP_REASONS, NO_INTERCEPT, OUTSIDE_WINDOW, UNKNOWN_ROUTER, Gate
from receiver.pipeline import (
    UNCLAIMED_LIMIT,
    UNCLAIMED_STREAMS_PER_SOURCE,
    DatagramPipeline,
    ListenerCounters,
    SessionDelta,
    SocketCounters,
    StreamKey,
    TickHook,
    Unclaimed,
    aggregate_key,
)
from receiver.store import LINKTYPE_ETHERNET, FileFacts, PcapStore
from receiver.watch import LiveWatch

try:
    from receiver._fastpath import FastReceiver
except ImportError:  # not built here (see setup.py): the pure-Python path runs instead
    FastReceiver = None  # type: ignore[assignment,misc]

logger = logging.getLogger(__name__)

DEFAULT_RCVBUF: Final = 32 * 2**20
_MAX_DATAGRAM: Final = 65_535
# Datagrams taken from one socket per select round, so that several sockets share the
# loop fairly and the time check between rounds stays frequent.
_DRAIN_LIMIT: Final = 256
# Datagrams per recvmmsg call: 64 measured as fast as 256 with a sixteenth of the memory.
BATCH: Final = 64
# Linux's SO_MEMINFO (not in Python's socket module): nine u32 counters, the last being
# the datagrams the kernel dropped because the receive buffer was full.
_SO_MEMINFO: Final = 55
_MEMINFO = struct.Struct("9I")
# A receive round (drain every ready socket, then the tick) longer than this is a stall:
# at 160k datagrams/s a 64 MiB socket buffer holds about 0.4 s of 128-byte datagrams.
STALL_NS: Final = 100_000_000
STALL_LOG_EVERY_NS: Final = 10_000_000_000
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


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# Linux's UDP_NO_CHECK6_RX (linux/udp.h; Python does not name it).
_UDP_NO_CHECK6_RX: Final = 102


def open_socket(host: str, port: int, rcvbuf: int) -> tuple[socket.socket, str | None]:
    """A bound UDP socket with SO_REUSEPORT and the asked receive buffer, and a warning
    when the kernel granted less buffer than asked."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        # Several receiver processes may share one port; the kernel spreads flows.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if family == socket.AF_INET6:
            # A CN2 vRouter sends UDP checksum 0 over IPv6 too (vr_mirror.c), which Linux
            # drops unless told to take it (RFC 6936); a jmirror router never does.
            sock.setsockopt(socket.IPPROTO_UDP, _UDP_NO_CHECK6_RX, 1)
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


class Receiver:
    """Receives jmirror datagrams on one or more UDP addresses and feeds them to its
    :attr:`pipeline`, which stores the claimed ones.

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
        contrail_listen: Sequence[tuple[str, int]] = (),
    ) -> None:
        if not listen and not contrail_listen:
            raise ValueError("a receiver needs at least one address to listen on")
        #: What happens to each datagram; the drains below only receive.
        self.pipeline = DatagramPipeline(
            gate,
            store,
            tick_interval=tick_interval,
            on_tick=on_tick,
            unclaimed_limit=unclaimed_limit,
            hand_over=self._hand_over,
            socket_counters=self.socket_counters,
        )
        self.store = store
        self.warnings: list[str] = []
        self._tick_ns = int(tick_interval * 1e9)
        # Shared with the caller when given, so one event can stop several threads.
        self._stop = stop_event if stop_event is not None else threading.Event()
        #: Whether the sockets are drained by receiver._fastpath (C) rather than Python.
        self.native = native and FastReceiver is not None
        self._natives: list[FastReceiver] = []
        # The C drains of Contrail sockets: bound and handed over as the others, but they
        # drop nothing, so they have no say in the jmirror drains' unclaimed counting.
        self._contrail_natives: list[FastReceiver] = []
        # Source addresses by the C path's raw keys (remember_source: bounded).
        self._native_sources: dict[bytes | int, str] = {}
        self.sockets: list[socket.socket] = []
        self._socket_counters: list[SocketCounters] = []
        self._addresses: list[tuple[str, int]] = []
        #: The sockets that receive CN2 / Contrail (``contrail_listen``): their datagrams
        #: go to DatagramPipeline.handle_contrail, with the port they came to.
        self.contrail_sockets: set[socket.socket] = set()
        try:
            for index, (host, port) in enumerate([*listen, *contrail_listen]):
                sock, warning = open_socket(host, port, rcvbuf)
                self.sockets.append(sock)
                if index >= len(listen):
                    self.contrail_sockets.add(sock)
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
    def gate(self) -> Gate:
        return self.pipeline.gate

    @gate.setter
    def gate(self, gate: Gate) -> None:
        self.pipeline.gate = gate

    @property
    def watch(self) -> LiveWatch | None:
        """What browsers watch live (:attr:`DatagramPipeline.watch`)."""
        return self.pipeline.watch

    @watch.setter
    def watch(self, watch: LiveWatch | None) -> None:
        self.pipeline.watch = watch

    @property
    def counters(self) -> ListenerCounters:
        return self.pipeline.counters

    @property
    def unclaimed(self) -> dict[StreamKey, Unclaimed]:
        return self.pipeline.unclaimed

    @property
    def final_closed(self) -> list[FileFacts]:
        return self.pipeline.final_closed

    def handle(
        self, payload: bytes, source: str, time_ns: int
    ) -> tuple[SessionDelta, int, int, int] | None:
        """:meth:`DatagramPipeline.handle`: one datagram, as if received."""
        return self.pipeline.handle(payload, source, time_ns)

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
        pipeline = self.pipeline
        handle = pipeline.handle
        time_ns = time.time_ns
        counters = self._socket_counters[self.sockets.index(sock)]
        if sock in self.contrail_sockets:
            return self._contrail_drainer(sock, counters)
        if self.native:
            return self._native_drainer(sock, counters)
        if BatchReceiver.available():
            # Kernel receive times (SO_TIMESTAMPNS): the moment each datagram reached the
            # host, as tcpdump records it, whatever the loop was doing then.
            batch = BatchReceiver(sock, batch=BATCH, max_datagram=_MAX_DATAGRAM, timestamps=True)
            receive = batch.receive_timed
            handle_batch = pipeline.handle_batch
            listener = pipeline.counters

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
                    before = listener.bytes
                    handle_batch(payloads, sources, times)
                    counters.datagrams += len(payloads)
                    counters.bytes += listener.bytes - before

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

    def _contrail_drainer(
        self, sock: socket.socket, counters: SocketCounters
    ) -> Callable[[], None]:
        """The drain of a Contrail socket: batches (``recvmmsg`` with kernel times) where
        there is ``recvmmsg``, else one by one, to DatagramPipeline.handle_contrail_batch
        with the socket's port."""
        pipeline = self.pipeline
        listener = pipeline.counters
        port = sock.getsockname()[1]
        if self.native:
            return self._contrail_native_drainer(sock, counters, port)
        if BatchReceiver.available():
            batch = BatchReceiver(sock, batch=BATCH, max_datagram=_MAX_DATAGRAM, timestamps=True)
            receive = batch.receive_timed
            handle_batch = pipeline.handle_contrail_batch

            def drain_contrail_batches() -> None:
                for _ in range(_DRAIN_LIMIT // BATCH):
                    try:
                        payloads, sources, times = receive(views=True)
                    except OSError as error:
                        logger.debug("receive error: %s", error)
                        return
                    if not payloads:
                        return
                    before = listener.bytes
                    handle_batch(payloads, sources, times, port)
                    counters.datagrams += len(payloads)
                    counters.bytes += listener.bytes - before

            return drain_contrail_batches
        recv = sock.recvfrom
        handle = pipeline.handle_contrail
        time_ns = time.time_ns

        def drain_contrail_one_by_one() -> None:
            for _ in range(_DRAIN_LIMIT):
                try:
                    payload, source = recv(_MAX_DATAGRAM)
                except BlockingIOError:
                    return
                except OSError as error:
                    logger.debug("receive error: %s", error)
                    return
                handle(payload, source[0], port, time_ns())
                counters.datagrams += 1
                counters.bytes += len(payload)

        return drain_contrail_one_by_one

    def _contrail_native_drainer(
        self, sock: socket.socket, counters: SocketCounters, port: int
    ) -> Callable[[], None]:
        """The drain of a Contrail socket through receiver._fastpath: C takes the
        datagrams of vRouters bound to it (a claim by analyzer port, one binding per
        Juniper header, with the pcapng options Python made for it); every other datagram
        comes here in order, through :meth:`DatagramPipeline.handle_contrail`, and binds
        its header when it may. As the jmirror drain, bindings are cleared when the gate
        or what browsers watch changes, and their deltas replaced at each tick."""
        store = self.store
        native = FastReceiver(
            sock.fileno(),
            sock.family,
            BATCH,
            _MAX_DATAGRAM,
            store.rotate_bytes,
            store.buffer_bytes,
            timestamps=_enable_timestamps(sock),
            contrail=True,
        )
        self._contrail_natives.append(native)
        pipeline = self.pipeline
        handle = pipeline.handle_contrail
        listener = pipeline.counters
        addresses = self._native_sources
        bound: list[object] = [None, -1]

        def current() -> bool:
            return bound[0] is pipeline.gate and bound[1] == pipeline.bindings_epoch

        def rebase() -> None:
            bound[:] = [pipeline.gate, pipeline.bindings_epoch]
            try:
                native.clear()
            except Exception:  # handing the live sample on failed (no memory): counted
                pipeline.internal_error("the C receive path")

        def drain_contrail_native() -> None:
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
                        pipeline.internal_error("the C receive path")
                    if index >= count:
                        break
                    try:
                        payload, key, time_ns = native.datagram(index)
                    except ValueError:  # truncated: dropped and counted by C
                        index += 1
                        continue
                    source = addresses.get(key) or remember_source(addresses, key)
                    binding = handle(payload, source, port, time_ns)
                    if binding is not None:
                        if not current():
                            rebase()
                        delta = binding.delta
                        file = store.open_file(delta.store_key, LINKTYPE_ETHERNET)
                        if file is not None:
                            try:
                                native.bind_contrail(
                                    index,
                                    binding.header_length,
                                    binding.options,
                                    binding.low,
                                    min(binding.high, _LAST_NS),
                                    delta,
                                    file,
                                    delta.watched,
                                )
                            except Exception:  # no memory: the stream stays in Python
                                pipeline.internal_error(source)
                    index += 1
            received, received_bytes, fast, fast_bytes = native.take_counts()
            listener.datagrams += fast
            listener.bytes += fast_bytes
            counters.datagrams += received
            counters.bytes += received_bytes

        return drain_contrail_native

    def _native_drainer(self, sock: socket.socket, counters: SocketCounters) -> Callable[[], None]:
        """The drain through receiver._fastpath: C receives each batch and stores the
        datagrams of streams bound to it; every other datagram comes back here, one at a
        time and in order, through :meth:`DatagramPipeline.handle`, and binds its stream when it
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
        pipeline = self.pipeline
        handle = pipeline.handle
        listener = pipeline.counters
        addresses = self._native_sources
        # What the bindings were made under: gate, bindings epoch.
        bound: list[object] = [None, -1]

        def current() -> bool:
            return bound[0] is pipeline.gate and bound[1] == pipeline.bindings_epoch

        def rebase() -> None:
            gate = pipeline.gate
            new_gate = bound[0] is not gate
            bound[:] = [gate, pipeline.bindings_epoch]
            try:
                # C may fold a source's unclaimed streams into its aggregate row only
                # knowing every stream this tick's table lists apart: from empty, and
                # with no other socket's receiver adding to it.
                native.clear(len(self._natives) == 1 and not pipeline.unclaimed_since_tick)
            except Exception:  # handing the live sample on failed (no memory): counted
                self.pipeline.internal_error("the C receive path")
            if new_gate:
                # From now on C drops what this gate drops (receiver/_fastpath.c); also
                # when clear() failed, or C would go on dropping by the old gate's ids.
                try:
                    native.set_gate(gate.mirror_ids, UNCLAIMED_STREAMS_PER_SOURCE)
                except Exception:  # no memory: C decides nothing until the next gate
                    self.pipeline.internal_error("the C receive path")

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
                        self.pipeline.internal_error("the C receive path")
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
                    verdict = pipeline.last_drop
                    if verdict is not None:
                        pipeline.last_drop = None
                        # Dropped as unclaimed: C drops the source's or stream's next ones.
                        if not current():
                            rebase()
                        reason, low, high = verdict
                        try:
                            native.refuse(index, _REASON_CODES[reason], low, min(high, _LAST_NS))
                        except Exception:  # a bug: the stream stays in Python
                            self.pipeline.internal_error(source)
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
                                self.pipeline.internal_error(source)
                    index += 1
            received, received_bytes, fast, fast_bytes = native.take_counts()
            listener.datagrams += fast
            listener.bytes += fast_bytes
            counters.datagrams += received
            counters.bytes += received_bytes

        return drain_native

    def tick(
        self, now_ns: int, *, final: bool = False, closed: list[FileFacts] | None = None
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
        self.pipeline.tick(now_ns, final=final, closed=closed)

    def finish(self, now_ns: int) -> list[FileFacts]:
        """Close and hash every file and hand the final snapshot to the hooks."""
        for native in self._natives:
            if native.pending:
                self._take_dropped(native)
        return self.pipeline.finish(now_ns)

    def _hand_over(self, successors: dict[SessionDelta, SessionDelta | None]) -> None:
        # C hands each bound stream's latest datagrams to the delta the snapshot takes,
        # then binds the stream to its successor (None: let go). It forgets the sources'
        # verdicts too, as this tick's unclaimed table is new (see rebase): complete when
        # only this socket's receiver feeds it.
        complete = len(self._natives) == 1
        for native in self._natives + self._contrail_natives:
            try:
                native.hand_over(successors, complete)
            except Exception:
                # No memory: bindings to deltas already handed on would count into them,
                # so every binding goes and the streams rebind through Python.
                self.pipeline.internal_error("the C receive path")
                self.pipeline.bindings_epoch += 1
                try:
                    native.clear()
                except Exception:
                    self.pipeline.internal_error("the C receive path")

    def _take_dropped(self, native: FastReceiver) -> None:
        """Count what C dropped since the last call as :meth:`DatagramPipeline.handle` would
        have."""
        try:
            malformed, unknown, no_intercept, outside, streams = native.take_dropped()
        except Exception:  # no memory: kept in C for the next call
            self.pipeline.internal_error("the C receive path")
            return
        counters = self.pipeline.counters
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
        count_dropped = self.pipeline.count_dropped_elsewhere
        for key, mid, sid, aggregate, code, count, first_ns, last_ns in streams:
            source = addresses.get(key) or remember_source(addresses, key)
            stream = aggregate_key(source) if aggregate else (source, mid, sid)
            # An aggregate row counts as aggregated, as each of its datagrams would.
            count_dropped(
                stream, DROP_REASONS[code - 1], count, first_ns, last_ns, aggregate=bool(aggregate)
            )

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
        counters = self.pipeline.counters
        note_round = self.pipeline.note_round
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
                note_round(took)
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
