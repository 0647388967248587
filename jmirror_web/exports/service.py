"""Exports between the web and the engine: which files, which window, which name, and
the Export record kept while the bytes stream out.

The views and the API do the same four things through here:

1. :func:`prepare_session_export` / :func:`prepare_intercept_export` /
   :func:`prepare_case_export` turn records and
   validated parameters into an engine request, or raise :class:`ExportRefused` with one
   sentence for the user (a window outside the warrant, purged files...). File paths
   come only from CaptureFile rows under ``settings.SESSIONS_DIR``, never from a request.
2. :func:`start` creates the Export row (state ``streaming``) and audits ``export.start``.
3. :func:`streaming_response` hands the bytes to Django: an async iterator under ASGI,
   where a sync one would be read whole into memory first (Django's
   ``StreamingHttpResponse.__aiter__`` consumes sync iterators with ``list``), and a sync
   one under WSGI and the test client, where an async one would be consumed whole.
4. :class:`ExportStream` finishes the row when the stream ends: ``export.complete`` with
   the digest computed while streaming, ``export.aborted`` with the bytes handed to the
   server when the client went away, ``export.failed`` when a file could not be read.

Refusals of any kind are audited as ``export.refused`` (:func:`audit_refusal`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core import signals
from django.core.handlers.asgi import ASGIRequest
from django.db.models import Count, F, OuterRef, Q, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce, Greatest, Least
from django.http import HttpRequest, StreamingHttpResponse
from django.utils import timezone

from jmirror_web.audit.log import client_address, record
from jmirror_web.exports import engine
from jmirror_web.exports.models import CONVERSION_STATEMENT, Export
from jmirror_web.exports.reading import read_header
from jmirror_web.exports.request import (
    FILE_FORMATS,
    ExportError,
    ExportFormat,
    ExportRequest,
    OpenedSource,
    Opener,
    PacketFilter,
    SessionSource,
    SourceError,
    SourceFile,
    Window,
    filter_text,
)
from jmirror_web.exports.writers import ExportDigest
from jmirror_web.intercepts.evidence_store import CaptureUnavailable, open_capture
from jmirror_web.intercepts.models import (
    CaptureFile,
    Case,
    Intercept,
    OutsideSessionsDirectory,
    Session,
)
from jmirror_web.object_store import ObjectReader
from receiver.store import PART_SUFFIX

CONTENT_TYPES: Final = {
    ExportFormat.PCAP: "application/vnd.tcpdump.pcap",
    ExportFormat.PCAPNG: "application/x-pcapng",
    ExportFormat.ZIP: "application/zip",
    ExportFormat.PCAP_IP: "application/vnd.tcpdump.pcap",
}
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_UNSAFE = re.compile(r"[^A-Za-z0-9.-]+")
logger = logging.getLogger(__name__)


class ExportRefused(Exception):
    """The export cannot be made as asked. ``str(error)`` is one sentence for the user;
    ``field`` names the form field at fault, if one is."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class ExportParameters:
    """What the requester asked for, validated (by :mod:`jmirror_web.exports.forms`)."""

    format: ExportFormat
    start: datetime | None = None
    end: datetime | None = None
    packet_filter: PacketFilter = field(default_factory=PacketFilter)
    member_format: ExportFormat = ExportFormat.PCAPNG  # ZIP only

    def filter_json(self) -> dict[str, list[Any]]:
        return {
            "addresses": sorted(str(a) for a in self.packet_filter.addresses),
            "ports": sorted(self.packet_filter.ports),
            "protocols": sorted(self.packet_filter.protocols),
        }

    @property
    def converts(self) -> bool:
        """Whether the file (or the zip's members) is an IP-only pcap: a conversion."""
        member = self.member_format if self.format == ExportFormat.ZIP else self.format
        return member == ExportFormat.PCAP_IP

    def audit_details(self) -> dict[str, Any]:
        details: dict[str, Any] = {
            "format": str(self.format),
            "start": _iso(self.start),
            "end": _iso(self.end),
            "filter": self.filter_json(),
        }
        if self.format == ExportFormat.ZIP:
            details["member_format"] = str(self.member_format)
        if self.converts:
            details["conversion"] = CONVERSION_STATEMENT
        return details


@dataclass
class PreparedExport:
    """An export checked and ready to stream; nothing is recorded yet."""

    kind: Export.Kind
    case: Case
    intercept: Intercept | None  # None for a case export
    session: Session | None
    parameters: ExportParameters
    sessions: list[tuple[Session, list[CaptureFile]]]
    file_name: str
    engine_request: ExportRequest
    sources: list[dict[str, Any]] = field(default_factory=list)


