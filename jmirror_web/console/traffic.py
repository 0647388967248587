"""Each case's picture for the dashboard: packets per minute over the last hour and per
hour over the last day, from the receiver's per-minute counts
(:class:`~jmirror_web.intercepts.models.TrafficMinute`), drawn as small SVG lines on the
server (no script, nothing for the browser to fetch); and its top talkers, the addresses
its targets exchanged the most bytes with over the last day, from the conversations
(:mod:`jmirror_web.conversations`).

Four queries for all cases, whatever their number: the database sums the minutes and the
conversations.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from django.db.models import Count, F, QuerySet, Sum
from django.db.models.functions import TruncHour
from django.utils.html import format_html
from django.utils.safestring import SafeString

from jmirror_web.conversations.models import Conversation
from jmirror_web.intercepts.models import Case, TrafficMinute

HOUR_BINS: Final = 60  # minutes
DAY_BINS: Final = 24  # hours
WIDTH: Final = 120
HEIGHT: Final = 24


@dataclass
class CaseTraffic:
    """Packets and bytes per bin, oldest first."""

    hour_packets: list[int] = field(default_factory=lambda: [0] * HOUR_BINS)
    hour_bytes: list[int] = field(default_factory=lambda: [0] * HOUR_BINS)
    day_packets: list[int] = field(default_factory=lambda: [0] * DAY_BINS)
    day_bytes: list[int] = field(default_factory=lambda: [0] * DAY_BINS)

    @property
    def hour_line(self) -> SafeString:
        return sparkline(
            self.hour_packets, f"{sum(self.hour_packets):,} packets in the last hour", "minute"
        )

    @property
    def day_line(self) -> SafeString:
        return sparkline(
            self.day_packets, f"{sum(self.day_packets):,} packets in the last day", "hour"
        )


def case_traffic(cases: QuerySet[Case], now: datetime) -> dict[int, CaseTraffic]:
    """Per case id (of ``cases``), its traffic over the last hour and day before ``now``."""
    this_minute = now.replace(second=0, microsecond=0)
    hour_start = this_minute - timedelta(minutes=HOUR_BINS - 1)
    this_hour = now.replace(minute=0, second=0, microsecond=0)
    day_start = this_hour - timedelta(hours=DAY_BINS - 1)
    found: dict[int, CaseTraffic] = {}
    minutes = TrafficMinute.objects.filter(session__intercept__case__in=cases.values("pk"))
    by_minute = (
        minutes.filter(minute__gte=hour_start, minute__lte=this_minute)
        .values("session__intercept__case", "minute")
        .annotate(packets_sum=Sum("packets"), bytes_sum=Sum("bytes"))
    )
    for row in by_minute:
        traffic = found.setdefault(row["session__intercept__case"], CaseTraffic())
        at = int((row["minute"] - hour_start) / timedelta(minutes=1))
        traffic.hour_packets[at] += row["packets_sum"]
        traffic.hour_bytes[at] += row["bytes_sum"]
    by_hour = (
        minutes.filter(minute__gte=day_start, minute__lte=this_minute)
        .annotate(hour=TruncHour("minute"))
        .values("session__intercept__case", "hour")
        .annotate(packets_sum=Sum("packets"), bytes_sum=Sum("bytes"))
    )
    for row in by_hour:
        traffic = found.setdefault(row["session__intercept__case"], CaseTraffic())
        at = int((row["hour"] - day_start) / timedelta(hours=1))
        traffic.day_packets[at] += row["packets_sum"]
        traffic.day_bytes[at] += row["bytes_sum"]
    return found


def sparkline(values: Iterable[int], label: str, unit: str) -> SafeString:
    """A line of ``values`` (oldest first) in a WIDTH x HEIGHT SVG, scaled to its peak,
    its label as the title a screen reader and a hovering pointer get."""
    series = list(values)
    peak = max(series, default=0)
    step = WIDTH / max(1, len(series) - 1)
    points = " ".join(
        f"{index * step:.1f},{HEIGHT - 1 - (value / peak * (HEIGHT - 2) if peak else 0):.1f}"
        for index, value in enumerate(series)
    )
    title = f"{label}; peak {peak:,} packets per {unit}"
    return format_html(
        '<svg class="sparkline" viewBox="0 0 {} {}" width="{}" height="{}" role="img" '
        'aria-label="{}"><title>{}</title><polyline points="{}"/></svg>',
        WIDTH,
        HEIGHT,
        WIDTH,
        HEIGHT,
        title,
        title,
        points,
    )


TOP_TALKERS: Final = 3
# (session, address) pairs read per query: the busiest of the last day across the cases.
_PAIRS_READ: Final = 20_000


@dataclass(frozen=True)
class Talker:
    address: str
    bytes: int
    packets: int
    sessions: int


def top_talkers(
    cases: QuerySet[Case], now: datetime, count: int = TOP_TALKERS
) -> dict[int, list[Talker]]:
    """Per case id, the ``count`` addresses its sessions exchanged the most bytes with in
    conversations seen over the last day, biggest first. A session's own addresses (the
    target's: per IP version, the one in most of its conversations) are not talkers."""
    since = now - timedelta(days=1)
    recent = Conversation.objects.filter(
        session__intercept__case__in=cases.values("pk"), last_seen__gte=since
    )
    # Per (case, session, address): bytes, packets, conversations, and conversations it
    # started (side A), for either side.
    sides: dict[tuple[int, int, str], list[int]] = {}
    for side in ("address_a", "address_b"):
        rows = (
            recent.values("session__intercept__case", "session", side)
            .annotate(
                bytes_sum=Sum(F("bytes_ab") + F("bytes_ba")),
                packets_sum=Sum(F("packets_ab") + F("packets_ba")),
                conversations=Count("pk"),
            )
            .order_by("-bytes_sum")[:_PAIRS_READ]
        )
        for row in rows:
            key = (row["session__intercept__case"], row["session"], row[side])
            totals = sides.setdefault(key, [0, 0, 0, 0])
            totals[0] += row["bytes_sum"]
            totals[1] += row["packets_sum"]
            totals[2] += row["conversations"]
            if side == "address_a":
                totals[3] += row["conversations"]
    # A session's own addresses, one per IP version (a dual-stack subscriber has two):
    # in the most of its conversations of that version; between two (a session of one
    # conversation), the one that started more of them, as a subscriber usually does.
    own: dict[tuple[int, bool], tuple[int, int, str]] = {}
    for (_case, session, address), (_b, _p, conversations, started) in sides.items():
        family = (session, ":" in address)
        if (conversations, started) > own.get(family, (0, 0, ""))[:2]:
            own[family] = (conversations, started, address)
    by_case: dict[int, dict[str, list[int]]] = {}
    for (case, session, address), (size, packets, _c, _s) in sides.items():
        if own[(session, ":" in address)][2] == address:
            continue
        totals = by_case.setdefault(case, {}).setdefault(address, [0, 0, 0])
        totals[0] += size
        totals[1] += packets
        totals[2] += 1
    return {
        case: [
            Talker(address, size, packets, sessions)
            for address, (size, packets, sessions) in sorted(
                talkers.items(), key=lambda item: (-item[1][0], item[0])
            )[:count]
        ]
        for case, talkers in by_case.items()
    }
