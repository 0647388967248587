"""The health page for system administrators: the receivers, their sockets and counters,
the capture hosts (nodes), the uploads and summaries still to do, and the data
directory's disk space.

It is built from the system records alone (:class:`ReceiverProcess`, :class:`Listener`),
counts of capture files by node (no path, session or name: :func:`node_rows`) and the
file system: no query here touches a case, intercept, session or router, so the page
cannot show case data whatever the records hold. Rates come live from the ``health``
websocket stream (``static/js/health.js``); without JavaScript the stored totals show.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q, Sum
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from jmirror_web.console.health_storage import evidence_store_status
from jmirror_web.conversations.models import summary_backlog
from jmirror_web.intercepts.access import Action, may
from jmirror_web.intercepts.models import (
    AGGREGATE_MID,
    CaptureFile,
    Listener,
    ReceiverProcess,
    UnclaimedStream,
)

# A receiver writes its row at least once a second; one silent for longer than this is
# stuck or gone without saying so (killed, host down, database unreachable).
STALE_AFTER: Final = timedelta(seconds=10)
# Stopped receivers stay on the page for a day, so a crash or restart is noticed.
STOPPED_SHOWN_FOR: Final = timedelta(days=1)
MAX_RECEIVERS: Final = 50
LOW_DISK_FRACTION: Final = 0.10
# The drop reasons the receiver's gate knows (receiver.gate.DROP_REASONS), always shown
# so that a zero is visible as a zero; other keys a receiver reports are added after them.
KNOWN_DROP_REASONS: Final = (
    "unknown_router",
    "no_intercept",
    "outside_window",
    "wrong_capture_host",  # Contrail: receiver.pipeline.WRONG_CAPTURE_HOST
)
# What each drop reason means, for the page's column headings and its legend (a reason
# without an entry shows by its key alone).
DROP_REASON_TEXT: Final[dict[str, tuple[str, str]]] = {
    "unknown_router": (
        "unknown router",
        "sent from an address that is no registered router (of the format it sent)",
    ),
    "no_intercept": (
        "no intercept",
        "from a registered router, but no intercept claims it (mirror id and session id; "
        "for Contrail: analyzer port, virtual network, target)",
    ),
    "outside_window": (
        "outside the window",
        "claimed by an intercept whose warrant window (or case) was not in force when it arrived",
    ),
    "wrong_capture_host": (
        "wrong capture host",
        "Contrail: claimed, but the capture host in its Juniper header is not the address "
        "of the vRouter it came from (a misconfigured or spoofed sender): refused rather "
        "than stored",
    ),
}


@dataclass(frozen=True)
class DropColumn:
    """A column of the drops table: the reason's key, its words and what it means."""

    key: str
    label: str
    meaning: str


def drop_column(key: str) -> DropColumn:
    label, meaning = DROP_REASON_TEXT.get(key, (key, ""))
    return DropColumn(key, label, meaning)


# The database's counters trailing the traffic by this much is shown as a problem (the
# receiver writes them about once a second when the database keeps up).
LAG_ALERT_SECONDS: Final = 5.0
# A closed file still waiting for its upload after this long (the queue normally takes
# it within seconds) is shown as a problem, here and on the dashboard.
UPLOAD_ALERT_SECONDS: Final = 600.0


@dataclass(frozen=True)
class DiskSpace:
    total: int
    used: int
    free: int

    @property
    def free_percent(self) -> float:
        return 100.0 * self.free / self.total if self.total else 0.0

    @property
    def low(self) -> bool:
        return self.total > 0 and self.free < self.total * LOW_DISK_FRACTION


@dataclass
class ReceiverRow:
    """One receiver as the page shows it."""

    process: ReceiverProcess
    state: str  # running, stale or stopped
    age: timedelta  # since its last database flush
    listeners: list[Listener] = field(default_factory=list)

    @property
    def name(self) -> str:
        """``hostname:pid``, as :class:`receiver.live_contract.HealthSummary` names the
        receiver, so the live rates can find their row."""
        return f"{self.process.hostname}:{self.process.pid}"

    @property
    def age_seconds(self) -> int:
        return int(self.age.total_seconds())


