"""The record of every export: what was asked, by whom, and exactly what left the system.

An :class:`Export` row is made before the first byte is sent (state ``streaming``) and
finished when the stream ends: ``complete`` with the SHA-256, size and packet count of
the bytes the requester received (computed while streaming), ``aborted`` when the client
went away, ``failed`` when a stored file could not be read. Its :meth:`Export.manifest`
is the chain-of-custody document handed out afterwards.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from django.conf import settings
from django.db import models
from django.utils import timezone

from jmirror_web.exports.request import filter_text
from jmirror_web.intercepts.models import Case, Intercept, Session

MANIFEST_SCHEMA: Final = "jmirror-web/export-manifest/1"
# What every IP-only pcap says of itself, in its manifest and its audit records.
CONVERSION_STATEMENT: Final = (
    "This file is a conversion, not a copy of the stored records: the IP packets the "
    "stored PPP frames carry were written as raw IP packets with their PPP framing "
    "(address, control and protocol fields) removed, raw IP packets were copied as "
    "stored, and PPP control packets (LCP, PAP, CHAP, IPCP...) were left out. The stored "
    "files listed, with their recorded SHA-256, remain the evidence."
)


def ns_text(time_ns: int | None) -> str | None:
    """Nanoseconds since the epoch as ISO 8601 UTC with all nine digits (manifests keep
    packet times exact: a datetime would cut them to the microsecond)."""
    if time_ns is None:
        return None
    seconds, nanoseconds = divmod(time_ns, 1_000_000_000)
    return f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%dT%H:%M:%S}.{nanoseconds:09d}Z"


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else None


class Export(models.Model):
    class State(models.TextChoices):
        STREAMING = "streaming", "streaming"
        COMPLETE = "complete", "complete"
        ABORTED = "aborted", "aborted by the client"
        FAILED = "failed", "failed"

    class Kind(models.TextChoices):
        SESSION = "session", "one session"
        INTERCEPT = "intercept", "all sessions of an intercept"
        CASE = "case", "all sessions of a case"

    requester = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="exports",
    )
    # Kept with the row: the chain of custody outlives a deleted user.
    requester_name = models.CharField(max_length=150)
    source_address = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.STREAMING)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    case = models.ForeignKey(Case, on_delete=models.PROTECT, related_name="exports")
    # Null for a case export, which covers several intercepts (see ``sources``).
    intercept = models.ForeignKey(
        Intercept, on_delete=models.PROTECT, related_name="exports", null=True, blank=True
    )
    # Null for an intercept or case export, which covers several sessions (see ``sources``).
    session = models.ForeignKey(
        Session, on_delete=models.PROTECT, related_name="exports", null=True, blank=True
    )
    format = models.CharField(max_length=8)  # engine.ExportFormat
    member_format = models.CharField(max_length=8, blank=True)  # zip members' format
    window_start = models.DateTimeField(null=True, blank=True)
    window_end = models.DateTimeField(null=True, blank=True)
    # {"addresses": [...], "ports": [...], "protocols": [...]}, empty lists when unfiltered.
    packet_filter = models.JSONField(default=dict)
    file_name = models.CharField(max_length=255)
    comment = models.TextField(blank=True)  # the pcapng section comment
    # Per session: id, router, mid, sid and the files read, each with its recorded SHA-256.
    sources = models.JSONField(default=list)
    sha256 = models.CharField(max_length=64, blank=True, db_index=True)
    size = models.PositiveBigIntegerField(default=0)
    packets = models.PositiveBigIntegerField(default=0)
    first_packet_ns = models.BigIntegerField(null=True, blank=True)
    last_packet_ns = models.BigIntegerField(null=True, blank=True)
    # Zip exports: member name -> {"sha256", "size", "packets"}.
    members = models.JSONField(default=dict)
    bytes_sent = models.PositiveBigIntegerField(default=0)
    error = models.TextField(blank=True)
    # pcap output of CN2 (Contrail) sessions: packets whose Juniper header (kept per
    # packet as pcapng options in the stored files) pcap could not hold.
    juniper_headers_dropped = models.PositiveBigIntegerField(default=0)
    # An IP-only pcap (format or member format pcap-ip) is a conversion, not a copy of the
    # stored records: what it converted, from which files, and its counts once complete
    # (see :data:`CONVERSION_STATEMENT`); empty for every other export.
    conversion = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"export {self.pk} {self.file_name}"

    @property
    def filter_text(self) -> str:
        """The filter in words: "no filter", or each criterion with its values."""
        return filter_text(self.packet_filter)

    @property
    def session_ids(self) -> list[int]:
        return [int(source["session"]) for source in self.sources]

    def intercepts(self) -> list[dict[str, Any]]:
        """The intercepts of the sources, in order of first appearance. Sources recorded
        before case exports name no intercept: theirs is the export's own."""
        found: dict[int, dict[str, Any]] = {}
        for source in self.sources:
            if "intercept" in source:
                found.setdefault(
                    int(source["intercept"]), {"id": source["intercept"], "liid": source["liid"]}
                )
        if not found and self.intercept is not None:
            return [{"id": self.intercept_id, "liid": self.intercept.liid}]
        return list(found.values())

    def notes(self) -> list[str]:
        """What the exported file does not hold of the stored evidence, one sentence each
        (the manifest's ``notes``, shown on its page)."""
        notes = []
        if self.conversion:
            notes.append(self._conversion_note())
        if self.juniper_headers_dropped:
            count = self.juniper_headers_dropped
            notes.append(
                f"The Juniper header of {count} packet{'s' if count != 1 else ''} "
                "(direction, capture host, actions, VN names) is not in this export: pcap "
                "cannot hold per-packet options. The stored files keep it, and a pcapng "
                "export of the same packets keeps it too."
            )
        unhashed = [
            file["name"]
            for source in self.sources
            for file in source["files"]
            if not file.get("sha256") and not file.get("closed")
        ]
        if unhashed:
            count = len(unhashed)
            notes.append(
                f"No SHA-256 was recorded yet for {count} source file{'s' if count != 1 else ''} "
                f"still being written when the export started ({', '.join(unhashed[:10])}"
                f"{', ...' if count > 10 else ''}): a file's SHA-256 is recorded when it closes "
                "(after a quiet time without packets, or at rotation) and is then shown on its "
                "session's page. Every closed file is listed with its recorded SHA-256."
            )
        for source in self.sources:
            for part in source.get("not_included", []):
                mirror = (
                    f"Contrail analyzer port {source['analyzer_port']}"
                    if source.get("analyzer_port")
                    else f"mid {source['mid']} sid {source['sid']}"
                )
                notes.append(
                    f"Not included: {part['packets']} packets of session {source['router']} "
                    f"{mirror} from {part['first_packet']} to {part['last_packet']} (UTC), as "
                    f"its receiver had reported them when the export started, in file "
                    f"{part['name']} still being written on capture host {part['node']}. Web "
                    "processes read only closed files of other hosts; a later export includes "
                    "it once it closes."
                )
        return notes

    def _conversion_note(self) -> str:
        counts = self.conversion
        if counts.get("ppp_frames_converted") is None:
            done = "Its counts are recorded only when the export completes."
        else:
            done = (
                f"It holds {counts['ppp_frames_converted']} packets taken out of PPP frames "
                f"and {counts['raw_ip_packets_copied']} raw IP packets as stored; "
                f"{counts['ppp_control_left_out']} PPP control packets were left out."
            )
        return f"{CONVERSION_STATEMENT} {done}"

    def manifest(self) -> dict[str, Any]:
        """The export's chain-of-custody manifest, JSON-ready. ``schema`` names its
        version: fields are only ever added under the same name."""
        return {
            "schema": MANIFEST_SCHEMA,
            "export": self.pk,
            "state": self.state,
            "kind": self.kind,
            "requester": self.requester_name,
            "source_address": self.source_address,
            "created_at": _iso(self.created_at),
            "completed_at": _iso(self.completed_at),
            "case": {
                "id": self.case_id,
                "reference": self.case.reference,
                "valid_from": _iso(self.case.valid_from),
                "valid_until": _iso(self.case.valid_until),
            },
            "intercept": (
                {"id": self.intercept_id, "liid": self.intercept.liid}
                if self.intercept is not None
                else None
            ),
            # Every intercept the export drew from (one but for a case export).
            "intercepts": self.intercepts(),
            "sessions": [
                {
                    "id": source["session"],
                    "liid": source.get("liid", self.intercept.liid if self.intercept else None),
                    "router": source["router"],
                    "router_address": source["router_address"],
                    "mid": source["mid"],
                    "sid": source["sid"],
                    # A CN2 (Contrail) session's analyzer port; None for jmirror.
                    "analyzer_port": source.get("analyzer_port"),
                    "files": source["files"],
                    # Files left out: still being written on another capture host.
                    "not_included": source.get("not_included", []),
                }
                for source in self.sources
            ],
            "window": {"start": _iso(self.window_start), "end": _iso(self.window_end)},
            "filter": self.packet_filter,
            "format": self.format,
            "member_format": self.member_format or None,
            "file_name": self.file_name,
            "comment": self.comment,
            "sha256": self.sha256 or None,
            "size": self.size,
            "packets": self.packets,
            "first_packet": ns_text(self.first_packet_ns),
            "last_packet": ns_text(self.last_packet_ns),
            "members": self.members,
            "bytes_sent": self.bytes_sent,
            "error": self.error or None,
            # What the file leaves out of the stored evidence (pcap of CN2 sessions).
            "juniper_headers_dropped": self.juniper_headers_dropped,
            # An IP-only pcap: what was converted, from which files, with which counts.
            "conversion": self.conversion or None,
            "notes": self.notes(),
        }
