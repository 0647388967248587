"""The receiver's optional Prometheus endpoint (``manage.py receive --metrics HOST:PORT``).

It serves the counters of the latest snapshot, so scraping never touches the capture
thread. The endpoint has no authentication (Prometheus scrapes it over the management
network), so it carries no case data: no LIID, no case, no session, no router address;
counts by drop reason, store error and listening socket only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import NamedTuple
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from receiver.gate import DROP_REASONS
from receiver.pipeline import WRONG_CAPTURE_HOST, Snapshot


class BookkeepingBacklog(NamedTuple):
    """How far the database's counters trail the capture: session counters waiting for a
    write, and the age in seconds of the oldest snapshot not yet written."""

    rows: int
    lag_seconds: float


def _no_backlog() -> BookkeepingBacklog:
    return BookkeepingBacklog(0, 0.0)


class UploadBacklog(NamedTuple):
    """The upload queue (receiver.uploads) as last counted: files waiting for the
    evidence store, their bytes and the age of the oldest; since this receiver started,
    files and bytes uploaded, failed attempts and local copies removed, and the last
    failure in one line (no path or key: no case data)."""

    files: int = 0
    bytes: int = 0
    oldest_seconds: float = 0.0
    uploaded_files: int = 0
    uploaded_bytes: int = 0
    failures: int = 0
    local_copies_removed: int = 0
    last_error: str = ""


class SnapshotCollector(Collector):
    """Metrics from the latest snapshot handed to :meth:`offer` (a tick hook), and from
    the callables given for what the snapshot does not hold (read at each scrape)."""

    def __init__(
        self,
        live_dropped: Callable[[], int] = lambda: 0,
        backlog: Callable[[], BookkeepingBacklog] = _no_backlog,
        uploads: Callable[[], UploadBacklog] | None = None,
    ) -> None:
        self._latest: Snapshot | None = None
        self._live_dropped = live_dropped
        self._backlog = backlog
        self._uploads = uploads

    def offer(self, snapshot: Snapshot) -> None:
        # One reference assignment: atomic, and the snapshot is never changed after.
        self._latest = snapshot

    def collect(self) -> Iterator[Metric]:
        snapshot = self._latest
        if snapshot is None:
            return
        listener = snapshot.listener
        yield CounterMetricFamily(
            "jmirror_datagrams", "Datagrams received", value=listener.datagrams
        )
        yield CounterMetricFamily("jmirror_bytes", "Bytes received", value=listener.bytes)
        dropped = CounterMetricFamily(
            "jmirror_dropped_datagrams", "Datagrams dropped, by reason", labels=["reason"]
        )
        for reason in (*DROP_REASONS, WRONG_CAPTURE_HOST):
            dropped.add_metric([reason], listener.drops.get(reason, 0))
        dropped.add_metric(["malformed"], listener.malformed)
        dropped.add_metric(["unstorable"], listener.unstorable)
        dropped.add_metric(["internal_error"], listener.internal_error)
        yield dropped
        # The unclaimed-stream tables' caps (receiver.pipeline.admit_unclaimed): datagrams
        # counted in a source's aggregate row, and those not listed at all.
        unclaimed = CounterMetricFamily(
            "jmirror_unclaimed_capped_datagrams",
            "Unclaimed datagrams past a cap of the unclaimed-stream table, by outcome",
            labels=["outcome"],
        )
        unclaimed.add_metric(["aggregated"], listener.unclaimed_aggregated)
        unclaimed.add_metric(["not_listed"], listener.unclaimed_overflow)
        yield unclaimed
        errors = CounterMetricFamily(
            "jmirror_store_errors", "Packets that could not be stored, by errno", labels=["errno"]
        )
        for name, count in sorted(snapshot.store_errors.items()):
            errors.add_metric([name], count)
        yield errors
        yield GaugeMetricFamily(
            "jmirror_open_files", "Pcap files being written", value=len(snapshot.open_files)
        )
        yield CounterMetricFamily(
            "jmirror_open_file_bound_closes",
            "Pcap files closed early because the open-file bound was reached",
            value=snapshot.bound_closes,
        )
        # A receive round that takes long lets the socket buffer fill: the first thing to
        # look at when kernel drops appear (the receiver also logs each, with its GC share).
        yield CounterMetricFamily(
            "jmirror_receive_stalls",
            "Receive loop rounds longer than 100 ms",
            value=listener.stalls,
        )
        yield GaugeMetricFamily(
            "jmirror_receive_longest_round_seconds",
            "Longest receive loop round since start",
            value=listener.longest_round_ns / 1e9,
        )
        yield GaugeMetricFamily(
            "jmirror_receive_round_seconds",
            "Longest receive loop round between the latest two snapshots",
            value=snapshot.round_ns / 1e9,
        )
        yield GaugeMetricFamily(
            "jmirror_active_sessions",
            "Sessions that received a datagram lately (receiver.pipeline.Snapshot)",
            value=snapshot.active_sessions,
        )
        backlog = self._backlog()
        yield GaugeMetricFamily(
            "jmirror_bookkeeping_backlog",
            "Session counters waiting to be written to the database",
            value=backlog.rows,
        )
        yield GaugeMetricFamily(
            "jmirror_bookkeeping_lag_seconds",
            "Age of the oldest counters not yet written to the database",
            value=backlog.lag_seconds,
        )
        socket_datagrams = CounterMetricFamily(
            "jmirror_listener_datagrams", "Datagrams received per socket", labels=["listener"]
        )
        kernel_drops = CounterMetricFamily(
            "jmirror_listener_kernel_drops",
            "Datagrams the kernel dropped on a full receive buffer, per socket",
            labels=["listener"],
        )
        rcvbuf = GaugeMetricFamily(
            "jmirror_listener_rcvbuf_bytes", "Socket receive buffer size", labels=["listener"]
        )
        for each in snapshot.sockets:
            socket_datagrams.add_metric([each.address], each.datagrams)
            if each.kernel_drops is not None:
                kernel_drops.add_metric([each.address], each.kernel_drops)
            rcvbuf.add_metric([each.address], each.rcvbuf)
        yield socket_datagrams
        yield kernel_drops
        yield rcvbuf
        yield CounterMetricFamily(
            "jmirror_live_dropped_summaries",
            "Live summaries not delivered to the channel layer",
            value=self._live_dropped(),
        )
        if self._uploads is not None:
            yield from upload_metrics(self._uploads())


def upload_metrics(uploads: UploadBacklog) -> Iterator[Metric]:
    """The upload queue's metrics (only when an evidence store is configured)."""
    yield GaugeMetricFamily(
        "jmirror_upload_backlog_files",
        "Closed capture files waiting for their upload to the evidence store",
        value=uploads.files,
    )
    yield GaugeMetricFamily(
        "jmirror_upload_backlog_bytes",
        "Bytes of the closed capture files waiting for their upload",
        value=uploads.bytes,
    )
    yield GaugeMetricFamily(
        "jmirror_upload_oldest_seconds",
        "How long the oldest file waiting for its upload has been closed",
        value=uploads.oldest_seconds,
    )
    yield CounterMetricFamily(
        "jmirror_uploaded_files",
        "Capture files uploaded and recorded",
        value=uploads.uploaded_files,
    )
    yield CounterMetricFamily(
        "jmirror_uploaded_bytes", "Bytes of capture files uploaded", value=uploads.uploaded_bytes
    )
    yield CounterMetricFamily(
        "jmirror_upload_failures",
        "Failed upload attempts (store unreachable or refusing, local copy missing or altered)",
        value=uploads.failures,
    )
    yield CounterMetricFamily(
        "jmirror_local_copies_removed",
        "Local copies of uploaded files removed after JMIRROR_LOCAL_KEEP_HOURS",
        value=uploads.local_copies_removed,
    )


def serve_metrics(
    host: str, port: int, collector: SnapshotCollector
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``/metrics`` on ``host:port`` from a daemon thread; returns the server (its
    ``server_address`` tells the port when 0 was asked) and the thread."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    return start_http_server(port, addr=host, registry=registry)
