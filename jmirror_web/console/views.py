"""The console pages an analyst and an LI administrator look at all day: the dashboard,
a case with its sessions, and one session's live view.

Every page selects its records through :func:`~jmirror_web.intercepts.access.cases_for`,
so a case the user may not see is never loaded: its pages answer 404, never 403 (a 403
would confirm that the case exists). The pages render everything from the database and
work without JavaScript; the live parts (rates, counters, the packet list) are filled by
``static/js/`` from the websocket described in ``docs/live-protocol.md``, which gets the
ids it subscribes to from a ``json_script`` block (no inline script: the pages must run
under a Content-Security-Policy without 'unsafe-inline').

Each page runs a fixed number of queries whatever the number of cases or sessions
(aggregates and prefetches, never a query per row): tests assert it, and
``benchmarks/page_speed.py`` times it with 100 cases and 10,000 sessions.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import PurePosixPath
from typing import Final, Literal

from django.conf import settings
from django.contrib.humanize.templatetags.humanize import intcomma
from django.core.paginator import Paginator
from django.db.models import Count, Max, Q, QuerySet, Sum
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils import timezone
from django.utils.timesince import timesince, timeuntil

from jmirror_web.audit.log import record
from jmirror_web.audit.refusals import refusals_audited
from jmirror_web.console import stored_packets
from jmirror_web.console.health import LAG_ALERT_SECONDS, UPLOAD_ALERT_SECONDS
from jmirror_web.console.traffic import CaseTraffic, Talker, case_traffic, top_talkers
from jmirror_web.exports.engine import linktype_names
from jmirror_web.exports.forms import ExportForm, InterceptExportForm
from jmirror_web.exports.service import CaseContents, with_export_contents
from jmirror_web.intercepts.access import Action, cases_for, may
from jmirror_web.intercepts.models import (
    CaptureFile,
    Case,
    Intercept,
    ReceiverProcess,
    Session,
    UnclaimedStream,
)
from receiver.contrail import CONTRAIL_MID

SESSIONS_PER_PAGE: Final = 200
# What the case page's mid column says for a Contrail session (case.js says the same).
CONTRAIL_MID_TEXT: Final = "Contrail (CN2)"
LIVE_ROWS: Final = 500
"""Packet rows the live view keeps on the page; older rows are dropped (and it says so)."""
EXPIRY_WARNING: Final = timedelta(hours=24)
UNCLAIMED_WINDOW: Final = timedelta(hours=1)
UNCLAIMED_SHOWN: Final = 5
ALTERED_SHOWN: Final = 20
# A receiver that has not reported for this long is gone (killed, host down): its last
# counters say nothing about the service now.
RECEIVER_STALE: Final = timedelta(hours=1)


@dataclass(frozen=True)
class Alert:
    """One line of the dashboard's alert list."""

    level: Literal["warn", "bad"]
    text: str
    url: str | None = None


@dataclass(frozen=True)
class WarrantWindow:
    """Where a case stands in its validity window, in words for the dashboard."""

    state: Literal["pending", "running", "ended"]
    text: str
    expiring: bool = False


def ago(moment: datetime, now: datetime) -> str:
    """How long ago ``moment`` was, as the dashboard says it: Django's ``timesince`` counts
    in minutes at best, and traffic a few seconds old read "0 minutes ago"."""
    seconds = (now - moment).total_seconds()
    if seconds < 60:
        # A no-break space between number and unit, as timesince writes it.
        return "just now" if seconds < 2 else f"{int(seconds)}\xa0seconds ago"
    return f"{timesince(moment, now)} ago"


def warrant_window(case: Case, now: datetime) -> WarrantWindow:
    if now < case.valid_from:
        return WarrantWindow("pending", f"starts in {timeuntil(case.valid_from, now)}")
    if now < case.valid_until:
        return WarrantWindow(
            "running",
            f"{timeuntil(case.valid_until, now)} left",
            expiring=case.valid_until - now <= EXPIRY_WARNING,
        )
    return WarrantWindow("ended", f"ended {timesince(case.valid_until, now)} ago")


