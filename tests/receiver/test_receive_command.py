"""manage.py receive end to end on loopback: simulate's traffic in, rows and pcaps out."""

from __future__ import annotations

import hashlib
import itertools
import re
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import OperationalError, connection
from django.db.models import Sum
from django.utils import timezone

from jmirror_web.intercepts.models import (
    CaptureFile,
    Listener,
    ReceiverProcess,
    Session,
    UnclaimedStream,
)
from jmirror_web.live.protocol import Stream, SubscriptionKey
from jmirror_web.live.watching import keep
from receiver.bookkeeping import file_path
from receiver.live import Batch
from receiver.live_contract import HEALTH_GROUP, case_group, intercept_group, session_group
from receiver.management.commands.simulate import build_payloads
from receiver.pcap_reader import iter_frames
from receiver.receive_loop import Receiver
from receiver.service import serve
from receiver.store import LINKTYPE_RAW, PcapStore, SessionKey
from tests.factories import make_case, make_intercept, make_router
from tests.receiver.test_store import die

# The receiver's bookkeeping thread has its own database connection: it must see rows
# committed by the test, and the test the rows it commits.
pytestmark = pytest.mark.django_db(transaction=True)


class Served:
    def __init__(self, root: Path, *, metrics: tuple[str, int] | None = None) -> None:
        self.metrics = metrics
        self.stop = threading.Event()
        self.bound = threading.Event()
        self.receiver: Receiver | None = None
        self.batches: list[Batch] = []
        self.thread = threading.Thread(target=self._serve, args=(root,), daemon=True)
        self.thread.start()
        assert self.bound.wait(10), "the receiver did not start"

    def _serve(self, root: Path) -> None:
        try:
            serve(
                [("127.0.0.1", 0)],
                root=root,
                stop=self.stop,
                rcvbuf=1 << 20,
                ready=self._ready,
                live=self.batches.append,
                metrics=self.metrics,
            )
        finally:
            # This thread's own connection: left open, PostgreSQL could not drop the test
            # database at the end of the run.
            connection.close()

    def _ready(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.bound.set()

    @property
    def port(self) -> int:
        assert self.receiver is not None
        return self.receiver.addresses[0][1]

    def finish(self) -> float:
        began = time.monotonic()
        self.stop.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()
        return time.monotonic() - began


def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except OperationalError:
            pass  # SQLite's shared in-memory test database locks whole tables: try again
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def on_disk(row: CaptureFile, root: Path) -> Path:
    path = Path(row.path)
    return path if path.is_absolute() else root.parent / path


def test_simulated_traffic_becomes_session_counters_and_hashed_capture_files(tmp_path):
    router = make_router(address="127.0.0.1")
    intercept = make_intercept(make_case(), intercept_id=0x300)
    root = tmp_path / "sessions"
    served = Served(root)
    try:
        call_command(
            "simulate", "--to", f"127.0.0.1:{served.port}", "--count", "50", "--rate", "0",
            "--mid", "0x300",
        )  # fmt: skip
        wait_for(lambda: Session.objects.filter(packets=50).exists())
    finally:
        assert served.finish() < 5

    session = Session.objects.get()
    assert (session.router, session.intercept, session.mid, session.sid) == (
        router,
        intercept,
        0x300,
        0x90,
    )
    assert session.stored_packets == 50
    sent = [each[8:] for each in build_payloads([0x300], None)]
    expected = [sent[index % len(sent)] for index in range(50)]
    assert session.bytes == sum(len(each) + 8 for each in expected)

    rows = list(CaptureFile.objects.filter(session=session).order_by("first_packet", "path"))
    assert rows
    assert sum(row.packets for row in rows) == 50
    stored: list[tuple[int, bytes]] = []
    for row in rows:
        path = on_disk(row, root)
        assert row.closed
        assert row.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        with path.open("rb") as stream:
            stored += [(time_ns, data) for _, time_ns, _, data in iter_frames(stream)]
    # PPP frames and bare IP packets are in files side by side: in order within each kind,
    # and together in receive-time order.
    ppp = [data for data in expected if data.startswith(b"\xff\x03")]
    assert [data for _, data in stored if data.startswith(b"\xff\x03")] == ppp
    assert [data for _, data in stored if not data.startswith(b"\xff\x03")] == [
        data for data in expected if not data.startswith(b"\xff\x03")
    ]
    assert sorted(data for _, data in stored) == sorted(expected)


def test_a_file_left_open_by_a_killed_receiver_is_closed_and_recorded_at_start(tmp_path):
    router = make_router(address="127.0.0.1")
    intercept = make_intercept(make_case(), intercept_id=0x300)
    root = tmp_path / "sessions"
    crashed = PcapStore(root)
    crashed.write(
        SessionKey(intercept.liid, "127.0.0.1", 0x300, 5), time.time_ns(), b"E" * 20, LINKTYPE_RAW
    )
    crashed.flush()  # in the page cache, never closed: as after kill -9
    die(crashed)

    served = Served(root)
    served.finish()

    row = CaptureFile.objects.get()
    assert row.closed
    assert row.packets == 1
    assert row.sha256 == hashlib.sha256(on_disk(row, root).read_bytes()).hexdigest()
    assert (row.session.router, row.session.intercept, row.session.sid) == (router, intercept, 5)


def test_finished_files_whose_rows_stayed_open_are_closed_at_start(tmp_path):
    """A receiver that stopped while the database did not answer closed and hashed its
    files but could not write their rows: the next start reads them and closes the rows,
    making one for a file that never had any."""
    router = make_router(address="127.0.0.1")
    intercept = make_intercept(make_case(), intercept_id=0x300)
    root = tmp_path / "sessions"
    stopped = PcapStore(root)
    for sid in (5, 6):
        stopped.write(
            SessionKey(intercept.liid, "127.0.0.1", 0x300, sid), time.time_ns(), b"E" * 20, 101
        )
    finished = {closed.session.sid: closed for closed in stopped.close_all() if closed.session}
    # The row of sid 5 was written while the file was open, then never closed.
    session = Session.objects.create(
        router=router, intercept=intercept, mid=0x300, sid=5, first_seen=timezone.now(),
        last_seen=timezone.now(),
    )  # fmt: skip
    open_row = CaptureFile.objects.create(
        session=session, path=file_path(root, finished[5].path), packets=0, bytes=24
    )

    served = Served(root)
    served.finish()

    open_row.refresh_from_db()
    assert open_row.closed
    assert open_row.packets == 1
    assert open_row.sha256 == finished[5].sha256
    made = CaptureFile.objects.exclude(pk=open_row.pk).get()
    assert (made.closed, made.sha256, made.session.sid) == (True, finished[6].sha256, 6)
    for row in CaptureFile.objects.all():
        assert row.sha256 == hashlib.sha256(on_disk(row, root).read_bytes()).hexdigest()


def test_a_listen_address_without_a_port_is_refused():
    with pytest.raises(CommandError, match="HOST:PORT"):
        call_command("receive", "--listen", "127.0.0.1")


@pytest.mark.parametrize("address", ["127.0.0.1", "::1:8099", "127.0.0.1:70000"])
def test_a_bad_contrail_listen_address_is_refused(address):
    with pytest.raises(CommandError, match="--contrail-listen"):
        call_command("receive", "--contrail-listen", address)


def test_one_address_cannot_receive_both_jmirror_and_contrail():
    with pytest.raises(CommandError, match="both jmirror and Contrail"):
        call_command("receive", "--listen", "127.0.0.1:8099", "--contrail-listen", "127.0.0.1:8099")


def test_files_being_written_have_rows_before_they_close(tmp_path):
    make_router(address="127.0.0.1")
    make_intercept(make_case(), intercept_id=0x300)
    root = tmp_path / "sessions"
    served = Served(root)
    try:
        call_command(
            "simulate", "--to", f"127.0.0.1:{served.port}", "--count", "20", "--rate", "0",
            "--mid", "0x300",
        )  # fmt: skip
        wait_for(lambda: CaptureFile.objects.filter(closed=False, packets__gt=0).exists())
        open_rows = list(CaptureFile.objects.filter(closed=False))
        assert all(row.sha256 == "" for row in open_rows)
        # The row already has the name the file takes on close.
        assert all(on_disk(row, root).with_name(on_disk(row, root).name + ".part").exists()
                   for row in open_rows)  # fmt: skip
    finally:
        served.finish()
    paths = {row.path for row in open_rows}
    closed = CaptureFile.objects.filter(path__in=paths)
    assert closed.count() == len(paths)
    assert all(row.closed and len(row.sha256) == 64 for row in closed)
    assert sum(row.packets for row in CaptureFile.objects.all()) == 20


def test_a_session_that_goes_quiet_has_its_file_closed_and_hashed_while_receiving(
    tmp_path, settings
):
    settings.JMIRROR_SESSION_QUIET_SECONDS = 1
    settings.JMIRROR_ROTATE_SECONDS = 600
    make_router(address="127.0.0.1")
    make_intercept(make_case(), intercept_id=0x300)
    root = tmp_path / "sessions"
    served = Served(root)
    try:
        assert served.receiver is not None
        store = served.receiver.store
        assert (store.quiet_seconds, store.rotate_seconds) == (1, 600)
        call_command(
            "simulate", "--to", f"127.0.0.1:{served.port}", "--count", "20", "--rate", "0",
            "--mid", "0x300",
        )  # fmt: skip
        # Closed by the quiet time, not by stopping: the receiver is still running.
        wait_for(
            lambda: (
                CaptureFile.objects.filter(closed=True).aggregate(Sum("packets"))["packets__sum"]
                == 20
            ),
            timeout=15,
        )
        rows = list(CaptureFile.objects.all())
        assert not list(root.rglob("*.part"))
    finally:
        served.finish()
    for row in rows:
        assert row.closed
        assert row.closed_at is not None
        assert row.sha256 == hashlib.sha256(on_disk(row, root).read_bytes()).hexdigest()


def test_unclaimed_streams_and_listener_counters_reach_the_database(tmp_path):
    router = make_router(address="127.0.0.1")
    make_intercept(make_case(), intercept_id=0x300)
    served = Served(tmp_path / "sessions")
    try:
        call_command(
            "simulate", "--to", f"127.0.0.1:{served.port}", "--count", "30", "--rate", "0",
            "--mid", "0x777", "--sid", "0x42",
        )  # fmt: skip
        wait_for(lambda: UnclaimedStream.objects.filter(packets=30).exists())
        wait_for(lambda: Listener.objects.filter(datagrams=30).exists())
    finally:
        served.finish()

    stream = UnclaimedStream.objects.get()
    assert (stream.source, stream.router, stream.mid, stream.sid, stream.reason) == (
        "127.0.0.1",
        router,
        0x777,
        0x42,
        "no_intercept",
    )
    assert stream.mirror_id == 0x777
    assert stream.first_seen <= stream.last_seen
    process = ReceiverProcess.objects.get()
    assert process.datagrams == 30
    assert process.drops == {"no_intercept": 30}
    assert process.stopped_at is not None
    listener = process.listeners.get()
    assert listener.address == f"127.0.0.1:{served.port}"
    assert listener.kernel_drops == 0
    assert listener.rcvbuf > 0
    assert not Session.objects.exists()
    assert not list((tmp_path / "sessions").rglob("*.pcap*"))


def watch_too(page: list[SubscriptionKey], key: SubscriptionKey) -> bool:
    """Registers a page's watch while the receiver runs: the in-memory SQLite of the
    tests locks a table that the receiver's thread is reading, so retried."""
    try:
        keep("specific.page!1", [*page, key])
    except OperationalError:
        return False
    return True


def test_live_summaries_go_to_the_session_intercept_case_and_health_groups(tmp_path):
    make_router(address="127.0.0.1")
    intercept = make_intercept(make_case(), intercept_id=0x300)
    # A live page watches the intercept and the case (summaries only go to what is watched).
    page = [(Stream.INTERCEPT, intercept.pk), (Stream.CASE, intercept.case.pk)]
    keep("specific.page!1", page)
    served = Served(tmp_path / "sessions")
    try:
        call_command(
            "simulate", "--to", f"127.0.0.1:{served.port}", "--count", "40", "--rate", "0",
            "--mid", "0x300",
        )  # fmt: skip
        wait_for(lambda: Session.objects.filter(packets=40).exists())
        session = Session.objects.get()
        # Once the row exists and a page watches it, the session's own group is served too
        # (from the receiver's next look at the registry, within a second or two).
        wait_for(lambda: watch_too(page, (Stream.SESSION, session.pk)))
        sent = 40

        def session_served() -> bool:
            nonlocal sent
            if any(g == session_group(session.pk) for b in served.batches for g, _ in b):
                return True
            call_command(
                "simulate", "--to", f"127.0.0.1:{served.port}", "--count", "10", "--rate", "0",
                "--mid", "0x300",
            )  # fmt: skip
            sent += 10
            time.sleep(0.5)
            return False

        wait_for(session_served)
    finally:
        served.finish()

    messages = [(group, message) for batch in served.batches for group, message in batch]
    by_group: dict[str, list] = {}
    for group, message in messages:
        by_group.setdefault(group, []).append(message)
    case_messages = by_group[case_group(intercept.case.pk)]
    assert by_group[intercept_group(intercept.pk)] == case_messages
    assert sum(m["packets"] for m in case_messages) == sent
    assert by_group[session_group(session.pk)][-1]["session_id"] == session.pk
    assert all(m["type"] == "live.session" and m["liid"] == intercept.liid for m in case_messages)
    recent = [row for m in case_messages for row in m["recent"]]
    assert recent
    assert all(row["length"] > 0 and row["protocol"] for row in recent)
    assert [row["time_ns"] for row in recent] == sorted(row["time_ns"] for row in recent)
    health = by_group[HEALTH_GROUP]
    assert health[-1]["datagrams"] == sent
    # No case data on the health group.
    assert all("liid" not in m and "recent" not in m for m in health)
    # Summaries are few: at most one per 250 ms per session, whatever the packet rate.
    times = [m["time_ns"] for m in case_messages]
    assert all(b - a >= 200_000_000 for a, b in itertools.pairwise(times))


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_the_metrics_endpoint_serves_counters_without_case_data(tmp_path):
    make_router(address="127.0.0.1")
    intercept = make_intercept(make_case(), intercept_id=0x300)
    port = free_tcp_port()
    served = Served(tmp_path / "sessions", metrics=("127.0.0.1", port))
    try:
        call_command(
            "simulate", "--to", f"127.0.0.1:{served.port}", "--count", "25", "--rate", "0",
            "--mid", "0x300",
        )  # fmt: skip
        call_command(
            "simulate", "--to", f"127.0.0.1:{served.port}", "--count", "5", "--rate", "0",
            "--mid", "0x301",
        )  # fmt: skip

        def scraped() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                return str(reply.read().decode())

        wait_for(lambda: "jmirror_datagrams_total 30.0" in scraped())
        body = scraped()
    finally:
        served.finish()

    assert 'jmirror_dropped_datagrams_total{reason="no_intercept"} 5.0' in body
    assert f'jmirror_listener_datagrams_total{{listener="127.0.0.1:{served.port}"}} 30.0' in body
    assert f'jmirror_listener_kernel_drops_total{{listener="127.0.0.1:{served.port}"}} 0.0' in body
    # Rounds were timed (how long they took depends on the machine, so only that).
    assert re.search(r"^jmirror_receive_stalls_total \d+\.0$", body, re.MULTILINE)
    longest = re.search(r"^jmirror_receive_longest_round_seconds (\S+)$", body, re.MULTILINE)
    assert longest is not None
    assert float(longest[1]) > 0
    assert intercept.liid not in body
    assert intercept.case.reference not in body
    # The endpoint goes away with the receiver.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


def test_a_bad_metrics_address_is_refused():
    with pytest.raises(CommandError, match="--metrics: 'nowhere' is not HOST:PORT"):
        call_command("receive", "--metrics", "nowhere")


@pytest.mark.parametrize("enabled", [True, False])
def test_the_summariser_child_runs_beside_the_receiver_unless_turned_off(
    tmp_path, settings, monkeypatch, enabled
):
    from receiver import service

    settings.JMIRROR_SUMMARISE = enabled
    calls: list[str] = []

    class Child:
        def start(self) -> None:
            calls.append("start")

        def keep_running(self) -> None:
            calls.append("keep running")

        def stop(self, wait: float) -> None:
            calls.append("stop")

    monkeypatch.setattr(service, "summarise_child", Child)
    stop = threading.Event()
    try:
        serve(
            [("127.0.0.1", 0)],
            root=tmp_path,
            stop=stop,
            rcvbuf=1 << 20,
            ready=lambda receiver: stop.set(),
            summarise_process=True,
        )
    finally:
        connection.close()
    assert (calls[:1], calls[-1:]) == ((["start"], ["stop"]) if enabled else ([], []))
