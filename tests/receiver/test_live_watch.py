"""Live summaries only for what pages watch, bounded per round, without Django:
the publisher is fed snapshots of many sessions and its batches are inspected."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from receiver import live
from receiver.jmirror import decode_datagram
from receiver.live import (
    LIVE_ROWS_PER_ROUND,
    LIVE_SESSIONS_PER_ROUND,
    Batch,
    LivePublisher,
    share_rows,
)
from receiver.live_contract import HEALTH_GROUP, case_group, intercept_group, session_group
from receiver.pipeline import RECENT_PACKETS, ListenerCounters, SessionDelta, Snapshot
from receiver.store import SessionKey
from receiver.traffic import ipv4_udp, jmirror_datagram
from receiver.watch import NOBODY, LiveWatch

NOW = 1_800_000_000 * 10**9
ROUND = 250_000_000
ROUTER = 1
PACKET = jmirror_datagram(bytes(ipv4_udp()), mid=0x300, sid=1)


def intercept_of(sid: int) -> int:
    """Sessions spread over intercepts 100..109, intercepts over cases 10 and 11."""
    return 100 + sid % 10


def case_of(sid: int) -> int:
    return 10 + sid % 2


def delta(sid: int, time_ns: int, packets: int, rows: int) -> SessionDelta:
    each = SessionDelta(
        ROUTER,
        intercept_of(sid),
        case_of(sid),
        f"LIID{sid}",
        time_ns,
        SessionKey(f"LIID{sid}", "192.0.2.1", 0x300, sid),
    )
    each.packets = packets
    each.bytes = 100 * packets
    each.stored = packets
    for index in range(rows):
        each.recent.append((time_ns + index, PACKET))
    return each


def snapshot(
    time_ns: int,
    sids: range | list[int],
    *,
    packets: int = 3,
    rows: int = 2,
    active_sessions: int = 0,
) -> Snapshot:
    return Snapshot(
        time_ns=time_ns,
        previous_ns=time_ns - ROUND,
        sessions={("192.0.2.1", 0x300, sid): delta(sid, time_ns, packets, rows) for sid in sids},
        closed_files=[],
        open_files=[],
        listener=ListenerCounters(drops=Counter()),
        sockets=[],
        unclaimed={},
        store_errors=Counter(),
        active_sessions=active_sessions,
    )


def publisher(watch: LiveWatch, **bounds: Any) -> LivePublisher:
    made = LivePublisher(lambda batch: None, session_ids={}, receiver="h:1", watch=watch, **bounds)
    made._published_ns = NOW - ROUND
    return made


def rounds(made: LivePublisher, snapshots: list[Snapshot]) -> list[Batch]:
    """Each snapshot absorbed and followed by a round, as the live thread does."""
    batches = []
    for each in snapshots:
        made._absorb(each)
        batches.append(made.batch(each))
    return batches


def summaries(batch: Batch) -> dict[tuple[int, int, int], dict[str, Any]]:
    """The distinct session summaries of a batch (each goes to up to three groups)."""
    found: dict[tuple[int, int, int], dict[str, Any]] = {}
    for _group, message in batch:
        if message["type"] == "live.session":
            found[(message["router_id"], message["mid"], message["sid"])] = dict(message)
    return found


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the packet rows the publisher decodes (the dearest part of a round)."""
    calls: list[int] = []
    real = decode_datagram

    def counting(payload: bytes) -> Any:
        calls.append(1)
        return real(payload)

    monkeypatch.setattr(live, "decode_datagram", counting)
    return calls


# What is watched ----------------------------------------------------------------------


class Untouchable(SessionDelta):
    """A delta the live thread must not copy nor merge (nobody watches its session)."""

    def copy(self) -> SessionDelta:
        raise AssertionError("an unwatched session was copied")


def test_unwatched_sessions_are_neither_copied_summarised_nor_decoded(decoded: list[int]):
    made = publisher(LiveWatch(cases=frozenset({999})))
    tick = snapshot(NOW, range(1, 201))
    for key, each in list(tick.sessions.items()):
        twin = Untouchable(ROUTER, each.intercept_pk, each.case_pk, each.liid, NOW, each.store_key)
        twin.merge(each)
        tick.sessions[key] = twin
    made._absorb(tick)
    batch = made.batch(tick)
    assert [group for group, _ in batch] == [HEALTH_GROUP]
    assert decoded == []


def test_nobody_watching_sends_the_health_summary_only(decoded: list[int]):
    made = publisher(NOBODY)
    [batch] = rounds(made, [snapshot(NOW, range(1, 101), active_sessions=100)])
    [(group, health)] = batch
    assert group == HEALTH_GROUP
    assert health["type"] == "live.health"
    # From the loop's count of active sessions, not from what was summarised.
    assert health["active_sessions"] == 100
    assert decoded == []


