"""What one websocket connection holds between two ``updates`` messages (sans-I/O).

The receiver's summaries are not forwarded one by one: :class:`UpdateBuffer` coalesces
them per subscription, and the consumer takes everything at most 10 times a second (and
only while the browser keeps up: :mod:`.flow`).

Bounded by construction, whatever the packet rate and however long the browser does not
read: the buffer's size does not depend on how many summaries arrive, only on

- the number of subscriptions (at most ``MAX_SUBSCRIPTIONS``, checked by the consumer);
- per session, intercept or case subscription: at most :data:`MAX_SESSIONS` session
  entries of fixed size (summed counters and the latest identity fields) and at most
  :data:`MAX_ROWS` packet rows in all, in a ``deque(maxlen=...)``, so an extra row pushes
  out the oldest one;
- per dashboard: one fixed-size entry per case, and the dashboard's cases are capped
  (:data:`MAX_DASHBOARD_CASES`);
- per health subscription: the latest summary of at most :data:`MAX_RECEIVERS` receivers;
- every string and list copied in is cut to a fixed length (:func:`_text`), and only the
  known fields of the contract (:mod:`receiver.live_contract`) are copied, so an
  unexpected field from the receiver neither grows the buffer nor reaches the browser.

A summary that would need more (a session beyond the cap, a row pushed out) is counted in
``dropped`` and left out; counters are summed, never queued.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from jmirror_web.live.protocol import Stream, SubscriptionKey

MAX_ROWS: Final = 50
MAX_SESSIONS: Final = 256
MAX_DASHBOARD_CASES: Final = 1000
MAX_RECEIVERS: Final = 32
# Health summaries' dict and list fields (drop reasons, errno names, listeners).
_MAX_HEALTH_ENTRIES: Final = 64
# Longer than any text field of the contract legitimately is (info is at most
# receiver.live_contract.INFO_LIMIT characters).
_MAX_TEXT: Final = 200
# Identities of recently seen summaries, for telling apart copies of one summary.
SEEN_LIMIT: Final = 4096

_SESSION_IDENTITY: Final = ("session_id", "router_id", "mid", "sid", "intercept_id", "case_id")
_ROW_FIELDS: Final = ("time_ns", "src", "dst", "sport", "dport", "protocol", "length", "inner")
CONTENT_FIELD: Final = "info"
TIME_TEXT_FIELD: Final = "time_ns_text"
_HEALTH_NUMBERS: Final = (
    "time_ns",
    "interval_ns",
    "datagrams",
    "bytes",
    "datagrams_per_second",
    "bytes_per_second",
    "malformed",
    "unstorable",
    "internal_errors",
    "open_files",
    "active_sessions",
    "live_dropped",
    "live_deferred",
    "live_rows_dropped",
)
_LISTENER_FIELDS: Final = ("address", "datagrams", "bytes", "kernel_drops", "rcvbuf")

SessionKey = tuple[int, int, int]  # router id, mid, sid: a session before it has a row
Item = dict[str, Any]


def _text(value: Any) -> Any:
    return value[:_MAX_TEXT] if isinstance(value, str) else value


def _scalar(value: Any) -> Any:
    """A JSON scalar from the receiver, or None: nothing nested is copied blindly."""
    if value is None or isinstance(value, bool | int | float):
        return value
    return _text(value) if isinstance(value, str) else None


def packet_row(row: Mapping[str, Any], *, content: bool) -> dict[str, Any]:
    """A packet row with the contract's fields only, plus ``time_ns_text`` (``time_ns`` as
    a string); ``info`` (a summary of the packet's content) only for a user with the
    content right on its case."""
    result = {name: _scalar(row.get(name)) for name in _ROW_FIELDS}
    time_ns = result["time_ns"]
    # A JavaScript number is exact up to 2**53 only and a time in ns since the epoch is
    # near 2**61: the page links a row to its stored packet by this exact decimal string.
    exact = isinstance(time_ns, int) and not isinstance(time_ns, bool)
    result[TIME_TEXT_FIELD] = str(time_ns) if exact else None
    if content:
        result[CONTENT_FIELD] = _scalar(row.get(CONTENT_FIELD))
    return result


def summary_identity(summary: Mapping[str, Any]) -> Hashable:
    """What tells one session summary from another: the receiver sends one summary to
    the session, intercept and case groups, so a connection in several of them gets
    copies that must count once."""
    return (
        "session",
        *(summary.get(name) for name in ("router_id", "mid", "sid", "time_ns", "interval_ns")),
        *(summary.get(name) for name in ("packets", "bytes", "first_ns", "last_ns")),
    )


class SeenMessages:
    """A bounded memory of recent summary identities (oldest forgotten first)."""

    def __init__(self, limit: int = SEEN_LIMIT) -> None:
        self._limit = limit
        self._seen: OrderedDict[Hashable, None] = OrderedDict()

    def first_time(self, identity: Hashable) -> bool:
        if identity in self._seen:
            return False
        self._seen[identity] = None
        if len(self._seen) > self._limit:
            self._seen.popitem(last=False)
        return True


@dataclass
class _Span:
    """Counters summed over the summaries of one interval or more."""

    packets: int = 0
    bytes: int = 0
    stored: int = 0
    start_ns: int | None = None
    end_ns: int | None = None

    def add(self, summary: Mapping[str, Any]) -> None:
        self.packets += int(summary["packets"])
        self.bytes += int(summary["bytes"])
        self.stored += int(summary.get("stored") or 0)
        end = int(summary["time_ns"])
        start = end - int(summary["interval_ns"])
        self.start_ns = start if self.start_ns is None else min(self.start_ns, start)
        self.end_ns = end if self.end_ns is None else max(self.end_ns, end)

    def rates(self) -> dict[str, Any]:
        # Summaries of several sessions (or receivers) over the same interval add up; over
        # consecutive intervals they average: both are the count over the covered span.
        end = self.end_ns or 0
        interval = max(end - (self.start_ns or 0), 1)
        seconds = interval / 1e9
        return {
            "time_ns": end,
            "interval_ns": interval,
            "packets": self.packets,
            "bytes": self.bytes,
            "packets_per_second": round(self.packets / seconds, 1),
            "bytes_per_second": round(self.bytes / seconds, 1),
        }


@dataclass
class _SessionEntry:
    identity: dict[str, Any]
    span: _Span = field(default_factory=_Span)
    first_ns: int | None = None
    last_ns: int | None = None

    def add(self, summary: Mapping[str, Any]) -> None:
        session_id = self.identity.get("session_id")
        self.identity = {name: _scalar(summary.get(name)) for name in _SESSION_IDENTITY}
        # The row's id becomes known a second after the session starts; keep it then.
        if self.identity["session_id"] is None:
            self.identity["session_id"] = session_id
        self.identity["liid"] = _text(summary.get("liid"))
        self.span.add(summary)
        first, last = int(summary["first_ns"]), int(summary["last_ns"])
        self.first_ns = first if self.first_ns is None else min(self.first_ns, first)
        self.last_ns = last if self.last_ns is None else max(self.last_ns, last)


@dataclass
class _Pending:
    sessions: dict[SessionKey, _SessionEntry] = field(default_factory=dict)
    rows: deque[tuple[SessionKey, Mapping[str, Any]]] = field(
        default_factory=lambda: deque(maxlen=MAX_ROWS)
    )
    cases: dict[int, _Span] = field(default_factory=dict)
    health: dict[str, Item] = field(default_factory=dict)


class UpdateBuffer:
    """The pending items of one connection, per subscription."""

    def __init__(self) -> None:
        self._pending: dict[SubscriptionKey, _Pending] = {}
        self.dropped = 0

    def __bool__(self) -> bool:
        return bool(self._pending)

    def _of(self, key: SubscriptionKey) -> _Pending:
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Pending()
        return pending

    def add_session(self, key: SubscriptionKey, summary: Mapping[str, Any]) -> None:
        """A session summary for a session, intercept or case subscription."""
        rows = summary.get("recent")
        rows = rows if isinstance(rows, list) else []
        session = (int(summary["router_id"]), int(summary["mid"]), int(summary["sid"]))
        pending = self._of(key)
        entry = pending.sessions.get(session)
        if entry is None:
            if len(pending.sessions) >= MAX_SESSIONS:
                self.dropped += len(rows) + 1
                return
            entry = pending.sessions[session] = _SessionEntry({})
        entry.add(summary)
        # Only the last MAX_ROWS of a summary can survive the deque anyway.
        self.dropped += max(len(rows) - MAX_ROWS, 0)
        for row in rows[-MAX_ROWS:]:
            if not isinstance(row, Mapping):
                continue
            if len(pending.rows) == MAX_ROWS:
                self.dropped += 1
            pending.rows.append((session, row))

    def add_case_counts(
        self, key: SubscriptionKey, case_id: int, summary: Mapping[str, Any]
    ) -> None:
        """A session summary counted into its case's dashboard counters (no rows)."""
        pending = self._of(key)
        span = pending.cases.get(case_id)
        if span is None:
            # The dashboard's cases are capped where it subscribes: this cannot grow past it.
            if len(pending.cases) >= MAX_DASHBOARD_CASES:
                self.dropped += 1
                return
            span = pending.cases[case_id] = _Span()
        span.add(summary)

    def add_health(self, key: SubscriptionKey, health: Mapping[str, Any]) -> None:
        """The latest health summary of each receiver (its totals are cumulative)."""
        pending = self._of(key)
        receiver = str(_text(health.get("receiver")))
        if receiver not in pending.health and len(pending.health) >= MAX_RECEIVERS:
            self.dropped += 1
            return
        pending.health[receiver] = _health(health)

    def discard(self, key: SubscriptionKey) -> None:
        """Forget a subscription's pending items (unsubscribed or revoked)."""
        self._pending.pop(key, None)

    def discard_case(self, key: SubscriptionKey, case_id: int) -> None:
        pending = self._pending.get(key)
        if pending is not None:
            pending.cases.pop(case_id, None)

    def take(self, content: Callable[[SubscriptionKey], bool | None]) -> tuple[list[Item], int]:
        """The items of one ``updates`` message and its ``dropped`` count; empties the
        buffer. ``content(key)`` says whether that subscription may see packet info, or
        None when it no longer exists (its items are left out): it is asked now, not when
        the rows arrived, so a right lost meanwhile applies."""
        items: list[Item] = []
        for key, pending in self._pending.items():
            stream, object_id = key
            may_see_content = content(key)
            if may_see_content is None:
                continue
            if stream == Stream.HEALTH:
                items += [{"stream": stream.value, "health": h} for h in pending.health.values()]
            elif stream == Stream.DASHBOARD:
                items += [
                    {
                        "stream": stream.value,
                        "id": case_id,
                        "case": {"case_id": case_id} | s.rates(),
                    }
                    for case_id, s in pending.cases.items()
                ]
            else:
                items += _session_items(stream, object_id, pending, content=may_see_content)
        dropped = self.dropped
        self._pending = {}
        self.dropped = 0
        return items, dropped


def _session_items(
    stream: Stream, object_id: int | None, pending: _Pending, *, content: bool
) -> list[Item]:
    rows: dict[SessionKey, list[dict[str, Any]]] = {}
    for session, row in pending.rows:
        rows.setdefault(session, []).append(packet_row(row, content=content))
    items = []
    for session, entry in pending.sessions.items():
        summary = entry.identity | entry.span.rates()
        summary |= {
            "stored": entry.span.stored,
            "first_ns": entry.first_ns,
            "last_ns": entry.last_ns,
            "recent": rows.get(session, []),
        }
        items.append({"stream": stream.value, "id": object_id, "session": summary})
    return items


def _health(health: Mapping[str, Any]) -> Item:
    result: Item = {name: _scalar(health.get(name)) for name in _HEALTH_NUMBERS}
    result["receiver"] = _text(health.get("receiver"))
    for name in ("drops", "store_errors"):
        counts = health.get(name)
        counts = counts if isinstance(counts, Mapping) else {}
        result[name] = {
            str(_text(reason)): _scalar(number)
            for reason, number in list(counts.items())[:_MAX_HEALTH_ENTRIES]
        }
    listeners = health.get("listeners")
    listeners = listeners if isinstance(listeners, list) else []
    result["listeners"] = [
        {name: _scalar(each.get(name)) for name in _LISTENER_FIELDS}
        for each in listeners[:_MAX_HEALTH_ENTRIES]
        if isinstance(each, Mapping)
    ]
    return result