def _with_traffic(cases: QuerySet[Case]) -> QuerySet[Case]:
    """The cases with their sessions' totals, in the one query that lists them."""
    return cases.annotate(
        intercept_count=Count("intercepts", distinct=True),
        session_count=Count("intercepts__sessions"),
        packet_total=Coalesce(Sum("intercepts__sessions__packets"), 0),
        byte_total=Coalesce(Sum("intercepts__sessions__bytes"), 0),
        last_traffic=Max("intercepts__sessions__last_seen"),
    )


def _silent_intercepts(cases: QuerySet[Case], now: datetime) -> QuerySet[Intercept]:
    """Intercepts in force for at least the silence period that received nothing in it:
    the router may have lost its mirror configuration, or the subscriber moved."""
    cutoff = now - timedelta(minutes=settings.JMIRROR_ALERT_SILENCE_MINUTES)
    return (
        Intercept.objects.filter(
            case__in=cases.values("pk"),
            case__status=Case.Status.ACTIVE,
            case__valid_until__gt=now,
            valid_from__lte=cutoff,
            valid_until__gt=now,
        )
        .annotate(last_traffic=Max("sessions__last_seen"))
        .filter(Q(last_traffic__isnull=True) | Q(last_traffic__lt=cutoff))
        .select_related("case")
        .order_by("case__reference", "liid")
    )


def _altered_file_alerts(cases: QuerySet[Case]) -> list[Alert]:
    """Stored files whose last re-verification found them altered or missing
    (``manage.py verify_files``, the session page's button): evidence in doubt, until a
    later check finds them as recorded."""
    altered = (
        CaptureFile.objects.filter(verify_ok=False, session__intercept__case__in=cases.values("pk"))
        .select_related("session__intercept__case")
        .order_by("-verified_at", "pk")[:ALTERED_SHOWN]
    )
    return [
        Alert(
            "bad",
            f"Case {capture.session.intercept.case.reference}: stored file {capture.path} does "
            f"not match its recorded SHA-256 ({capture.verify_detail})",
            reverse("console:session", args=[capture.session_id]),
        )
        for capture in altered
        if capture.session.intercept is not None
    ]


def _unclaimed_alerts(now: datetime) -> list[Alert]:
    recent = UnclaimedStream.objects.filter(last_seen__gte=now - UNCLAIMED_WINDOW)
    totals = recent.aggregate(streams=Count("pk"), packets=Coalesce(Sum("packets"), 0))
    if not totals["streams"]:
        return []
    examples = ", ".join(
        f"{unclaimed_stream_text(stream)} from {stream.source} ({stream.get_reason_display()})"
        for stream in recent.order_by("-last_seen", "pk")[:UNCLAIMED_SHOWN]
    )
    more = totals["streams"] - UNCLAIMED_SHOWN
    return [
        Alert(
            "warn",
            f"{intcomma(totals['streams'])} unclaimed mirror stream(s) in the last hour "
            f"({intcomma(totals['packets'])} packets dropped): {examples}"
            + (f" and {intcomma(more)} more" if more > 0 else ""),
            reverse("console:unclaimed"),
        )
    ]


def unclaimed_stream_text(stream: UnclaimedStream) -> str:
    """An unclaimed stream in words, source and reason aside: "mirror id 0x300 sid 0x90",
    "Contrail, analyzer port 8099", or a source's other streams counted together."""
    if stream.is_aggregate:
        return "other streams"
    if stream.is_contrail:
        return f"Contrail, analyzer port {stream.analyzer_port}"
    return f"mirror id {stream.mirror_id:#x} sid {stream.sid:#x}"