def test_a_session_watched_by_itself_goes_to_its_session_group_only():
    made = LivePublisher(
        lambda batch: None,
        session_ids={(ROUTER, 0x300, 7): 70, (ROUTER, 0x300, 8): 80},
        receiver="h:1",
        watch=LiveWatch(streams=frozenset({(ROUTER, 0x300, 7)})),
    )
    [batch] = rounds(made, [snapshot(NOW, [7, 8])])
    assert [group for group, _ in batch] == [session_group(70), HEALTH_GROUP]
    summary: dict[str, Any] = dict(batch[0][1])
    assert (summary["sid"], summary["packets"], len(summary["recent"])) == (7, 3, 2)


def test_sessions_watched_through_their_intercept_go_to_its_group_only():
    made = publisher(LiveWatch(intercepts=frozenset({intercept_of(3)})))
    [batch] = rounds(made, [snapshot(NOW, range(1, 21))])
    assert set(summaries(batch)) == {(ROUTER, 0x300, 3), (ROUTER, 0x300, 13)}
    assert {group for group, _ in batch} == {intercept_group(intercept_of(3)), HEALTH_GROUP}


def test_sessions_watched_through_their_case_go_to_its_group_only():
    made = publisher(LiveWatch(cases=frozenset({case_of(1)})))
    [batch] = rounds(made, [snapshot(NOW, range(1, 21))])
    assert set(summaries(batch)) == {(ROUTER, 0x300, sid) for sid in range(1, 21, 2)}
    assert {group for group, _ in batch} == {case_group(case_of(1)), HEALTH_GROUP}


def test_a_session_no_longer_watched_at_its_round_is_not_summarised():
    made = publisher(LiveWatch(cases=frozenset({10, 11})))
    tick = snapshot(NOW, range(1, 11))
    made._absorb(tick)
    made.watch = LiveWatch(cases=frozenset({10}))
    assert set(summaries(made.batch(tick))) == {(ROUTER, 0x300, sid) for sid in range(2, 11, 2)}


def test_covers_names_a_session_by_stream_intercept_or_case():
    watch = LiveWatch(
        streams=frozenset({(1, 2, 3)}), intercepts=frozenset({4}), cases=frozenset({5})
    )
    assert watch.covers(1, 2, 3, 0, 0)
    assert watch.covers(9, 9, 9, 4, 0)
    assert watch.covers(9, 9, 9, 0, 5)
    assert not watch.covers(1, 2, 4, 0, 0)
    # A dashboard wants per-case counts, not samples of any session.
    assert not LiveWatch(dashboard=True)
    assert not LiveWatch(dashboard=True).covers(1, 2, 3, 4, 5)
    assert watch


# Dashboards ---------------------------------------------------------------------------


def test_dashboards_get_per_case_counts_of_the_sessions_not_covered(decoded: list[int]):
    made = publisher(LiveWatch(streams=frozenset({(ROUTER, 0x300, 1)}), dashboard=True))
    [batch] = rounds(made, [snapshot(NOW, range(1, 1001), packets=2)])
    counts = {m["case_id"]: m for g, m in batch if m["type"] == "live.case"}
    assert set(counts) == {10, 11}
    # One message per case, to its group.
    assert sorted(g for g, m in batch if m["type"] == "live.case") == [
        case_group(10),
        case_group(11),
    ]
    # Session 1 (case 11) is summarised, to its case group too: the dashboards count it
    # there, so the case counts leave it out and nothing counts twice.
    [summary] = summaries(batch).values()
    assert summary["sid"] == 1
    assert (case_group(11), summary) in batch
    assert counts[11]["packets"] + summary["packets"] == 500 * 2
    assert counts[10]["packets"] == 500 * 2
    assert counts[10]["bytes"] == 500 * 200
    assert counts[10]["interval_ns"] == ROUND
    assert counts[10]["packets_per_second"] == 4000.0
    assert "recent" not in counts[10]
    assert len(decoded) == 2  # session 1's two rows, nothing of the 999 others


def test_without_a_dashboard_no_case_counts_are_sent():
    made = publisher(LiveWatch(cases=frozenset({999})))
    [batch] = rounds(made, [snapshot(NOW, range(1, 11))])
    assert not [m for _, m in batch if m["type"] == "live.case"]


# Bounds -------------------------------------------------------------------------------