# Times ---------------------------------------------------------------------------------


def to_ns(moment: datetime) -> int:
    """An aware datetime as integer nanoseconds since the epoch (exact: no float)."""
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else None


def _shown(moment: datetime) -> str:
    text = f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S}"
    if moment.microsecond:
        text += f".{moment.microsecond:06d}"
    return text


def warrant_window(intercept: Intercept) -> tuple[datetime, datetime]:
    """When the intercept may have stored anything: its own window inside its case's."""
    case = intercept.case
    return max(case.valid_from, intercept.valid_from), min(case.valid_until, intercept.valid_until)


def _check_window(
    parameters: ExportParameters, intercept: Intercept | None, case: Case | None = None
) -> tuple[datetime, datetime]:
    """The window to export: the asked one, which must lie inside the warrant (the
    intercept's, or the case's for a case export), with an unbounded side taken from the
    warrant. Exports never reach outside the warrant, even when a record was changed
    after the packets were stored."""
    if intercept is not None:
        allowed_from, allowed_until = warrant_window(intercept)
        warrant = f"case {intercept.case.reference}, intercept {intercept.liid}"
    else:
        assert case is not None
        allowed_from, allowed_until = case.valid_from, case.valid_until
        warrant = f"case {case.reference}"
    start, end = parameters.start, parameters.end
    if start is not None and end is not None and start >= end:
        raise ExportRefused("The window's start must be before its end.", "end")
    if (start is not None and not allowed_from <= start < allowed_until) or (
        end is not None and not allowed_from < end <= allowed_until
    ):
        raise ExportRefused(
            f"The window must lie inside the warrant: {warrant}, allows {_shown(allowed_from)} to "
            f"{_shown(allowed_until)} UTC.",
            "start" if start is not None and not allowed_from <= start < allowed_until else "end",
        )
    return start or allowed_from, end or allowed_until


# Files ---------------------------------------------------------------------------------


def file_path(capture: CaptureFile) -> Path:
    """The file of a CaptureFile row (:meth:`CaptureFile.on_disk`); refused when the row
    names a place outside the sessions directory."""
    try:
        return capture.on_disk()
    except OutsideSessionsDirectory as error:
        raise ExportRefused(str(error)) from None


def capture_opener(capture: CaptureFile) -> Opener:
    """Opens ``capture``'s file for the engine wherever it is when the export reaches it
    (:func:`~jmirror_web.intercepts.evidence_store.open_capture`: the final name, the
    ``.part``, the final name again, then the object in the store, the row read again),
    and keeps what it opened to the end of the file: a rotation, an idle close, an upload
    or the removal of the local copy after that changes nothing for the export (Linux keeps
    an unlinked open file readable; an object version never changes)."""

    def opener() -> OpenedSource:
        try:
            stream, growing = open_capture(capture)
        except (CaptureUnavailable, OutsideSessionsDirectory) as error:
            raise SourceError(str(error)) from None
        if isinstance(stream, ObjectReader):
            return OpenedSource(stream, stream.size, growing)
        try:
            size = os.fstat(stream.fileno()).st_size
        except OSError as error:
            stream.close()
            raise SourceError(
                f"The stored file {Path(capture.path).name} cannot be read ({error.strerror})."
            ) from None
        return OpenedSource(stream, size, growing)

    return opener


def _files_in(
    sessions: list[Session], start: datetime, end: datetime
) -> dict[int, list[CaptureFile]]:
    """Per session, its files that may hold packets in ``[start, end)`` in time order (one
    query for all the sessions); refused when any of them was purged (an export missing
    part of its window would mislead)."""
    files = CaptureFile.objects.filter(
        Q(first_packet__isnull=True) | Q(first_packet__lt=end),
        Q(last_packet__isnull=True) | Q(last_packet__gte=start),
        session__in=[session.pk for session in sessions],
    ).order_by(F("first_packet").asc(nulls_last=True), "pk")
    found: dict[int, list[CaptureFile]] = {session.pk: [] for session in sessions}
    for each in files:
        found[each.session_id].append(each)
    for session in sessions:
        purged = [each for each in found[session.pk] if each.purged_at is not None]
        if purged:
            raise ExportRefused(
                f"{len(purged)} capture file(s) of session {_session_label(session)} in this "
                "window were purged under the case's retention period; their packets cannot "
                "be exported."
            )
    return found


def still_open_elsewhere(capture: CaptureFile) -> bool:
    """Whether the file of ``capture`` is being written on another capture host and this
    host cannot read it: no web process reaches into a capture host (it needs no inbound
    connection), so an export leaves the file out and its manifest says so. A file this
    host can read (a shared directory) is exported as any other."""
    if capture.closed or not capture.node or capture.node == settings.NODE_NAME:
        return False
    try:
        path = capture.on_disk()
    except OutsideSessionsDirectory:
        return False  # refused by file_path as any other
    return not (path.exists() or path.with_name(path.name + PART_SUFFIX).exists())


