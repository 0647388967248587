"""The live contract: what the receivers send the websocket consumers through the channel
layer (standard library only; imports neither side).

A receiver (:mod:`receiver.live`) publishes, every ``PUBLISH_INTERVAL`` at most, one
:class:`SessionSummary` per watched session that received packets, to the groups of its
session, intercept and case; one :class:`CaseCounts` per case whose sessions no page
watches while a dashboard is open, to the case's group; and one :class:`HealthSummary`
(no case data in it) to :data:`HEALTH_GROUP`. The consumer
(:mod:`jmirror_web.live.consumers`) joins those groups for the streams a page subscribed
to, and Channels calls its handler named after the message's ``type`` (``live.session``
is ``live_session``). docs/live-protocol.md says what the browser gets of them.

Both sides import this module and nothing of each other: the web process gets the
contract without loading the receive loop, and the receiver without loading Django.
"""

from __future__ import annotations

from typing import Final, Literal, TypedDict

SESSION_MESSAGE: Final = "live.session"
"""Message type of :class:`SessionSummary`; Channels calls a consumer's ``live_session``."""
HEALTH_MESSAGE: Final = "live.health"
"""Message type of :class:`HealthSummary`; Channels calls a consumer's ``live_health``."""
CASE_MESSAGE: Final = "live.case"
"""Message type of :class:`CaseCounts`; the consumer's dashboards count it."""
HEALTH_GROUP: Final = "live.health"

INFO_LIMIT: Final = 120
"""Longest info string a packet row carries (the consumer cuts longer text)."""


def session_group(session_id: int) -> str:
    return f"live.session.{session_id}"


def intercept_group(intercept_id: int) -> str:
    return f"live.intercept.{intercept_id}"


def case_group(case_id: int) -> str:
    return f"live.case.{case_id}"


class PacketRow(TypedDict):
    """One line of the live packet list (:func:`receiver.packet_summary.packet_row`)."""

    time_ns: int
    src: str | None
    dst: str | None
    sport: int | None
    dport: int | None
    protocol: str
    length: int
    inner: str
    info: str


class SessionSummary(TypedDict):
    """What one session received during one interval (``time_ns - interval_ns`` to
    ``time_ns``), sent to its session, intercept and case groups."""

    type: Literal["live.session"]
    time_ns: int
    interval_ns: int
    # None until the session's row exists (the first second of a new session): the
    # stream is then known by router, mid and sid only.
    session_id: int | None
    router_id: int
    mid: int
    sid: int
    intercept_id: int
    case_id: int
    liid: str
    packets: int
    bytes: int
    stored: int
    packets_per_second: float
    bytes_per_second: float
    first_ns: int
    last_ns: int
    # The most recent stored packets of the interval, oldest first (a sample at high rates).
    recent: list[PacketRow]


class CaseCounts(TypedDict):
    """What the sessions of one case that no live page covers received during one
    interval, for the dashboards (sent to the case's group; counts only, no rows)."""

    type: Literal["live.case"]
    time_ns: int
    interval_ns: int
    case_id: int
    packets: int
    bytes: int
    stored: int
    packets_per_second: float
    bytes_per_second: float


class ListenerHealth(TypedDict):
    address: str
    datagrams: int
    bytes: int
    kernel_drops: int | None
    rcvbuf: int


class HealthSummary(TypedDict):
    """The receiver's health for the system administrators: totals since it started and
    rates over the interval. Counts only: no case, session or address in it."""

    type: Literal["live.health"]
    time_ns: int
    interval_ns: int
    receiver: str  # hostname:pid
    datagrams: int
    bytes: int
    datagrams_per_second: float
    bytes_per_second: float
    malformed: int
    unstorable: int
    internal_errors: int
    drops: dict[str, int]
    store_errors: dict[str, int]
    open_files: int
    active_sessions: int
    listeners: list[ListenerHealth]
    # Summaries this publisher could not deliver (layer down or too slow) since start.
    live_dropped: int
    # Since start: session summaries put off to a later round by the per-round bound
    # (their counts were sent later), and packet rows left out by the row bound.
    live_deferred: int
    live_rows_dropped: int


LiveMessage = SessionSummary | CaseCounts | HealthSummary
