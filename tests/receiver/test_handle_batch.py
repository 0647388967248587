"""``DatagramPipeline.handle_batch`` (the receive loop's path) against
``DatagramPipeline.handle`` (the definition): any sequence of datagrams, cut into any
batches, gives the same counters, session deltas, unclaimed streams and stored files."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from receiver.gate import Gate, InterceptRule, RouterRule
from receiver.pcap_reader import iter_frames
from receiver.pipeline import DatagramPipeline, ListenerCounters, Snapshot
from receiver.store import PcapStore
from receiver.traffic import (
    ipv4_udp,
    ipv6_tcp_flow_label,
    jmirror_datagram,
    ppp_ipv4_udp,
    ppp_lcp,
)

START = 1_700_000_000 * 10**9
SECOND = 10**9
ROUTERS = [RouterRule(1, "192.0.2.1"), RouterRule(2, "192.0.2.2")]
SOURCES = ["192.0.2.1", "192.0.2.2", "198.51.100.9"]  # the last is no registered router


def _rule(pk: int, mirror_id: int, window: tuple[int, int], *, keep: bool = True) -> InterceptRule:
    return InterceptRule(
        intercept_id_pk=pk,
        liid=f"LIID{pk}",
        case_id=pk,
        case_reference=f"CASE-{pk}",
        mirror_id=mirror_id,
        sid=None,
        router_ids=frozenset(),
        window=window,
        active=True,
        keep_content=keep,
    )


# Mirror id 1: in force for the first 5 s, then a second intercept from 8 s (a gap and a
# change of hands mid-stream); 2: metadata only; 3: nobody's.
RULES = [
    _rule(1, 1, (START, START + 5 * SECOND)),
    _rule(2, 1, (START + 8 * SECOND, START + 60 * SECOND)),
    _rule(3, 2, (START, START + 60 * SECOND), keep=False),
]
INNER = [
    bytes(ipv4_udp()),
    bytes(ipv6_tcp_flow_label()),
    bytes(ppp_ipv4_udp()),
    bytes(ppp_lcp()),
]


@st.composite
def datagram(draw: st.DrawFn) -> tuple[bytes, str]:
    source = draw(st.sampled_from(SOURCES))
    kind = draw(st.integers(0, 9))
    if kind == 9:  # junk, or a valid datagram cut short
        junk = draw(st.binary(max_size=60))
        return junk, source
    inner = INNER[kind % len(INNER)]
    mid = draw(st.sampled_from([1, 1, 1, 2, 3]))
    sid = draw(st.sampled_from([7, 7, 8]))
    return jmirror_datagram(inner, mid=mid, sid=sid), source


@st.composite
def traffic(draw: st.DrawFn) -> list[list[tuple[bytes, str, int]]]:
    """Batches of (payload, source, receive time), times rising through the windows."""
    # Runs of one stream, as a router sends them: the batch path's shortcut.
    runs = draw(st.lists(st.tuples(datagram(), st.integers(1, 12)), max_size=25))
    time_ns = START - SECOND
    timed = []
    for (payload, source), length in runs:
        for _ in range(length):
            time_ns += draw(st.sampled_from([0, 1, 1000, SECOND // 3, 2 * SECOND]))
            timed.append((payload, source, time_ns))
    cuts = sorted(draw(st.lists(st.integers(0, len(timed)), max_size=8)))
    batches, start = [], 0
    for cut in [*cuts, len(timed)]:
        batches.append(timed[start:cut])
        start = cut
    return batches


Outcome = tuple[ListenerCounters, list[dict[Any, Any]], list[dict[Any, Any]], dict[str, Any]]


def _run(batches: list[list[tuple[bytes, str, int]]], batched: bool) -> Outcome:
    snapshots: list[Snapshot] = []
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        # Small files: rotation happens inside batches too.
        store = PcapStore(root, rotate_bytes=600, rotate_seconds=2)
        capture = DatagramPipeline(
            Gate(ROUTERS, RULES), store, on_tick=[snapshots.append], start_ns=START - SECOND
        )
        for batch in batches:
            if batched:
                # As the receive loop passes them: read-only views into one buffer that
                # the next batch overwrites (here, with junk, right after the call).
                buffer = bytearray(b"".join(payload for payload, _, _ in batch))
                views, offset = [], 0
                for payload, _, _ in batch:
                    views.append(memoryview(buffer).toreadonly()[offset : offset + len(payload)])
                    offset += len(payload)
                capture.handle_batch(
                    views,
                    [source for _, source, _ in batch],
                    [time_ns for _, _, time_ns in batch],
                )
                buffer[:] = b"\xee" * len(buffer)
            else:
                for payload, source, time_ns in batch:
                    capture.handle(payload, source, time_ns)
            if batch:
                capture.tick(batch[-1][2])
        capture.finish(START + 100 * SECOND)
        files = {}
        for path in sorted(root.rglob("*.pcap")):
            with path.open("rb") as stream:
                files[str(path.relative_to(root))] = list(iter_frames(stream))
    sessions = [
        {
            key: (
                delta.intercept_pk,
                delta.packets,
                delta.bytes,
                delta.stored,
                delta.first_ns,
                delta.last_ns,
                list(delta.recent),
            )
            for key, delta in snapshot.sessions.items()
        }
        for snapshot in snapshots
    ]
    unclaimed = [
        {
            key: (entry.reason, entry.count, entry.first_ns, entry.last_ns)
            for key, entry in s.unclaimed.items()
        }
        for s in snapshots
    ]
    return capture.counters, sessions, unclaimed, files


@settings(max_examples=150, deadline=None)
@given(traffic())
def test_a_batch_gives_what_handling_each_datagram_gives(batches):
    one_by_one = _run(batches, batched=False)
    batched = _run(batches, batched=True)
    assert batched == one_by_one


def test_the_comparison_sees_the_stored_packets():
    """The property above compares real content: a claimed stream is stored and counted."""
    payload = jmirror_datagram(bytes(ipv4_udp()), mid=1, sid=7)
    batch = [(payload, "192.0.2.1", START + index) for index in range(5)]
    counters, sessions, _, files = _run([batch], batched=True)
    assert counters.datagrams == 5
    assert [frame[3] for frames in files.values() for frame in frames] == [payload[8:]] * 5
    assert next(iter(sessions[0].values()))[1:4] == (5, 5 * len(payload), 5)