def _split_open_elsewhere(
    files: list[CaptureFile],
) -> tuple[list[CaptureFile], list[CaptureFile]]:
    """``files`` as (those the export reads, those still being written on another
    host: :func:`still_open_elsewhere`)."""
    elsewhere = [each for each in files if still_open_elsewhere(each)]
    return [each for each in files if each not in elsewhere], elsewhere


def _open_elsewhere_text(files: list[CaptureFile]) -> str:
    """Where and when the packets of ``files`` are, for a sentence to the user."""
    parts = [
        f"node {each.node} from {_shown(each.first_packet) if each.first_packet else '?'} to "
        f"{_shown(each.last_packet) if each.last_packet else '?'} UTC ({each.packets} packets)"
        for each in files
    ]
    return "; ".join(parts)


def _ns_bounds(capture: CaptureFile) -> tuple[int | None, int | None]:
    # The row's times are cut to the microsecond; the last one is widened to the end of
    # its microsecond so that no packet of the file is taken to lie outside it.
    first = to_ns(capture.first_packet) if capture.first_packet else None
    last = to_ns(capture.last_packet) + 999 if capture.last_packet else None
    return first, last


def _safe(text: str) -> str:
    return _UNSAFE.sub("-", text).strip("-.")[:40] or "x"


def _stamp(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y%m%dT%H%M%SZ}"


def _session_part(session: Session) -> str:
    """How file and member names tell a session of its router: a CN2 (Contrail)
    session by its analyzer port (its mid is the same for all), a jmirror one by its
    mid and sid."""
    if session.is_contrail:
        return f"contrail-port-{session.analyzer_port}"
    return f"mid-{session.mid:08x}_sid-{session.sid:08x}"


def _session_label(session: Session) -> str:
    """A session in a sentence for the user: its sid, or its analyzer port for CN2."""
    if session.is_contrail:
        return f"Contrail analyzer port {session.analyzer_port}"
    return f"{session.sid:#x}"


def _session_facts(session: Session) -> str:
    """The session's router and mirror in a description or comment."""
    router = f"router {session.router.name} ({session.router.address})"
    if session.is_contrail:
        return f"{router} Contrail analyzer port {session.analyzer_port}"
    return f"{router} mid {session.mid:#x} sid {session.sid:#x}"


def _session_name(session: Session) -> str:
    return f"{_safe(session.router.name)}_{_session_part(session)}"


def _session_source(
    session: Session,
    files: list[CaptureFile],
    window: Window | None = None,
    *,
    with_liid: bool = False,
) -> SessionSource:
    # A case export's interfaces come from several intercepts: their names start with
    # the LIID (for one intercept the file name already says it).
    name = _session_name(session)
    if with_liid and session.intercept is not None:
        name = f"{_safe(session.intercept.liid)}_{name}"
    return SessionSource(
        name=name,
        description=(
            f"{session.intercept.liid if session.intercept else ''} {_session_facts(session)}"
        ),
        files=[
            # linktype 0: the engine reads it from the file's header.
            SourceFile(file_path(each), 0, *_ns_bounds(each), opener=capture_opener(each))
            for each in files
        ],
        window=window,
    )


def _not_included_record(capture: CaptureFile) -> dict[str, Any]:
    """A file an export left out because it is still being written on another capture
    host: which, where, the span and the packets its receiver had reported (it keeps
    writing: more may follow within the same file)."""
    return {
        "id": capture.pk,
        "name": Path(capture.path).name,
        "node": capture.node,
        "reason": "still being written on another capture host",
        "first_packet": _iso(capture.first_packet),
        "last_packet": _iso(capture.last_packet),
        "packets": capture.packets,
        "bytes": capture.bytes,
    }


def _source_record(
    session: Session, files: list[CaptureFile], elsewhere: list[CaptureFile] | None = None
) -> dict[str, Any]:
    return {
        "session": session.pk,
        "intercept": session.intercept_id,
        "liid": session.intercept.liid if session.intercept else None,
        "router": session.router.name,
        "router_address": session.router.address,
        "mid": f"{session.mid:#x}",
        "sid": f"{session.sid:#x}",
        "analyzer_port": session.analyzer_port,
        "files": [
            {
                "id": each.pk,
                "name": Path(each.path).name,
                "sha256": each.sha256 or None,
                "packets": each.packets,
                "closed": each.closed,
            }
            for each in files
        ],
        # Left out: still being written on another capture host (the manifest's notes).
        "not_included": [_not_included_record(each) for each in elsewhere or []],
    }


