"""A session's conversations (flows) and the names seen in it, summarised from its stored
packets by :mod:`jmirror_web.conversations.summaries` in the background, never on a page
load. Metadata: shown to the holders of the case's metadata right.

The rows are derived from the stored packets and go with them: when a session's last
unpurged file is purged, its summaries are deleted in the same transaction
(:func:`forget_session`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

from django.db import models
from django.db.models import Count, F, Min, Sum
from django.db.models.functions import Coalesce

from jmirror_web.intercepts.models import CaptureFile, Session
from receiver.names import NAME_LIMIT

MAX_CONVERSATIONS: Final = 100_000
"""Conversations kept per session; more are counted in :class:`SessionSummary`."""
MAX_NAMES: Final = 100_000
"""Names kept per session; more are counted in :class:`SessionSummary`."""
ADDRESS_CHARS: Final = 39  # the longest IPv6 text


class TcpSeen(models.IntegerChoices):
    """Bits of what a TCP conversation showed, merged across summarising runs."""

    SYN = 1, "SYN from A"
    SYN_ACK = 2, "SYN-ACK from B"
    FIN_AB = 4, "FIN from A"
    FIN_BA = 8, "FIN from B"
    RST = 16, "RST"
    NO_SYN = 32, "a packet without SYN"


def tcp_state(seen: int) -> str:
    """A TCP conversation's state in words, from its :class:`TcpSeen` bits."""
    if seen & TcpSeen.RST:
        return "reset"
    if seen & TcpSeen.FIN_AB and seen & TcpSeen.FIN_BA:
        return "closed (FIN)"
    if seen & (TcpSeen.FIN_AB | TcpSeen.FIN_BA):
        return "closing (FIN one way)"
    if seen & TcpSeen.SYN and seen & TcpSeen.SYN_ACK:
        return "established"
    if seen & TcpSeen.SYN:
        return "SYN only"
    if seen & TcpSeen.NO_SYN:
        return "started before capture"
    return ""


class Conversation(models.Model):
    """One flow of a session: its protocol and two ends (A is the side seen sending
    first; ports are 0 for protocols without them), when, and how much each way."""

    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="conversations")
    protocol = models.PositiveSmallIntegerField(help_text="IP protocol number.")
    address_a = models.CharField(max_length=ADDRESS_CHARS)
    port_a = models.PositiveIntegerField(default=0)
    address_b = models.CharField(max_length=ADDRESS_CHARS)
    port_b = models.PositiveIntegerField(default=0)
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()
    packets_ab = models.PositiveBigIntegerField(default=0)
    bytes_ab = models.PositiveBigIntegerField(default=0)
    packets_ba = models.PositiveBigIntegerField(default=0)
    bytes_ba = models.PositiveBigIntegerField(default=0)
    tcp_seen = models.PositiveSmallIntegerField(default=0, help_text="TcpSeen bits.")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["session", "protocol", "address_a", "port_a", "address_b", "port_b"],
                name="conversation_unique_per_session",
            )
        ]
        indexes = [
            models.Index(fields=["address_a"], name="conversation_address_a"),
            models.Index(fields=["address_b"], name="conversation_address_b"),
            models.Index(fields=["port_b"], name="conversation_port_b"),
            models.Index(fields=["session", "first_seen"], name="conversation_session_first"),
        ]

    def __str__(self) -> str:
        return f"{self.address_a}:{self.port_a} - {self.address_b}:{self.port_b} ({self.protocol})"

    @property
    def tcp_state(self) -> str:
        return tcp_state(self.tcp_seen) if self.protocol == 6 else ""


class ObservedName(models.Model):
    """A name seen in a session (DNS question or answer, TLS server name, HTTP host),
    with its address: for a DNS answer what it resolved to, else the server's."""

    class Kind(models.TextChoices):
        DNS_QUERY = "dns-query", "DNS question"
        DNS_ANSWER = "dns-answer", "DNS answer"
        TLS_SNI = "tls-sni", "TLS server name"
        HTTP_HOST = "http-host", "HTTP host"

    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="observed_names")
    kind = models.CharField(max_length=12, choices=Kind.choices)
    name = models.CharField(max_length=NAME_LIMIT)
    address = models.CharField(max_length=ADDRESS_CHARS)
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()
    count = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["session", "kind", "name", "address"], name="observed_name_unique"
            )
        ]
        indexes = [
            models.Index(fields=["name"], name="observed_name_name"),
            models.Index(fields=["address"], name="observed_name_address"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.name} ({self.address})"


class SessionSummary(models.Model):
    """What a session's summaries left out: over the caps, or packets whose names could
    not be read (their files unreadable when summarised)."""

    session = models.OneToOneField(Session, on_delete=models.CASCADE, related_name="summary")
    conversations_left_out = models.PositiveBigIntegerField(default=0)
    names_left_out = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"summary of {self.session}"


class SummaryProgress(models.Model):
    """How many of a capture file's packets (in file order) are in the summaries; the
    summariser moves it in the transaction that adds them, so a crash never counts a
    packet twice."""

    capture = models.OneToOneField(
        CaptureFile, on_delete=models.CASCADE, related_name="summary_progress"
    )
    packets = models.PositiveBigIntegerField(default=0)
    # The file could not be read at this many packets (error says why): tried again
    # when its row counts more.
    failed_at = models.PositiveBigIntegerField(null=True, blank=True)
    error = models.CharField(max_length=300, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.capture}: {self.packets} summarised"


def forget_session(session_id: int) -> dict[str, int]:
    """Delete a session's summaries (its stored packets are gone); the rows deleted."""
    deleted = {
        "conversations": Conversation.objects.filter(session_id=session_id).delete()[0],
        "names": ObservedName.objects.filter(session_id=session_id).delete()[0],
    }
    SessionSummary.objects.filter(session_id=session_id).delete()
    SummaryProgress.objects.filter(capture__session_id=session_id).delete()
    return deleted


def unsummarised_files() -> models.QuerySet[CaptureFile]:
    """Unpurged files with packets not in the summaries yet, annotated with ``done`` (the
    packets that are)."""
    return (
        CaptureFile.objects.filter(purged_at__isnull=True, packets__gt=0)
        .annotate(done=Coalesce("summary_progress__packets", 0))
        .filter(packets__gt=F("done"))
    )


@dataclass(frozen=True)
class SummaryBacklog:
    """What the summariser has still to do, for the health page: counts only."""

    files: int = 0
    packets: int = 0
    # The earliest last packet of a waiting file: the summaries are at least this far
    # behind (None: nothing waits).
    behind_since: datetime | None = None
    # Files that could not be read at their current count (tried again later).
    unreadable: int = 0


def summary_backlog() -> SummaryBacklog:
    """The summariser's backlog over every node (two aggregate queries)."""
    waiting = unsummarised_files()
    unreadable = waiting.filter(summary_progress__failed_at=F("packets")).count()
    totals = waiting.exclude(summary_progress__failed_at=F("packets")).aggregate(
        files=Count("pk"),
        packets=Sum(F("packets") - F("done")),
        behind_since=Min("last_packet"),
    )
    return SummaryBacklog(
        files=totals["files"],
        packets=int(totals["packets"] or 0),
        behind_since=totals["behind_since"],
        unreadable=unreadable,
    )
