"""With real processes: after ``kill -9`` mid-stream and a restart, each
session's counters say what its files hold.

Uses the fault tests' world (tests/receiver/test_receive_faults.py): a ``manage.py
receive`` process with its own SQLite file and data directory, fed over loopback.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from receiver.gate import Gate
from receiver.pipeline import Snapshot
from receiver.receive_loop import Receiver
from receiver.store import LINKTYPE_PPP_HDLC, LINKTYPE_RAW, PcapStore
from receiver.traffic import ipv4_udp, jmirror_datagram
from tests.receiver.test_receive_faults import (  # noqa: F401 (fixtures used by name)
    PPP_SID,
    RAW_SID,
    ReceiverProcess,
    Site,
    SteadyStream,
    from_router,
    migrated,
    packets_in,
    records,
    site,
    start_receiver,
    two_sessions,
)
from tests.receiver.test_receive_loop import ROUTER as ROUTER_RULE
from tests.receiver.test_receive_loop import rule

RATE = 5000  # datagrams/s: the last second's counters are thousands of packets


def test_after_kill_9_and_a_restart_each_sessions_counts_equal_what_its_files_hold(
    site: Site,  # noqa: F811
    start_receiver: Callable[..., ReceiverProcess],  # noqa: F811
) -> None:
    receiver = start_receiver()
    sent = two_sessions(60_000)
    stream = SteadyStream(receiver.port, from_router(sent), rate=RATE)
    stream.start()
    stream.wait_for(15_000)
    receiver.kill()  # mid-stream: the counters of its last second die with it
    stream.finish()
    # What the dead receiver left, read from the files themselves (the tail of a record
    # cut by the kill is not a packet).
    left = {
        sid: sum(len(each) for each in packets_in(site.directory_of(sid), "*.pcap.part").values())
        for sid in (RAW_SID, PPP_SID)
    }
    assert min(left.values()) > 1000
    before = site.session_counts()

    restarted = start_receiver()

    on_disk = {
        sid: sum(len(records(path)) for path in site.directory_of(sid).glob("*.pcap"))
        for sid in (RAW_SID, PPP_SID)
    }
    assert on_disk == left
    assert not site.parts()
    counts = site.session_counts()
    assert {sid: stored for sid, (_, stored) in counts.items()} == on_disk, (
        f"before the restart the database said {before}"
    )
    for sid, (packets, stored) in counts.items():
        assert packets >= stored, sid
    # Each correction is in the log and in the audit log, naming the session.
    corrected = [sid for sid in on_disk if before.get(sid, (0, 0))[1] != on_disk[sid]]
    audited = site.rows(
        "SELECT object_id FROM audit_auditevent WHERE action = 'session counts reconciled'"
    )
    assert len(audited) == len(corrected)
    assert restarted.log().count("counters raised to what its files hold") == len(corrected)
    status, _seconds = restarted.terminate()
    assert status == 0, restarted.log()
    assert set(packets_in(site.directory_of(RAW_SID))) == {LINKTYPE_RAW}
    assert set(packets_in(site.directory_of(PPP_SID))) == {LINKTYPE_PPP_HDLC}


def test_the_counters_a_snapshot_carries_are_already_in_the_files(tmp_path: Path) -> None:
    """What the database is told was stored has been handed to the kernel before: so
    after a kill -9 the counters can lag the files (and are raised at the next start) but
    never claim packets the files do not hold. A few packets a tick stay far below the
    store's buffer size and flush interval: only the flush before each snapshot writes them."""
    root = tmp_path / "sessions"
    behind: list[tuple[int, int]] = []
    counted = 0

    def check(snapshot: Snapshot) -> None:
        nonlocal counted
        counted += sum(delta.stored for delta in snapshot.sessions.values())
        on_disk = sum(len(records(path, tolerant=True)) for path in root.rglob("*.pcap*"))
        if on_disk < counted:
            behind.append((counted, on_disk))

    receiver = Receiver(
        [("127.0.0.1", 0)],
        Gate([ROUTER_RULE], [rule(0x300)]),
        PcapStore(root, flush_interval=3600),
        tick_interval=0.05,
        on_tick=[check],
    )
    thread = threading.Thread(target=receiver.run, daemon=True)
    thread.start()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _ in range(5):
            for sid in (1, 2):
                sender.sendto(
                    jmirror_datagram(bytes(ipv4_udp()), mid=0x300, sid=sid), receiver.addresses[0]
                )
            time.sleep(0.12)  # a couple of ticks between packets
        deadline = time.monotonic() + 5
        while counted < 10 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        receiver.stop()
        thread.join(5)
        sender.close()
    assert counted == 10
    assert behind == []