def _check_engine(engine_request: ExportRequest) -> None:
    try:
        engine.check(engine_request)
    except ExportError as error:
        raise ExportRefused(str(error)) from None


# Link types, for the forms ----------------------------------------------------------

# At most this many stored file headers are read to draw an export form: the warning of
# mixed link types is advice (the export itself checks every file it reads).
MAX_HEADERS_PROBED: Final = 200


def link_types_of(
    sessions: QuerySet[Session], limit: int = MAX_HEADERS_PROBED
) -> dict[int, set[int]]:
    """Per session (by id), the link types of its stored, unpurged files, read from their
    headers (a CaptureFile row does not record it): a session's reading stops once two
    are seen, and all reading after ``limit`` headers (and ten times as many rows). A
    file that cannot be read is passed over: the export says what is wrong with it."""
    found: dict[int, set[int]] = {}
    files = CaptureFile.objects.filter(
        session__in=sessions.values("pk"), purged_at__isnull=True
    ).order_by("session", F("first_packet").asc(nulls_last=True), "pk")
    read = 0
    for capture in files[: limit * 10].iterator():
        seen = found.setdefault(capture.session_id, set())
        if len(seen) > 1 or still_open_elsewhere(capture):
            continue
        if read >= limit:
            break
        read += 1
        try:
            stream, _growing = open_capture(capture)
        except (CaptureUnavailable, OutsideSessionsDirectory):
            continue
        try:
            seen.add(read_header(stream, Path(capture.path).name).linktype)
        except SourceError:
            continue
        finally:
            stream.close()
    return found


def mixed_link_types(sessions: QuerySet[Session]) -> dict[Session, str]:
    """The sessions whose files mix link types (which one pcap file cannot hold), each
    with its link types in words (:func:`link_types_of`), in order of first traffic."""
    mixed = {pk: types for pk, types in link_types_of(sessions).items() if len(types) > 1}
    if not mixed:
        return {}
    return {
        session: engine.linktype_names(mixed[session.pk])
        for session in sessions.filter(pk__in=mixed)
        .select_related("router")
        .order_by("first_seen", "pk")
    }


# Preparing -----------------------------------------------------------------------------


def prepare_session_export(session: Session, parameters: ExportParameters) -> PreparedExport:
    """One session, whole or in a window, filtered or not, as one pcap or pcapng file, or
    as an IP-only pcap (a conversion)."""
    intercept = session.intercept
    if intercept is None:
        raise ExportRefused("This session belongs to no intercept; it cannot be exported.")
    if parameters.format not in FILE_FORMATS:
        raise ExportRefused("A session is exported as pcap, pcapng or pcap-ip.", "format")
    start, end = _check_window(parameters, intercept)
    if start > session.last_seen or end <= session.first_seen:
        raise ExportRefused(
            f"Session {_session_label(session)} has no traffic in that window: its packets span "
            f"{_shown(session.first_seen)} to {_shown(session.last_seen)} UTC.",
            "start",
        )
    files, elsewhere = _split_open_elsewhere(_files_in([session], start, end)[session.pk])
    if not files and elsewhere:
        raise ExportRefused(
            f"Session {_session_label(session)} has its packets in that window only in a file "
            f"still being written on another capture host ({_open_elsewhere_text(elsewhere)}); "
            f"it can be exported once that file closes (after "
            f"{settings.JMIRROR_SESSION_QUIET_SECONDS} s without a packet, or at rotation)."
        )
    if not files:
        raise ExportRefused(f"Session {_session_label(session)} has no stored file in that window.")
    shown_start = parameters.start or session.first_seen
    shown_end = parameters.end or session.last_seen
    # A jmirror session by its sid (the LIID says the mid), a CN2 one by its port.
    mirror = (
        f"contrail-port-{session.analyzer_port}"
        if session.is_contrail
        else f"sid-{session.sid:08x}"
    )
    name = (
        f"{_safe(intercept.liid)}_{_safe(session.router.name)}_{mirror}_"
        f"{_stamp(shown_start)}-{_stamp(shown_end)}"
        f"{'_ip-only' if parameters.converts else ''}.{parameters.format.extension}"
    )
    engine_request = ExportRequest(
        sessions=[_session_source(session, files)],
        format=parameters.format,
        window=Window(to_ns(start), to_ns(end)),
        packet_filter=parameters.packet_filter,
    )
    _check_engine(engine_request)
    return PreparedExport(
        kind=Export.Kind.SESSION,
        case=intercept.case,
        intercept=intercept,
        session=session,
        parameters=parameters,
        sessions=[(session, files)],
        file_name=name,
        engine_request=engine_request,
        sources=[_source_record(session, files, elsewhere)],
    )