def disk_space() -> DiskSpace | None:
    """The data directory's file system; None when it cannot be asked (gone, no access)."""
    try:
        usage = shutil.disk_usage(settings.DATA_DIR)
    except OSError:
        return None
    return DiskSpace(usage.total, usage.used, usage.free)


def receiver_rows(now: datetime) -> list[ReceiverRow]:
    """Receivers still running (or silent) and those stopped in the last day, newest
    first, with their listeners (two queries)."""
    processes = list(
        ReceiverProcess.objects.filter(
            Q(stopped_at__isnull=True) | Q(stopped_at__gte=now - STOPPED_SHOWN_FOR)
        ).order_by("-started_at", "-pk")[:MAX_RECEIVERS]
    )
    listeners: dict[int, list[Listener]] = {}
    for listener in Listener.objects.filter(receiver__in=[p.pk for p in processes]):
        listeners.setdefault(listener.receiver_id, []).append(listener)
    rows = []
    for process in processes:
        age = max(now - process.reported_at, timedelta(0))
        if process.stopped_at is not None:
            state = "stopped"
        elif age > STALE_AFTER:
            state = "stale"
        else:
            state = "running"
        rows.append(ReceiverRow(process, state, age, listeners.get(process.pk, [])))
    return rows


# Nodes listed at most (capture hosts are a handful; the bound keeps the page's size
# fixed whatever the records hold).
MAX_NODES: Final = 100


@dataclass
class NodeRow:
    """One capture host (``JMIRROR_NODE_NAME``) as the page shows it: its receivers of the
    last day and the capture files it wrote that retention has not purged."""

    name: str  # "" for files recorded before receivers had node names
    receivers: list[ReceiverRow] = field(default_factory=list)
    open_files: int = 0
    open_bytes: int = 0
    closed_files: int = 0
    closed_bytes: int = 0

    @property
    def state(self) -> str:
        """live (a receiver reports), stale (its receivers went silent), stopped (all
        stopped in the last day), or none (no receiver in the last day)."""
        states = {row.state for row in self.receivers}
        for state, shown in (("running", "live"), ("stale", "stale"), ("stopped", "stopped")):
            if state in states:
                return shown
        return "none"

    @property
    def last_report(self) -> datetime | None:
        return max((row.process.reported_at for row in self.receivers), default=None)


def node_rows(receivers: list[ReceiverRow]) -> tuple[list[NodeRow], bool]:
    """Every node with a receiver on the page or capture files held, by name, and whether
    the list was cut at :data:`MAX_NODES`. One query: counts grouped by node."""
    nodes: dict[str, NodeRow] = {}
    for row in receivers:
        nodes.setdefault(row.process.node, NodeRow(row.process.node)).receivers.append(row)
    counts = (
        CaptureFile.objects.filter(purged_at__isnull=True)
        .order_by()
        .values("node")
        .annotate(
            open_files=Count("pk", filter=Q(closed=False)),
            open_bytes=Sum("bytes", filter=Q(closed=False)),
            closed_files=Count("pk", filter=Q(closed=True)),
            closed_bytes=Sum("bytes", filter=Q(closed=True)),
        )
        .order_by("node")[: MAX_NODES + 1]
    )
    for count in counts:
        node = nodes.setdefault(count["node"], NodeRow(count["node"]))
        node.open_files = count["open_files"]
        node.open_bytes = count["open_bytes"] or 0
        node.closed_files = count["closed_files"]
        node.closed_bytes = count["closed_bytes"] or 0
    listed = sorted(nodes.values(), key=lambda node: node.name)
    return listed[:MAX_NODES], len(listed) > MAX_NODES


def node_context(receivers: list[ReceiverRow]) -> dict[str, object]:
    """The page's "Capture hosts" section (templates/console/health_nodes.html)."""
    nodes, cut = node_rows(receivers)
    return {
        "nodes": nodes,
        "nodes_cut": cut,
        "max_nodes": MAX_NODES,
        "this_node": settings.NODE_NAME,
        "quiet_seconds": settings.JMIRROR_SESSION_QUIET_SECONDS,
    }


