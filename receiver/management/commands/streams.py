"""``manage.py streams [--json]``: what the receivers have seen, for the operator's shell.

Sessions (claimed streams) with their counters and pcap files (and the node that wrote
each), then the unclaimed (source, mid, sid) with their counts, marked ``unclaimed`` and
with the reason their packets were dropped, so an LI administrator can register the
router or create the intercept. Metadata only: no packet content is read.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, TypedDict

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Prefetch

from jmirror_web.intercepts.models import CaptureFile, Session, UnclaimedStream

DEFAULT_LIMIT = 1000
MAX_LIMIT = 1_000_000


class FileEntry(TypedDict):
    path: str
    packets: int
    bytes: int
    first_packet: str | None
    last_packet: str | None
    sha256: str
    closed: bool
    node: str  # the capture host that wrote it ("" before node names)


class SessionEntry(TypedDict):
    status: str  # "claimed"
    id: int
    router: str
    router_address: str
    mid: str
    sid: str
    liid: str | None
    case: str | None
    first_seen: str
    last_seen: str
    packets: int
    bytes: int
    stored_packets: int
    files: list[FileEntry]


class UnclaimedEntry(TypedDict):
    status: str  # "unclaimed"
    source: str
    router: str | None
    mid: str
    sid: str
    reason: str
    packets: int
    first_seen: str
    last_seen: str


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def _mid_text(mid: int, contrail: bool) -> str:
    # A Contrail stream has no mirror id: its mid is a marker (receiver.contrail.CONTRAIL_MID)
    # and its sid the analyzer port the vRouter sends to.
    return "contrail" if contrail else f"{mid:#010x}"


def _sid_text(sid: int, contrail: bool) -> str:
    return f"port {sid}" if contrail else f"{sid:#010x}"


def session_entries(limit: int) -> list[SessionEntry]:
    sessions = (
        Session.objects.select_related("router", "intercept__case")
        .prefetch_related(Prefetch("files", queryset=CaptureFile.objects.order_by("first_packet")))
        .order_by("-last_seen")[:limit]
    )
    return [
        SessionEntry(
            status="claimed",
            id=session.pk,
            router=session.router.name,
            router_address=session.router.address,
            mid=_mid_text(session.mid, session.is_contrail),
            sid=_sid_text(session.sid, session.is_contrail),
            liid=session.intercept.liid if session.intercept else None,
            case=session.intercept.case.reference if session.intercept else None,
            first_seen=_time(session.first_seen) or "",
            last_seen=_time(session.last_seen) or "",
            packets=session.packets,
            bytes=session.bytes,
            stored_packets=session.stored_packets,
            files=[
                FileEntry(
                    path=row.path,
                    packets=row.packets,
                    bytes=row.bytes,
                    first_packet=_time(row.first_packet),
                    last_packet=_time(row.last_packet),
                    sha256=row.sha256,
                    closed=row.closed,
                    node=row.node,
                )
                for row in session.files.all()
            ],
        )
        for session in sessions
    ]


def unclaimed_entries(limit: int) -> list[UnclaimedEntry]:
    streams = UnclaimedStream.objects.select_related("router").order_by("-last_seen")[:limit]
    return [
        UnclaimedEntry(
            status="unclaimed",
            source=stream.source,
            router=stream.router.name if stream.router else None,
            # A source's streams past its limit, counted together (receiver.pipeline).
            mid="other" if stream.is_aggregate else _mid_text(stream.mid, stream.is_contrail),
            sid="other" if stream.is_aggregate else _sid_text(stream.sid, stream.is_contrail),
            reason=stream.reason,
            packets=stream.packets,
            first_seen=_time(stream.first_seen) or "",
            last_seen=_time(stream.last_seen) or "",
        )
        for stream in streams
    ]


class Command(BaseCommand):
    help = (
        "List the streams the receivers have seen: sessions with counters and pcap files, "
        "and unclaimed (router, mid, sid) with their counts and drop reason."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
        parser.add_argument(
            "--limit",
            type=int,
            default=DEFAULT_LIMIT,
            metavar="N",
            help=f"at most N sessions and N unclaimed streams, latest first "
            f"(default {DEFAULT_LIMIT})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        limit = options["limit"]
        if not 1 <= limit <= MAX_LIMIT:
            raise CommandError(f"--limit must be between 1 and {MAX_LIMIT}")
        sessions = session_entries(limit)
        unclaimed = unclaimed_entries(limit)
        if options["json"]:
            self.stdout.write(json.dumps({"sessions": sessions, "unclaimed": unclaimed}, indent=1))
            return
        self._print_table(sessions, unclaimed)

    def _print_table(self, sessions: list[SessionEntry], unclaimed: list[UnclaimedEntry]) -> None:
        write = self.stdout.write
        if not sessions and not unclaimed:
            write("no streams seen yet")
            return
        header = (
            f"{'STATUS':<10} {'ROUTER':<16} {'MID':<10} {'SID':<10} {'LIID / REASON':<25} "
            f"{'PACKETS':>10} {'BYTES':>12}  LAST SEEN (UTC)"
        )
        write(header)
        for session in sessions:
            write(
                f"{'claimed':<10} {session['router'][:16]:<16} {session['mid']:<10} "
                f"{session['sid']:<10} {session['liid'] or '-':<25} {session['packets']:>10} "
                f"{session['bytes']:>12}  {session['last_seen']}"
            )
            for file in session["files"]:
                state = "" if file["closed"] else "  (open)"
                node = f" on {file['node']}" if file["node"] else ""
                write(f"{'':<10} file {file['path']} ({file['packets']} packets){node}{state}")
        for stream in unclaimed:
            router = stream["router"] or stream["source"]
            write(
                f"{'unclaimed':<10} {router[:16]:<16} {stream['mid']:<10} {stream['sid']:<10} "
                f"{stream['reason']:<25} {stream['packets']:>10} {'':>12}  {stream['last_seen']}"
            )