def prepare_intercept_export(intercept: Intercept, parameters: ExportParameters) -> PreparedExport:
    """Every session of an intercept with traffic in the window: one pcapng (an interface
    per session) or a zip of per-session files."""
    _check_many_format(parameters, "An intercept")
    start, end = _check_window(parameters, intercept)
    return _prepare_sessions(
        Export.Kind.INTERCEPT,
        intercept.case,
        intercept,
        parameters,
        [(intercept, _sessions_in(intercept, start, end))],
        (start, end),
        stem=f"{_safe(intercept.liid)}_all-sessions",
        nothing=f"Intercept {intercept.liid}",
    )


def prepare_case_export(case: Case, parameters: ExportParameters) -> PreparedExport:
    """Every session of every intercept of a case with traffic in the window, each
    intercept kept to its own warrant inside the case's: one pcapng (an interface per
    session) or a zip of per-session files."""
    _check_many_format(parameters, "A case")
    start, end = _check_window(parameters, None, case)
    groups = []
    for intercept in case.intercepts.select_related("case").order_by("pk"):
        inside = _inside_warrant(intercept, start, end)
        if inside is not None:
            groups.append((intercept, _sessions_in(intercept, *inside)))
    return _prepare_sessions(
        Export.Kind.CASE,
        case,
        None,
        parameters,
        groups,
        (start, end),
        stem=f"{_safe(case.reference)}_case",
        nothing=f"Case {case.reference}",
    )


def _check_many_format(parameters: ExportParameters, what: str) -> None:
    if parameters.format not in (ExportFormat.PCAPNG, ExportFormat.ZIP):
        raise ExportRefused(
            f"{what} is exported as one pcapng file or a zip of per-session files.", "format"
        )


def _inside_warrant(
    intercept: Intercept, start: datetime, end: datetime
) -> tuple[datetime, datetime] | None:
    """The part of ``[start, end)`` inside the intercept's warrant, None when none is."""
    allowed_from, allowed_until = warrant_window(intercept)
    inside = max(start, allowed_from), min(end, allowed_until)
    return inside if inside[0] < inside[1] else None


def _sessions_in(intercept: Intercept, start: datetime, end: datetime) -> list[Session]:
    return list(
        intercept.sessions.filter(first_seen__lt=end, last_seen__gte=start)
        .select_related("router", "intercept")
        .order_by("first_seen", "pk")
    )


def _prepare_sessions(
    kind: Export.Kind,
    case: Case,
    intercept: Intercept | None,
    parameters: ExportParameters,
    groups: list[tuple[Intercept, list[Session]]],
    window: tuple[datetime, datetime],
    *,
    stem: str,
    nothing: str,
) -> PreparedExport:
    """Several sessions, grouped by intercept, as one pcapng or a zip: each group is read
    only inside its intercept's warrant within ``window`` (for an intercept export that is
    ``window`` itself, already checked against it)."""
    start, end = window
    chosen: list[tuple[Session, list[CaptureFile], Window]] = []
    # Per session, its files in the window still being written on another capture host:
    # left out, and said so in the manifest (a session with nothing else is listed too).
    elsewhere: dict[int, list[CaptureFile]] = {}
    left_out: list[Session] = []
    for each_intercept, sessions in groups:
        inside = _inside_warrant(each_intercept, start, end)
        if inside is None or not sessions:
            continue
        files_of = _files_in(sessions, *inside)
        limit = Window(to_ns(inside[0]), to_ns(inside[1]))
        for session in sessions:
            files, elsewhere[session.pk] = _split_open_elsewhere(files_of[session.pk])
            if files:
                chosen.append((session, files, limit))
            elif elsewhere[session.pk]:
                left_out.append(session)
    if not chosen:
        if left_out:
            missing = [file for session in left_out for file in elsewhere[session.pk]]
            raise ExportRefused(
                f"{nothing} has its traffic between {_shown(start)} and {_shown(end)} UTC "
                f"only in files still being written on other capture hosts "
                f"({_open_elsewhere_text(missing)}); it can be exported once they close.",
                "start",
            )
        raise ExportRefused(
            f"{nothing} has no stored traffic between {_shown(start)} and {_shown(end)} UTC.",
            "start",
        )
    # Interfaces (or zip members) in order of first traffic, whichever intercept.
    chosen.sort(key=lambda each: (each[0].first_seen, each[0].pk))
    left_out.sort(key=lambda session: (session.first_seen, session.pk))
    first_seen = min(session.first_seen for session, _, _ in chosen)
    last_seen = max(session.last_seen for session, _, _ in chosen)
    extension = "zip" if parameters.format == ExportFormat.ZIP else "pcapng"
    name = (
        f"{stem}_{_stamp(parameters.start or first_seen)}-"
        f"{_stamp(parameters.end or last_seen)}.{extension}"
    )
    engine_request = ExportRequest(
        sessions=[
            _session_source(session, files, limit, with_liid=kind == Export.Kind.CASE)
            for session, files, limit in chosen
        ],
        format=parameters.format,
        window=Window(to_ns(start), to_ns(end)),
        packet_filter=parameters.packet_filter,
        member_format=parameters.member_format,
    )
    _check_engine(engine_request)
    return PreparedExport(
        kind=kind,
        case=case,
        intercept=intercept,
        session=None,
        parameters=parameters,
        sessions=[(session, files) for session, files, _ in chosen],
        file_name=name,
        engine_request=engine_request,
        sources=[
            _source_record(session, files, elsewhere[session.pk]) for session, files, _ in chosen
        ]
        + [_source_record(session, [], elsewhere[session.pk]) for session in left_out],
    )