def _counter_table(
    rows: list[ReceiverRow], attribute: str, first: tuple[str, ...] = ()
) -> tuple[list[str], list[tuple[ReceiverRow, list[int]]]]:
    """A JSON counter (reason -> count) of every receiver as table columns: the ``first``
    keys, then any other key seen, sorted."""
    seen: set[str] = set()
    for row in rows:
        seen.update(str(key) for key in getattr(row.process, attribute) or {})
    columns = list(first) + sorted(seen - set(first))
    table = []
    for row in rows:
        counts = getattr(row.process, attribute) or {}
        table.append((row, [int(counts.get(column, 0)) for column in columns]))
    return columns, table


@login_required
@require_GET
def health_page(request: HttpRequest) -> HttpResponse:
    """Role-gated, not object-gated: a signed-in user without the right gets 403 (the
    page exists for everyone; only case objects are hidden behind 404)."""
    if not may(request.user, Action.VIEW_HEALTH):
        raise PermissionDenied
    now = timezone.now()
    rows = receiver_rows(now)
    current = [row for row in rows if row.state != "stopped"]
    # Imported here: the bookkeeping pulls in the receiver, which pages need not.
    from receiver.bookkeeping import UNCLAIMED_ROWS_LIMIT
    from receiver.pipeline import UNCLAIMED_STREAMS_PER_SOURCE
    from receiver.receive_loop import STALL_NS

    unclaimed_rows = UnclaimedStream.objects.count()
    lag = max((row.process.bookkeeping_lag_seconds for row in current), default=0.0)
    drop_columns, drops = _counter_table(rows, "drops", KNOWN_DROP_REASONS)
    error_columns, store_errors = _counter_table(rows, "store_errors")
    context: dict[str, object] = {
        "now": now,
        "disk": disk_space(),
        "receivers": rows,
        "running": sum(row.state == "running" for row in rows),
        "stale": sum(row.state == "stale" for row in rows),
        "datagrams": sum(row.process.datagrams for row in current),
        "bytes": sum(row.process.bytes for row in current),
        "open_files": sum(row.process.open_files for row in current),
        # Load: as the running receivers last wrote it.
        "active_sessions": sum(row.process.active_sessions for row in current),
        "bound_closes": sum(row.process.bound_closes for row in current),
        "round_ms": max((row.process.round_ms for row in current), default=0.0),
        "bookkeeping_backlog": sum(row.process.bookkeeping_backlog for row in current),
        "bookkeeping_lag_seconds": lag,
        "bookkeeping_lagging": lag >= LAG_ALERT_SECONDS,
        "lag_alert_seconds": LAG_ALERT_SECONDS,
        "stall_ms": STALL_NS / 1e6,
        "drop_columns": [drop_column(key) for key in drop_columns],
        "drops": drops,
        "error_columns": error_columns,
        "store_errors": store_errors,
        "stale_after": int(STALE_AFTER.total_seconds()),
        # The unclaimed-stream table's caps: when reached, say so (never silently).
        "unclaimed_rows": unclaimed_rows,
        "unclaimed_rows_limit": UNCLAIMED_ROWS_LIMIT,
        "unclaimed_rows_full": unclaimed_rows >= UNCLAIMED_ROWS_LIMIT * 9 // 10,
        "unclaimed_aggregated_sources": UnclaimedStream.objects.filter(mid=AGGREGATE_MID).count(),
        "unclaimed_streams_per_source": UNCLAIMED_STREAMS_PER_SOURCE,
        "unclaimed_overflow": sum(row.process.unclaimed_overflow for row in current),
        "low_disk_percent": int(LOW_DISK_FRACTION * 100),
        # Its own section and template (health_storage): bucket checked once a minute.
        "evidence_store": evidence_store_status(),
        # The upload queue of each receiver (receiver.uploads); the store's URL holds no
        # credential (they are never in it).
        "storage_url": settings.STORAGE.describe() if settings.STORAGE is not None else "",
        "upload_alert_seconds": UPLOAD_ALERT_SECONDS,
        "upload_alert_minutes": int(UPLOAD_ALERT_SECONDS // 60),
        # The summariser of conversations and names runs on time capture leaves: how far
        # behind it is (counts of files and packets only).
        "summaries": summary_backlog(),
        "summarise_enabled": settings.JMIRROR_SUMMARISE,
    }
    context.update(node_context(rows))
    return render(request, "console/health.html", context)