def _receiver_alerts(now: datetime, health_url: str | None) -> list[Alert]:
    """Kernel socket drops and store errors of the receivers that report now. Counts
    only: these rows hold no case data."""
    alerts: list[Alert] = []
    receivers = (
        ReceiverProcess.objects.filter(
            stopped_at__isnull=True, reported_at__gte=now - RECEIVER_STALE
        )
        .prefetch_related("listeners")
        .order_by("hostname", "pid")
    )
    for receiver in receivers:
        name = f"{receiver.hostname}:{receiver.pid}"
        for listener in receiver.listeners.all():
            if listener.kernel_drops:
                alerts.append(
                    Alert(
                        "bad",
                        f"Receiver {name} socket {listener.address}: "
                        f"{intcomma(listener.kernel_drops)} datagrams dropped by the kernel "
                        "(receive buffer full)",
                        health_url,
                    )
                )
        if receiver.store_errors:
            errors = ", ".join(
                f"{name_}: {intcomma(count)}"
                for name_, count in sorted(receiver.store_errors.items())
            )
            alerts.append(
                Alert(
                    "bad",
                    f"Receiver {name} could not store packets ({errors})",
                    health_url,
                )
            )
        if receiver.bookkeeping_lag_seconds >= LAG_ALERT_SECONDS:
            # The capture goes on; the database's counts (and the live pages' session
            # links) trail it: the database does not keep up with the traffic.
            alerts.append(
                Alert(
                    "warn",
                    f"Receiver {name}: the database's counters trailed the traffic by "
                    f"{receiver.bookkeeping_lag_seconds:.0f} s at its last write "
                    f"({intcomma(receiver.bookkeeping_backlog)} session counters)",
                    health_url,
                )
            )
        alerts += _upload_alerts(receiver, name, health_url)
    return alerts


def _upload_alerts(receiver: ReceiverProcess, name: str, health_url: str | None) -> list[Alert]:
    """The receiver's upload queue: failing uploads, and files waiting long (evidence
    only on the capturing host's disk meanwhile). Counts only, no path."""
    alerts = []
    if receiver.last_upload_error and receiver.upload_backlog:
        alerts.append(
            Alert(
                "bad",
                f"Receiver {name} (node {receiver.node}): uploads to the evidence store are "
                f"failing ({intcomma(receiver.upload_backlog)} files waiting): "
                f"{receiver.last_upload_error}",
                health_url,
            )
        )
    if receiver.upload_backlog and receiver.upload_oldest_seconds >= UPLOAD_ALERT_SECONDS:
        alerts.append(
            Alert(
                "warn",
                f"Receiver {name} (node {receiver.node}): {intcomma(receiver.upload_backlog)} "
                f"closed files not in the evidence store yet, the oldest for "
                f"{receiver.upload_oldest_seconds / 60:.0f} minutes",
                health_url,
            )
        )
    return alerts


def _time(when: datetime) -> tuple[str, str]:
    """A UTC time as the ``datetime`` attribute and the text of a ``<time>`` element."""
    return when.isoformat(), f"{when:%Y-%m-%d %H:%M}"