@dataclass(frozen=True)
class CaseContents:
    """What a case export of the whole case window would hold, from the CaptureFile rows
    alone (no file is read): files count whole, so packets and bytes are an upper bound
    once a window or a filter narrows the export."""

    intercepts: int
    sessions: int
    files: int
    packets: int
    bytes: int

    @classmethod
    def of(cls, intercepts: Iterable[Intercept]) -> CaseContents:
        """From intercepts annotated by :func:`with_export_contents`."""
        rows = [each for each in intercepts if getattr(each, "export_files", 0)]
        return cls(
            intercepts=len(rows),
            sessions=sum(getattr(each, "export_sessions", 0) for each in rows),
            files=sum(getattr(each, "export_files", 0) for each in rows),
            packets=sum(getattr(each, "export_packets", 0) for each in rows),
            bytes=sum(getattr(each, "export_bytes", 0) for each in rows),
        )


def with_export_contents(intercepts: QuerySet[Intercept]) -> QuerySet[Intercept]:
    """Each intercept with the stored, unpurged files that meet its warrant inside its
    case's: ``export_sessions``, ``export_files``, ``export_packets``, ``export_bytes``.
    Subqueries in the intercepts' own query (the case page counts its queries)."""
    files = CaptureFile.objects.filter(
        Q(first_packet__isnull=True)
        | Q(first_packet__lt=Least(OuterRef("valid_until"), OuterRef("case__valid_until"))),
        Q(last_packet__isnull=True)
        | Q(last_packet__gte=Greatest(OuterRef("valid_from"), OuterRef("case__valid_from"))),
        session__intercept=OuterRef("pk"),
        purged_at__isnull=True,
    ).order_by()

    def total(aggregate: Any) -> Coalesce:
        found = files.values("session__intercept").annotate(total=aggregate).values("total")
        return Coalesce(Subquery(found[:1]), 0)

    return intercepts.annotate(
        export_sessions=total(Count("session", distinct=True)),
        export_files=total(Count("pk")),
        export_packets=total(Sum("packets")),
        export_bytes=total(Sum("bytes")),
    )


def case_contents(case: Case) -> CaseContents:
    """What the whole case would export (one query)."""
    return CaseContents.of(with_export_contents(case.intercepts.all()))


def section_comment(export: Export, prepared: PreparedExport) -> str:
    """The pcapng section comment: who exported what, from which warrant, when."""
    case = prepared.case
    parameters = prepared.parameters
    liids = list(
        dict.fromkeys(
            session.intercept.liid for session, _ in prepared.sessions if session.intercept
        )
    )
    lines = [
        f"jmirror-web evidence export {export.pk}",
        f"LIID: {', '.join(liids)}",
        f"Case: {case.reference}" + (f" ({case.agency})" if case.agency else ""),
    ]
    for session, _ in prepared.sessions:
        # A case export holds several intercepts: each session names its own.
        liid = (
            f"LIID {session.intercept.liid} "
            if prepared.kind == Export.Kind.CASE and session.intercept
            else ""
        )
        lines.append(f"Session: {liid}{_session_facts(session)}")
    # The file itself says what it leaves out, as the manifest does.
    for source in prepared.sources:
        for part in source.get("not_included", []):
            lines.append(
                f"Not included: session {source['router']} mid {source['mid']} sid "
                f"{source['sid']}, {part['packets']} packets from {part['first_packet']} to "
                f"{part['last_packet']}, still being written on capture host {part['node']}"
            )
    lines += [
        f"Window: {_iso(parameters.start) or 'session start'} to "
        f"{_iso(parameters.end) or 'session end'} (UTC)",
        f"Filter: {filter_text(parameters.filter_json())}",
        f"Requester: {export.requester_name}",
        f"Exported at: {_iso(export.created_at)}",
    ]
    return "\n".join(lines)