def test_thousands_of_watched_sessions_are_bounded_per_round_and_nothing_is_lost(
    decoded: list[int],
):
    watched = range(1, 5001)
    made = publisher(LiveWatch(cases=frozenset({10, 11})))
    ticks = [snapshot(NOW + i * ROUND, watched, rows=RECENT_PACKETS) for i in range(3)]
    # Quiet rounds after the traffic: what was left out goes out then.
    ticks += [snapshot(NOW + i * ROUND, []) for i in range(3, 13)]
    sent: Counter[int] = Counter()
    per_round_rows = []
    summaries_sent = 0
    for batch in rounds(made, ticks):
        found = summaries(batch)
        assert len(found) <= LIVE_SESSIONS_PER_ROUND
        rows = sum(len(m["recent"]) for m in found.values())
        assert rows <= LIVE_ROWS_PER_ROUND
        per_round_rows.append(rows)
        summaries_sent += len(found)
        for (_router, _mid, sid), message in found.items():
            sent[sid] += message["packets"]
    # Every watched session's packets of every tick were sent, late or not, exactly once.
    assert sent == dict.fromkeys(watched, 3 * 3)
    assert len(decoded) == sum(per_round_rows)
    health: dict[str, Any] = dict(batch[-1][1])
    assert health["live_deferred"] > 0
    assert health["live_deferred"] == made.deferred
    # Rows past the bound are counted, not silently lost.
    # (A session's sample is its latest RECENT_PACKETS rows however long it waited.)
    assert made.rows_dropped == summaries_sent * RECENT_PACKETS - len(decoded)
    assert health["live_rows_dropped"] == made.rows_dropped


def test_a_session_left_out_waits_its_turn_and_its_interval_spans_the_wait():
    made = publisher(LiveWatch(cases=frozenset({10, 11})), sessions_per_round=2)
    ticks = [snapshot(NOW + i * ROUND, [1, 2, 3]) for i in range(2)]
    first, second = rounds(made, ticks)
    assert set(summaries(first)) == {(ROUTER, 0x300, 1), (ROUTER, 0x300, 2)}
    # The oldest waiting first: session 3, left out once, is not left out again.
    late = summaries(second)
    assert set(late) == {(ROUTER, 0x300, 3), (ROUTER, 0x300, 1)}
    assert late[(ROUTER, 0x300, 3)]["packets"] == 6
    assert late[(ROUTER, 0x300, 3)]["interval_ns"] == 2 * ROUND
    assert late[(ROUTER, 0x300, 1)]["interval_ns"] == ROUND
    assert made.deferred == 1 + 1


def test_rows_are_shared_fairly_across_sessions():
    made = publisher(LiveWatch(cases=frozenset({10, 11})), rows_per_round=10)
    [batch] = rounds(made, [snapshot(NOW, range(1, 6), rows=RECENT_PACKETS)])
    found = summaries(batch)
    assert [len(m["recent"]) for m in found.values()] == [2] * 5
    # Each keeps its most recent rows.
    assert [row["time_ns"] for row in found[(ROUTER, 0x300, 1)]["recent"]] == [
        NOW + RECENT_PACKETS - 2,
        NOW + RECENT_PACKETS - 1,
    ]


@pytest.mark.parametrize(
    ("total", "wants", "given"),
    [
        (10, [2, 2], [2, 2]),
        (10, [16, 1, 16], [5, 1, 4]),
        (3, [4, 4, 4, 4], [1, 1, 1, 0]),
        (0, [4], [0]),
        (256, [], []),
        (7, [0, 16], [0, 7]),
    ],
)
def test_share_rows(total: int, wants: list[int], given: list[int]):
    assert share_rows(total, wants) == given


def test_beyond_the_pending_limit_new_sessions_are_dropped_counted(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setattr(live, "PENDING_LIMIT", 10)
    made = publisher(LiveWatch(cases=frozenset({10, 11})))
    made._absorb(snapshot(NOW, range(1, 16)))
    assert made.dropped == 5
    assert len(summaries(made.batch(snapshot(NOW, [])))) == 10


def test_a_session_watched_before_its_row_is_known_here_is_not_decoded(decoded: list[int]):
    # Its page watches it by Session id; this receiver has not learnt that id yet.
    made = publisher(LiveWatch(streams=frozenset({(ROUTER, 0x300, 7)})))
    [batch] = rounds(made, [snapshot(NOW, [7])])
    assert [group for group, _ in batch] == [HEALTH_GROUP]
    assert decoded == []
    assert made.dropped == 1


def test_merging_never_changes_a_snapshots_delta_the_other_hooks_share():
    made = publisher(LiveWatch(cases=frozenset({10, 11})))
    first, second = snapshot(NOW, [1, 2]), snapshot(NOW + ROUND, [1, 2])
    made._absorb(first)
    made._absorb(second)
    assert [each.packets for each in first.sessions.values()] == [3, 3]
    assert [each.packets for each in second.sessions.values()] == [3, 3]
    assert {m["packets"] for m in summaries(made.batch(second)).values()} == {6}