@dataclass(frozen=True)
class DashboardRow:
    """One case on the dashboard, formatted in Python (as :class:`SessionRow`): an LI
    administrator's dashboard lists every case, and template filters per cell would be
    most of its time. The traffic figures are empty for a case seen as a record only."""

    case: Case
    window: WarrantWindow
    metadata: bool
    valid_from: tuple[str, str]
    valid_until: tuple[str, str]
    url: str | None = None
    sessions_text: str = ""
    packets: int = 0
    packets_text: str = ""
    bytes: int = 0
    bytes_text: str = ""
    last_traffic: tuple[str, str] | None = None
    traffic: CaseTraffic | None = None
    talkers: tuple[Talker, ...] = ()

    @classmethod
    def of(cls, case: Case, now: datetime, url: str | None = None) -> DashboardRow:
        common = {
            "case": case,
            "window": warrant_window(case, now),
            "valid_from": _time(case.valid_from),
            "valid_until": _time(case.valid_until),
        }
        if url is None:
            return cls(metadata=False, **common)  # type: ignore[arg-type]
        # Annotations of _with_traffic.
        packets: int = getattr(case, "packet_total")  # noqa: B009
        size: int = getattr(case, "byte_total")  # noqa: B009
        last: datetime | None = getattr(case, "last_traffic")  # noqa: B009
        return cls(
            metadata=True,
            url=url,
            sessions_text=f"{getattr(case, 'session_count'):,}",  # noqa: B009
            packets=packets,
            packets_text=f"{packets:,}",
            bytes=size,
            bytes_text=str(filesizeformat(size)),
            last_traffic=(last.isoformat(), ago(last, now)) if last else None,
            **common,  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class SessionRow:
    """One line of the case page's session table, formatted in Python: the page lists
    up to 200 of them, and Django's template filters (url, date, intcomma) cost several
    times more per cell than the plain formatting done here."""

    pk: int
    stream: str
    url: str
    liid: str
    router: str
    mid: str
    sid: str
    first_seen: str
    first_seen_text: str
    last_seen: str
    last_seen_text: str
    packets: int
    packets_text: str
    bytes: int
    bytes_text: str

    @classmethod
    def of(cls, session: Session, url_prefix: str) -> SessionRow:
        return cls(
            pk=session.pk,
            stream=f"{session.router_id}:{session.mid}:{session.sid}",
            url=f"{url_prefix}{session.pk}/",
            liid=session.intercept.liid if session.intercept else "",
            router=session.router.name,
            # A Contrail session has no mirror or session id: its format and analyzer
            # port stand in their columns (its mid and sid are only its stream's key).
            mid=CONTRAIL_MID_TEXT if session.is_contrail else f"{session.mid:#x}",
            sid=(
                f"analyzer port {session.analyzer_port}"
                if session.is_contrail
                else f"{session.sid:#x}"
            ),
            first_seen=session.first_seen.isoformat(),
            first_seen_text=f"{session.first_seen:%Y-%m-%d %H:%M:%S}",
            last_seen=session.last_seen.isoformat(),
            last_seen_text=f"{session.last_seen:%Y-%m-%d %H:%M:%S}",
            packets=session.packets,
            packets_text=f"{session.packets:,}",
            bytes=session.bytes,
            bytes_text=str(filesizeformat(session.bytes)),
        )


def dashboard(request: HttpRequest) -> HttpResponse:
    """The cases the user may see, with their traffic and the alerts that need them.

    Cases with the metadata right come with counters and live rates; cases the user may
    only read as records (auditors) come without any traffic figure. Health alerts go to
    the users who look after the service (system and LI administrators), with no case
    data in them.
    """
    user = request.user
    now = timezone.now()
    visible = cases_for(user, Action.VIEW_METADATA)
    case_url = reverse("console:case", args=[0]).removesuffix("0/")
    rows = [
        DashboardRow.of(case, now, url=f"{case_url}{case.pk}/") for case in _with_traffic(visible)
    ]
    over_time = case_traffic(visible, now)
    talkers = top_talkers(visible, now)
    rows = [
        replace(
            row,
            traffic=over_time.get(row.case.pk, CaseTraffic()),
            talkers=tuple(talkers.get(row.case.pk, ())),
        )
        if row.metadata
        else row
        for row in rows
    ]
    rows += [
        DashboardRow.of(case, now)
        for case in cases_for(user, Action.VIEW_RECORD).exclude(pk__in=visible.values("pk"))
    ]
    rows.sort(key=lambda row: (row.case.status != Case.Status.ACTIVE, row.case.reference))

    alerts: list[Alert] = []
    for row in rows:
        if row.case.status == Case.Status.ACTIVE and row.window.expiring:
            alerts.append(
                Alert(
                    "warn",
                    f"Case {row.case.reference}: the warrant ends in "
                    f"{timeuntil(row.case.valid_until, now)}",
                    row.url,
                )
            )
    silence = settings.JMIRROR_ALERT_SILENCE_MINUTES
    for intercept in _silent_intercepts(visible, now):
        last: datetime | None = getattr(intercept, "last_traffic")  # noqa: B009 (annotated)
        since = f"since {timesince(last, now)}" if last else "ever"
        alerts.append(
            Alert(
                "warn",
                f"Intercept {intercept.liid} (case {intercept.case.reference}) is in force "
                f"but has received nothing {since} (alert after {silence} minutes)",
                f"{case_url}{intercept.case_id}/",
            )
        )
    alerts += _altered_file_alerts(visible)
    manages = may(user, Action.MANAGE_RECORDS)
    watches_health = may(user, Action.VIEW_HEALTH)
    if manages:
        alerts += _unclaimed_alerts(now)
    if manages or watches_health:
        alerts += _receiver_alerts(now, reverse("console:health") if watches_health else None)

    live = {
        "subscriptions": [{"stream": "dashboard"}] if any(r.metadata for r in rows) else [],
        "cases": [row.case.pk for row in rows if row.metadata],
    }
    return render(
        request,
        "console/dashboard.html",
        {"rows": rows, "alerts": alerts, "live": live, "now": now},
    )


@refusals_audited(Case, "case_id")
def case_page(request: HttpRequest, case_id: int) -> HttpResponse:
    """One case: its intercepts with their totals, and its sessions (newest traffic
    first, paginated), which the ``case`` stream keeps counting live."""
    case = get_object_or_404(
        _with_traffic(cases_for(request.user, Action.VIEW_METADATA)), pk=case_id
    )
    now = timezone.now()
    downloads = may(request.user, Action.DOWNLOAD, case)
    intercept_rows = case.intercepts.all()
    if downloads:
        # What the case export holds, counted in the same query (no file read).
        intercept_rows = with_export_contents(intercept_rows)
    intercepts = list(
        intercept_rows.annotate(
            session_count=Count("sessions"),
            packet_total=Coalesce(Sum("sessions__packets"), 0),
            byte_total=Coalesce(Sum("sessions__bytes"), 0),
            last_traffic=Max("sessions__last_seen"),
        )
        .prefetch_related("routers")
        .order_by("liid")
    )
    sessions = (
        Session.objects.filter(intercept__case=case)
        .select_related("router", "intercept")
        .order_by("-last_seen", "-pk")
    )
    page = Paginator(sessions, SESSIONS_PER_PAGE).get_page(request.GET.get("page"))
    routers: dict[int, str] = {}
    for intercept in intercepts:
        routers.update((router.pk, router.name) for router in intercept.routers.all())
    routers.update((session.router_id, session.router.name) for session in page)
    # Every session URL is this prefix and the pk (asserted by the tests).
    url_prefix = reverse("console:session", args=[0]).removesuffix("0/")
    rows = [SessionRow.of(session, url_prefix) for session in page]
    live = {
        "subscriptions": [{"stream": "case", "id": case.pk}],
        "case": case.pk,
        # A session that starts while the page is open is added as a row on the first
        # page only: the other pages hold older sessions.
        "addSessions": page.number == 1,
        "sessionUrl": reverse("console:session", args=[0]),
        # A live summary of a Contrail session comes with this mid and its analyzer
        # port as sid (receiver.contrail.CONTRAIL_MID): case.js shows the port.
        "contrailMid": CONTRAIL_MID,
        "contrailMidText": CONTRAIL_MID_TEXT,
        "intercepts": {str(i.pk): i.liid for i in intercepts},
        "routers": {str(pk): name for pk, name in routers.items()},
    }
    return render(
        request,
        "console/case.html",
        {
            "case": case,
            "window": warrant_window(case, now),
            "downloads": downloads,
            # The case export's form, and what it holds (CaptureFile rows: no file read).
            "export_form": InterceptExportForm() if downloads else None,
            "contents": CaseContents.of(intercepts) if downloads else None,
            "intercepts": intercepts,
            "page": page,
            "rows": rows,
            "live": live,
            "now": now,
        },
    )


def _older_packets(*, content: bool, download: bool) -> str:
    """What the live list's note says of the packets it does not show (those before the
    page opened, and those past its row limit): where each role finds them."""
    where = "every stored packet is listed under Stored packets below"
    if download:
        return f"{where}: open one by number, or download the session"
    if content:
        return f"{where}: open one by number"
    return f"{where} (their content is not yours to open)"


@refusals_audited(Session, "session_id")
def session_page(request: HttpRequest, session_id: int) -> HttpResponse:
    """One session: its totals and files, and the live packet list and rate chart fed by
    the ``session`` stream (the server leaves out the packets' info strings for users
    without the content right)."""
    session = get_object_or_404(
        Session.objects.select_related("router", "intercept__case").filter(
            intercept__case__in=cases_for(request.user, Action.VIEW_METADATA).values("pk")
        ),
        pk=session_id,
    )
    assert session.intercept is not None  # the filter above went through it
    case = session.intercept.case
    # The path's folder names the LIID and router, already on the page; the name is enough.
    files = [(file, PurePosixPath(file.path).name) for file in session.files.all()]
    content = may(request.user, Action.VIEW_CONTENT, case)
    stored = stored_packets.list_packets(session, request.GET, content=content)
    if content and stored_packets.shows_content(stored):
        details = stored_packets.audit_details(stored)
        record(stored_packets.LISTED, session, request=request, details=details)
    download = may(request.user, Action.DOWNLOAD, case)
    live = {
        "subscriptions": [{"stream": "session", "id": session.pk}],
        "session": session.pk,
        "totals": {
            "packets": session.packets,
            "bytes": session.bytes,
            "stored": session.stored_packets,
        },
        "limit": LIVE_ROWS,
        # Where the packets the live list does not hold are, for the note under it.
        "olderPackets": _older_packets(content=content, download=download),
        # With the content right, each live row's time links to its packet by receive
        # time (the link's target checks the right again, and audits).
        "packetAtUrl": reverse("console:packet_jump", args=[session.pk]) if content else None,
        # The recorded totals, which the page reads now and then to make up for summaries
        # it missed (sent before it subscribed, or while its connection was down).
        "sessionApiUrl": reverse("api:session-detail", args=[session.pk]),
    }
    return render(
        request,
        "console/session.html",
        {
            "session": session,
            "intercept": session.intercept,
            "case": case,
            "files": files,
            "content": content,
            "download_url": reverse("exports:session", args=[session.pk]) if download else None,
            # Before submitting: a session mixing link types cannot be one pcap file (the
            # stored list's indexes say which its files hold).
            "mixed": (
                linktype_names(stored.page.linktypes)
                if download and stored.page is not None and len(stored.page.linktypes) > 1
                else ""
            ),
            "download_form": ExportForm(),
            "verify_url": (
                reverse("exports:verify_session_files", args=[session.pk])
                if may(request.user, Action.VERIFY_FILES, case)
                else None
            ),
            # A file whose last re-verification failed stays flagged until one succeeds.
            "altered": [file for file, _ in files if file.verify_ok is False],
            "live": live,
            "live_rows": LIVE_ROWS,
            "stored": stored,
            "stored_pages": _page_links(request, stored),
            "page_sizes": stored_packets.PAGE_SIZES,
            "protocols": list(stored_packets.PROTOCOLS),
        },
    )


def _page_links(request: HttpRequest, stored: stored_packets.Listing) -> dict[str, str]:
    """Query strings of the first, previous, next and last page of a stored packet list,
    its filter kept."""
    if stored.page is None:
        return {}
    found = stored.page

    def link(page: int) -> str:
        query = request.GET.copy()
        query["page"] = str(page)
        return "?" + query.urlencode() + "#stored"

    links = {}
    if found.page > 1:
        links["first"] = link(1)
        links["previous"] = link(min(found.page - 1, found.pages))
    if found.page < found.pages:
        links["next"] = link(found.page + 1)
        links["last"] = link(found.pages)
    return links