# Recording -----------------------------------------------------------------------------

REFUSED: Final = "export.refused"


def audit_refusal(
    request: HttpRequest,
    obj: Session | Intercept | Case | Export | None,
    reason: str,
    details: dict[str, Any] | None = None,
) -> None:
    """Record an export refused for its parameters, by a user entitled to the object
    (refusals of the object itself go through :mod:`jmirror_web.audit.refusals`)."""
    record(REFUSED, obj, request=request, details={"reason": reason, **(details or {})})


def _conversion_record(prepared: PreparedExport) -> dict[str, Any]:
    """What an IP-only pcap converts, from which stored files (with the SHA-256 recorded
    for each, None for a file still open); its counts are added when it completes."""
    return {
        "from": "PPP in HDLC framing (link type 50) and raw IP (link type 101)",
        "to": "raw IP (link type 101)",
        "statement": CONVERSION_STATEMENT,
        "source_files": [
            {"session": source["session"], "name": file["name"], "sha256": file["sha256"]}
            for source in prepared.sources
            for file in source["files"]
        ],
        "ppp_frames_converted": None,
        "raw_ip_packets_copied": None,
        "ppp_control_left_out": None,
    }


def start(prepared: PreparedExport, request: HttpRequest) -> ExportStream:
    """Record the export (state streaming, ``export.start``) and open its byte stream."""
    user = request.user
    parameters = prepared.parameters
    export = Export.objects.create(
        requester=user if user.is_authenticated else None,
        requester_name=user.get_username(),
        source_address=client_address(request),
        kind=prepared.kind,
        case=prepared.case,
        intercept=prepared.intercept,
        session=prepared.session,
        format=parameters.format,
        member_format=parameters.member_format if parameters.format == ExportFormat.ZIP else "",
        window_start=parameters.start,
        window_end=parameters.end,
        packet_filter=parameters.filter_json(),
        file_name=prepared.file_name,
        sources=prepared.sources,
    )
    export.comment = section_comment(export, prepared)
    if parameters.converts:
        export.conversion = _conversion_record(prepared)
    export.save(update_fields=["comment", "conversion"])
    engine_request = ExportRequest(
        sessions=prepared.engine_request.sessions,
        format=prepared.engine_request.format,
        window=prepared.engine_request.window,
        packet_filter=prepared.engine_request.packet_filter,
        comment=export.comment,
        member_format=prepared.engine_request.member_format,
    )
    record(
        "export.start",
        export,
        request=request,
        details={
            "kind": str(prepared.kind),
            "file_name": export.file_name,
            "sessions": export.session_ids,
            **parameters.audit_details(),
        },
    )
    return ExportStream(export, engine_request, request)


