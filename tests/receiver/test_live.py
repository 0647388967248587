"""The live summary publisher without Django: grouping, pacing, and a failing layer."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from receiver import live
from receiver.live import Batch, LivePublisher
from receiver.live_contract import HEALTH_GROUP, case_group, intercept_group, session_group
from receiver.pipeline import RECENT_PACKETS, ListenerCounters, SessionDelta, Snapshot
from receiver.store import SessionKey
from receiver.traffic import ipv4_udp, jmirror_datagram
from receiver.watch import LiveWatch

NOW = 1_800_000_000 * 10**9
# The session of snapshot() watched every way a page can: its session, intercept and case.
EVERY_WAY = LiveWatch(
    streams=frozenset({(1, 0x300, 9)}), intercepts=frozenset({7}), cases=frozenset({3})
)


def snapshot(
    time_ns: int, packets: int, *, final: bool = False, active_sessions: int = 0
) -> Snapshot:
    delta = SessionDelta(1, 7, 3, "LIID7", time_ns, SessionKey("LIID7", "192.0.2.1", 0x300, 9))
    packet = jmirror_datagram(bytes(ipv4_udp()), mid=0x300, sid=9)
    for index in range(packets):
        delta.packets += 1
        delta.bytes += 100
        delta.stored += 1
        delta.recent.append((time_ns + index, packet))
    return Snapshot(
        time_ns=time_ns,
        previous_ns=time_ns - 250_000_000,
        sessions={("192.0.2.1", 0x300, 9): delta} if packets else {},
        closed_files=[],
        open_files=[],
        listener=ListenerCounters(datagrams=packets, bytes=packets * 100, drops=Counter()),
        sockets=[],
        unclaimed={},
        store_errors=Counter(),
        final=final,
        active_sessions=active_sessions,
    )


def test_a_batch_summarises_each_session_to_its_groups_and_health_without_case_data():
    publisher = LivePublisher(
        lambda batch: None, session_ids={(1, 0x300, 9): 55}, receiver="h:1", watch=EVERY_WAY
    )
    publisher.offer(snapshot(NOW, 40))
    publisher._absorb(publisher._queue.get_nowait())
    # The loop counts the sessions active in the last seconds; the health summary says it.
    batch = publisher.batch(snapshot(NOW, 0, active_sessions=1))

    groups = [group for group, _ in batch]
    assert groups == [session_group(55), intercept_group(7), case_group(3), HEALTH_GROUP]
    summary = batch[0][1]
    assert summary["type"] == "live.session"
    assert (summary["packets"], summary["session_id"], summary["liid"]) == (40, 55, "LIID7")
    # A sample of the most recent packets, not one row per packet.
    assert len(summary["recent"]) == RECENT_PACKETS
    health = batch[-1][1]
    assert health["type"] == "live.health"
    assert "liid" not in health
    assert "recent" not in health
    assert health["active_sessions"] == 1


def test_a_session_without_a_row_yet_goes_to_its_intercept_and_case_only():
    publisher = LivePublisher(lambda batch: None, session_ids={}, receiver="h:1", watch=EVERY_WAY)
    publisher._absorb(snapshot(NOW, 1))
    groups = [group for group, _ in publisher.batch(snapshot(NOW, 0))]
    assert groups == [intercept_group(7), case_group(3), HEALTH_GROUP]


def run_publisher(publisher: LivePublisher, snapshots: list[Snapshot], pause: float) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=publisher.run, args=(stop,), daemon=True)
    thread.start()
    for each in snapshots:
        publisher.offer(each)
        time.sleep(pause)
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_summaries_are_paced_whatever_the_tick_rate():
    batches: list[Batch] = []
    publisher = LivePublisher(
        batches.append, session_ids={}, receiver="h:1", interval=0.25, watch=EVERY_WAY
    )
    ticks = [snapshot(NOW + i * 20_000_000, 5) for i in range(50)]  # every 20 ms for 1 s
    run_publisher(publisher, [*ticks, snapshot(NOW + 10**9, 0, final=True)], 0.02)

    sessions = [m for batch in batches for g, m in batch if g == case_group(3)]
    assert 3 <= len(sessions) <= 6
    # Nothing lost by coalescing: the intervals add up.
    assert sum(m["packets"] for m in sessions) == 250


def test_a_failing_layer_drops_summaries_counted_and_delivery_resumes(monkeypatch):
    monkeypatch.setattr(live, "_RETRY_PAUSES", (0.1,))
    delivered: list[Batch] = []
    failing = {"on": True}

    def send(batch: Batch) -> None:
        if failing["on"]:
            raise ConnectionError("redis is down")
        delivered.append(batch)

    publisher = LivePublisher(send, session_ids={}, receiver="h:1", interval=0.05, watch=EVERY_WAY)
    stop = threading.Event()
    thread = threading.Thread(target=publisher.run, args=(stop,), daemon=True)
    thread.start()
    for i in range(10):
        publisher.offer(snapshot(NOW + i * 50_000_000, 1))
        time.sleep(0.05)
    assert publisher.dropped > 0
    assert not delivered
    failing["on"] = False
    for i in range(10, 20):
        publisher.offer(snapshot(NOW + i * 50_000_000, 1))
        time.sleep(0.05)
    publisher.offer(snapshot(NOW + 21 * 50_000_000, 0, final=True))
    thread.join(timeout=5)
    stop.set()
    assert delivered
    assert delivered[-1][-1][1]["live_dropped"] == publisher.dropped


def test_offer_never_blocks_when_the_publisher_is_stuck():
    publisher = LivePublisher(lambda batch: None, session_ids={}, receiver="h:1")
    one = snapshot(NOW, 1)
    for _ in range(1000):  # nobody runs the publisher: its queue fills, offers go on
        publisher.offer(one)
    # Each refused snapshot counts its session summary and its health summary.
    assert publisher.dropped == (1000 - live._QUEUE_SIZE) * 2


@pytest.mark.parametrize("factory", [session_group, intercept_group, case_group])
def test_group_names_are_valid_channels_group_names(factory):
    from channels.layers import BaseChannelLayer

    # Raises TypeError for a name Channels would refuse.
    assert BaseChannelLayer().require_valid_group_name(factory(2**63)) is True
    assert BaseChannelLayer().require_valid_group_name(HEALTH_GROUP) is True
