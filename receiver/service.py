"""The live receiver's service: the receive loop, its bookkeeping and its live summaries
wired together (:func:`serve`), for ``manage.py receive`` and the receiver embedded in
``manage.py serve``.

The capture itself is :class:`receiver.receive_loop.Receiver` (no Django). Around it, this
repairs files a killed receiver left open, builds the gate from the records and reloads it
when they change, purges expired files, and has the :class:`receiver.bookkeeping.Bookkeeper`
write the receiver's counters and closed files to the database from a separate thread, so
a slow or absent database never holds up the receive loop.
"""

from __future__ import annotations

import logging
import os
import queue
import resource
import socket
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection

from jmirror_web.intercepts import evidence_store
from jmirror_web.intercepts.models import Router
from jmirror_web.intercepts.retention import scheduled_purge
from jmirror_web.live.watching import WatchLoader
from receiver.bookkeeping import Bookkeeper, close_finished_rows, record_recovered
from receiver.child_process import summarise_process as summarise_child
from receiver.gate_loader import GateWatcher
from receiver.live import Batch, ChannelLayerSender, LivePublisher
from receiver.metrics import SnapshotCollector, serve_metrics
from receiver.pipeline import Snapshot
from receiver.receive_loop import DEFAULT_RCVBUF, Receiver
from receiver.reconcile import reconcile_sessions
from receiver.store import DIRECTORY_MODE as STORE_DIRECTORY_MODE
from receiver.store import PcapStore
from receiver.uploads import UploadProcess, start_uploader

logger = logging.getLogger(__name__)

# Counters and file rows reach the database at least this often; the gate fingerprint is
# polled at the same pace, so a change to the records takes effect within about 2 s.
WRITE_INTERVAL: Final = 1.0
# At shutdown the last counters and file rows are waited for this long at most (a write of
# 10,000 sessions takes well under a second on a healthy database; systemd's default stop
# timeout is 90 s), and a wait past SHUTDOWN_WRITE_NOTICE is logged.
SHUTDOWN_WRITE_NOTICE: Final = 5.0
SHUTDOWN_WRITE_BOUND: Final = 30.0
# Retention: expired capture files are purged this long after the start, then every
# PURGE_INTERVAL; a run stops after PURGE_TIME_BUDGET so that the writes and gate reloads
# keep their pace, and a backlog goes on at the next write.
PURGE_FIRST_DELAY: Final = 60.0
PURGE_INTERVAL: Final = 3600.0
PURGE_TIME_BUDGET: Final = 1.0
# Descriptors kept back from the pcap files when JMIRROR_MAX_OPEN_FILES is 0 (derived):
# sockets, the database, the web server's connections, log and library files. A quarter
# of the open-file limit, at most this many.
OPEN_FILE_RESERVE: Final = 256
# An open pcap file holds two descriptors: the file and its packet index.
DESCRIPTORS_PER_FILE: Final = 2
# At shutdown an upload in flight is waited for this long, then left to the next start
# (the queue is the rows: the file goes up again, whole).
UPLOAD_STOP_WAIT: Final = 2.0


