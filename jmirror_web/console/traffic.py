"""Each case's traffic over time for the dashboard: packets per minute over the last hour
and per hour over the last day, from the receiver's per-minute counts
(:class:`~jmirror_web.intercepts.models.TrafficMinute`), drawn as small SVG lines on the
server (no script, nothing for the browser to fetch).

Two queries for all cases, whatever their number: the database sums the minutes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from django.db.models import QuerySet, Sum
from django.db.models.functions import TruncHour
from django.utils.html import format_html
from django.utils.safestring import SafeString

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