class ExportStream:
    """One export's bytes, and the bookkeeping when they end (see the module docstring).

    The engine's generator may be advanced from a worker thread (ASGI) while the server
    closes the response from another: a lock keeps the two apart, so that ``close`` waits
    for the chunk being read instead of closing a running generator.
    """

    def __init__(self, export: Export, engine_request: ExportRequest, request: HttpRequest):
        self.export = export
        self.digest = ExportDigest()
        self._chunks: Iterator[bytes] = engine.stream_export(engine_request, self.digest)
        self._request = request
        self._lock = threading.Lock()
        self._finished = False
        self.bytes_sent = 0

    def next_chunk(self) -> bytes | None:
        """The next chunk, or None at the end. Raises :class:`ExportError` (no DB access:
        safe from any thread)."""
        with self._lock:
            if self._finished:
                return None
            chunk = next(self._chunks, None)
            if chunk is not None:
                self.bytes_sent += len(chunk)
            return chunk

    def _details(self) -> dict[str, Any]:
        return {
            "requester": self.export.requester_name,
            "file_name": self.export.file_name,
            "sessions": self.export.session_ids,
            "format": self.export.format,
            "start": _iso(self.export.window_start),
            "end": _iso(self.export.window_end),
            "filter": self.export.packet_filter,
        }

    def complete(self) -> None:
        with self._lock:
            if self._finished:
                return
            self._finished = True
        digest = self.digest
        export = self.export
        export.state = Export.State.COMPLETE
        export.completed_at = timezone.now()
        export.sha256, export.size, export.packets = digest.sha256, digest.size, digest.packets
        export.first_packet_ns, export.last_packet_ns = digest.first_ns, digest.last_ns
        export.members = {
            name: {"sha256": sha256, "size": size, "packets": packets}
            for name, (sha256, size, packets) in digest.members.items()
        }
        export.bytes_sent = self.bytes_sent
        export.juniper_headers_dropped = digest.juniper_headers_dropped
        conversion: dict[str, Any] = {}
        if export.conversion:
            conversion = {
                "ppp_frames_converted": digest.ppp_converted,
                "raw_ip_packets_copied": digest.raw_ip_copied,
                "ppp_control_left_out": digest.ppp_left_out,
            }
            export.conversion = {**export.conversion, **conversion}
        export.save()
        record(
            "export.complete",
            export,
            request=self._request,
            details={
                **self._details(),
                "sha256": export.sha256,
                "size": export.size,
                "packets": export.packets,
                **(
                    {"conversion": {"statement": CONVERSION_STATEMENT, **conversion}}
                    if conversion
                    else {}
                ),
            },
        )

    def fail(self, error: Exception) -> None:
        with self._lock:
            if self._finished:
                return
            self._finished = True
            with contextlib.suppress(Exception):  # the first error is the one to record
                self._close_chunks()
        if isinstance(error, ExportError):
            why = str(error)
        else:  # a bug or an unforeseen failure: the record still says the export failed
            logger.error("export %s failed", self.export.pk, exc_info=error)
            why = f"The export stopped on an unexpected error ({type(error).__name__}: {error})."
        self._end(Export.State.FAILED, "export.failed", why[:2000])

    def close(self) -> None:
        """Called by Django when the response is closed: an export not finished by then
        lost its client."""
        with self._lock:
            if self._finished:
                return
            self._finished = True
            self._close_chunks()
        self._end(Export.State.ABORTED, "export.aborted", "")

    def _close_chunks(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()

    def _end(self, state: Export.State, action: str, error: str) -> None:
        export = self.export
        export.state = state
        export.completed_at = timezone.now()
        export.bytes_sent = self.bytes_sent
        export.error = error
        export.save(update_fields=["state", "completed_at", "bytes_sent", "error"])
        record(
            action,
            export,
            request=self._request,
            details={**self._details(), "bytes_sent": self.bytes_sent, "error": error or None},
        )


class _SyncBody:
    """The body for WSGI and the sync test client."""

    def __init__(self, stream: ExportStream) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                chunk = self._stream.next_chunk()
            except Exception as error:  # any failure: recorded, then the server cuts
                self._stream.fail(error)
                raise  # the server cuts the connection: the client sees an incomplete file
            if chunk is None:
                self._stream.complete()
                return
            yield chunk

    def close(self) -> None:
        self._stream.close()


class _AsyncBody:
    """The body under ASGI: each chunk is read off the event loop, so the loop never
    waits on the disk or the store and only one chunk is in memory at a time.

    Thread-sensitive: Django runs each request's thread-sensitive work on a thread of
    its own (``ThreadSensitiveContext``), so the chunks are read on the request's thread,
    where its database connection lives and is closed when the request finishes. Opening
    a file may read its row again (it was uploaded since the export started); in a
    shared worker thread that would leave connections open that nothing closes. One
    thread also keeps ``next_chunk`` and the response's ``close`` apart.

    A failure re-raises after the record says FAILED: the server must then abort the
    connection, never end the body as if complete (under ``manage.py serve``
    :mod:`jmirror_web.server.flow_control` does)."""

    def __init__(self, stream: ExportStream) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        step = sync_to_async(self._stream.next_chunk, thread_sensitive=True)
        while True:
            try:
                chunk = await step()
            except Exception as error:  # any failure: recorded, then the server cuts
                await sync_to_async(self._stream.fail)(error)
                # Django neither closes a response whose body raised nor says the
                # request finished: its database connection, on the request's thread,
                # would stay open after the thread is gone. Said here instead.
                await signals.request_finished.asend(sender=type(self))
                raise
            if chunk is None:
                await sync_to_async(self._stream.complete)()
                return
            yield chunk

    def close(self) -> None:
        self._stream.close()


def streaming_response(stream: ExportStream, request: HttpRequest) -> StreamingHttpResponse:
    """The download response: attachment, never cached, named and numbered."""
    export = stream.export
    body: _SyncBody | _AsyncBody = (
        _AsyncBody(stream) if isinstance(request, ASGIRequest) else _SyncBody(stream)
    )
    response = StreamingHttpResponse(body, content_type=CONTENT_TYPES[ExportFormat(export.format)])
    response["Content-Disposition"] = f'attachment; filename="{export.file_name}"'
    response["Cache-Control"] = "no-store"
    response["X-Export-Id"] = str(export.pk)
    return response