def raise_open_file_limit() -> int:
    """Raise the soft open-file limit (RLIMIT_NOFILE) to the hard limit, log the limit,
    and return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = soft
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError) as error:  # e.g. an unlimited hard limit
            logger.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, error)
    if soft == resource.RLIM_INFINITY:
        logger.info("open-file limit: unlimited")
    elif soft != before:
        logger.info("open-file limit: %d (raised from %d)", soft, before)
    else:
        logger.info("open-file limit: %d", soft)
    return soft


def max_open_files(configured: int, limit: int) -> int:
    """The bound on open pcap files: ``configured`` unless 0, else the open-file limit
    minus a reserve for everything else, over the descriptors an open file holds."""
    if configured > 0:
        return configured
    if limit == resource.RLIM_INFINITY or limit > 1 << 20:
        limit = 1 << 20
    return max(16, (limit - min(OPEN_FILE_RESERVE, limit // 4)) // DESCRIPTORS_PER_FILE)


def cn2_ports() -> list[int]:
    """The analyzer ports of the registered CN2 routers."""
    return list(Router.objects.filter(kind=Router.Kind.CN2).values_list("port", flat=True))


def analyzer_listen(
    listen: Sequence[tuple[str, int]], ports: Sequence[int]
) -> list[tuple[str, int]]:
    """Where to receive CN2 / Contrail: each analyzer port (a CN2 router's ``port``) on
    each host the jmirror addresses listen on, leaving out a port jmirror listens on
    there already (one socket cannot take both formats: the records refuse it, and a
    port given both ways stays jmirror's, with a warning)."""
    hosts = list(dict.fromkeys(host for host, _ in listen)) or ["127.0.0.1"]
    taken = set(listen)
    addresses = []
    for port in sorted(set(ports)):
        for host in hosts:
            if (host, port) in taken:
                logger.warning(
                    "port %d is both a jmirror listen port and a CN2 router's analyzer "
                    "port: it stays jmirror",
                    port,
                )
            else:
                addresses.append((host, port))
    return addresses


def _no_live(batch: Batch) -> None:
    """No channel layer configured: live summaries go nowhere."""


def serve(
    listen: Sequence[tuple[str, int]],
    *,
    root: Path,
    stop: threading.Event,
    rcvbuf: int = DEFAULT_RCVBUF,
    ready: Callable[[Receiver], None] | None = None,
    live: Callable[[Batch], None] | None = None,
    metrics: tuple[str, int] | None = None,
    contrail_listen: Sequence[tuple[str, int]] | None = None,
    upload_process: bool = False,
    summarise_process: bool = False,
) -> Receiver:
    """Receive until ``stop`` is set, then close every file, write the last counters and
    file rows, and return the receiver (for its counters). Runs the capture loop in the
    calling thread, the database work in a second one and the live summaries (sent with
    ``live``, by default through the channel layer) in a third; with ``metrics``, a
    Prometheus endpoint on that address serves the latest counters. CN2 / Contrail is
    received on ``contrail_listen``, by default on the CN2 routers' analyzer ports
    (:func:`analyzer_listen`) as the records have them at start. With an evidence store,
    closed files go up from ``manage.py upload`` as a child process when
    ``upload_process`` (what the commands do: see that command for why), else from a
    thread (in-process callers, such as tests whose database the child cannot open). With
    ``summarise_process``, ``manage.py summarise`` runs as a child process too, adding the
    stored packets to their sessions' conversations and names."""
    limit = raise_open_file_limit()
    bound = max_open_files(settings.JMIRROR_MAX_OPEN_FILES, limit)
    logger.info(
        "at most %d pcap files open at once; a session's file closes after %d s without a "
        "packet, or once it spans %d s",
        bound,
        settings.JMIRROR_SESSION_QUIET_SECONDS,
        settings.JMIRROR_ROTATE_SECONDS,
    )
    root.mkdir(mode=STORE_DIRECTORY_MODE, parents=True, exist_ok=True)
    recovered = PcapStore.recover(root)
    repaired = record_recovered(root, recovered)
    if recovered:
        logger.info("recovered %d files left open by an earlier receiver", len(recovered))
    rows = close_finished_rows(root, repaired)
    if rows:
        logger.warning("closed the rows of %d finished files an earlier receiver left open", rows)
    # The counters of the crashed receiver's last second died with it; its files did not.
    reconcile_sessions(repaired)
    watcher = GateWatcher()
    watches = WatchLoader()
    bookkeeper = Bookkeeper(root)
    bookkeeper.register()
    snapshots: queue.Queue[Snapshot] = queue.Queue()
    sender: ChannelLayerSender | None = None
    if live is None:
        layer = get_channel_layer()
        if layer is None:
            live = _no_live
        else:
            live = sender = ChannelLayerSender(layer)
    publisher = LivePublisher(
        live, session_ids=bookkeeper.session_ids, receiver=f"{socket.gethostname()}:{os.getpid()}"
    )
    hooks: list[Callable[[Snapshot], None]] = [snapshots.put, publisher.offer]
    # With an evidence store, closed files go up from a thread of their own (its own
    # database connection); the capture never waits for it.
    uploads_stop = threading.Event()
    uploads = None
    upload_child = None
    store = evidence_store.store()
    if store is not None:
        assert bookkeeper.process is not None
        if upload_process:
            upload_child = UploadProcess(bookkeeper.process.pk)
            upload_child.start()
        else:
            uploads = start_uploader(store, uploads_stop, process_id=bookkeeper.process.pk)
    # JMIRROR_SUMMARISE off: conversations and names are summarised elsewhere (manage.py
    # summarise on another host, which reads the files from the evidence store) or not.
    summaries = summarise_child() if summarise_process and settings.JMIRROR_SUMMARISE else None
    if summaries is not None:
        summaries.start()
    metrics_server = None
    if metrics is not None:
        upload_backlog = (
            uploads[0].backlog
            if uploads is not None
            else upload_child.backlog
            if upload_child is not None
            else None
        )
        collector = SnapshotCollector(lambda: publisher.dropped, bookkeeper.backlog, upload_backlog)
        metrics_server, _ = serve_metrics(*metrics, collector)
        hooks.append(collector.offer)
        logger.info("metrics on http://%s:%d/metrics", *metrics_server.server_address[:2])
    if contrail_listen is None:
        contrail_listen = analyzer_listen(listen, cn2_ports())
    try:
        receiver = Receiver(
            listen,
            watcher.gate,
            PcapStore(
                root,
                max_open_files=bound,
                rotate_seconds=settings.JMIRROR_ROTATE_SECONDS,
                quiet_seconds=settings.JMIRROR_SESSION_QUIET_SECONDS,
                packet_index=settings.JMIRROR_PACKET_INDEX,
            ),
            rcvbuf=rcvbuf,
            on_tick=hooks,
            stop_event=stop,
            contrail_listen=contrail_listen,
        )
    except OSError:
        if metrics_server is not None:
            metrics_server.shutdown()
        uploads_stop.set()
        if upload_child is not None:
            upload_child.stop(UPLOAD_STOP_WAIT)
        if summaries is not None:
            summaries.stop(UPLOAD_STOP_WAIT)
        raise
    # What live pages watch, before the first datagram (then twice a second, below).
    receiver.watch = publisher.watch = watches.refresh()
    for warning in receiver.warnings:
        logger.warning("%s", warning)

    def bookkeeping() -> None:
        next_write = time.monotonic() + WRITE_INTERVAL
        next_purge = time.monotonic() + PURGE_FIRST_DELAY
        final = False
        written = False
        try:
            while not final:
                try:
                    waiting: Snapshot | None = snapshots.get(timeout=0.2)
                except queue.Empty:
                    waiting = None
                # Everything that queued up during a write is merged before the next one:
                # a write carries all of it, however long the previous write took.
                while waiting is not None and not final:
                    bookkeeper.absorb(waiting)
                    final = waiting.final
                    try:
                        waiting = snapshots.get_nowait()
                    except queue.Empty:
                        waiting = None
                if not final:
                    # Paced inside (twice a second): a page's summaries start soon after
                    # it subscribes, however slow the writes are.
                    receiver.watch = publisher.watch = watches.refresh()
                if time.monotonic() < next_write and not final:
                    continue
                started = time.monotonic()
                if not final:
                    receiver.gate = watcher.refresh()
                written = bookkeeper.write()
                if upload_child is not None and not final:
                    upload_child.keep_running()
                if summaries is not None and not final:
                    summaries.keep_running()
                # A slow database gets a write every WRITE_INTERVAL, or after a pause as
                # long as the write took: this thread never holds the interpreter lock
                # (which the receive loop needs) more than about half the time, and the
                # counts merged meanwhile go in the next write whatever their number.
                next_write = started + max(WRITE_INTERVAL, 2 * (time.monotonic() - started))
                if not final and time.monotonic() >= next_purge:
                    # Never raises: a failed purge is logged and tried again later.
                    done = scheduled_purge(datetime.now(UTC), time_budget=PURGE_TIME_BUDGET)
                    next_purge = time.monotonic() + (PURGE_INTERVAL if done else 0.0)
            # The final write failed: two retries, well within SHUTDOWN_WRITE_BOUND.
            for pause in (0.5, 2.0):
                if written:
                    break
                time.sleep(pause)
                written = bookkeeper.write()
            if not written:
                logger.error("shutdown: counters and file rows could not be written")
        finally:
            connection.close()

    def publishing() -> None:
        try:
            publisher.run(stop)
        finally:
            if sender is not None:
                sender.close()

    writer = threading.Thread(target=bookkeeping, name="receive-bookkeeping", daemon=True)
    writer.start()
    live_thread = threading.Thread(target=publishing, name="receive-live", daemon=True)
    live_thread.start()
    if ready is not None:
        ready(receiver)
    try:
        receiver.run()
    finally:
        stop.set()
        # The final snapshot is queued by now (Receiver.run hands it to the hooks before it
        # returns): wait for its write, saying so when it takes long.
        writer.join(timeout=SHUTDOWN_WRITE_NOTICE)
        if writer.is_alive():
            logger.warning(
                "shutdown: still writing the last counters after %.0f s (%d session counters "
                "waiting); waiting up to %.0f s",
                SHUTDOWN_WRITE_NOTICE,
                bookkeeper.backlog().rows,
                SHUTDOWN_WRITE_BOUND,
            )
            writer.join(timeout=SHUTDOWN_WRITE_BOUND - SHUTDOWN_WRITE_NOTICE)
        if writer.is_alive():
            logger.error("shutdown: the database writer did not finish; last counters not written")
        live_thread.join(timeout=1)
        uploads_stop.set()
        if uploads is not None:
            uploads[1].join(timeout=UPLOAD_STOP_WAIT)
            if uploads[1].is_alive():
                logger.warning("shutdown: an upload in flight is left to the next start")
        if upload_child is not None:
            upload_child.stop(UPLOAD_STOP_WAIT)
        if summaries is not None:
            summaries.stop(UPLOAD_STOP_WAIT)
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
    return receiver
