"""manage.py receive end to end on loopback: simulate's traffic in, rows and pcaps out."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import OperationalError, connection

from jmirror_web.intercepts.models import CaptureFile, Session
from receiver.capture import iter_frames
from receiver.management.commands.receive import serve
from receiver.management.commands.simulate import build_payloads
from receiver.store import LINKTYPE_RAW, PcapStore, SessionKey
from receiver.worker import Receiver
from tests.factories import make_case, make_intercept, make_router

# The receiver's bookkeeping thread has its own database connection: it must see rows
# committed by the test, and the test the rows it commits.
pytestmark = pytest.mark.django_db(transaction=True)


class Served:
    def __init__(self, root: Path) -> None:
        self.stop = threading.Event()
        self.bound = threading.Event()
        self.receiver: Receiver | None = None
        self.thread = threading.Thread(target=self._serve, args=(root,), daemon=True)
        self.thread.start()
        assert self.bound.wait(10), "the receiver did not start"

    def _serve(self, root: Path) -> None:
        try:
            serve([("127.0.0.1", 0)], root=root, stop=self.stop, rcvbuf=1 << 20, ready=self._ready)
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
    stored = []
    for row in rows:
        path = on_disk(row, root)
        assert row.closed
        assert row.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        with path.open("rb") as stream:
            stored += [data for _, _, _, data in iter_frames(stream)]
    assert stored == expected


def test_a_file_left_open_by_a_killed_receiver_is_closed_and_recorded_at_start(tmp_path):
    router = make_router(address="127.0.0.1")
    intercept = make_intercept(make_case(), intercept_id=0x300)
    root = tmp_path / "sessions"
    crashed = PcapStore(root)
    crashed.write(
        SessionKey(intercept.liid, "127.0.0.1", 0x300, 5), time.time_ns(), b"E" * 20, LINKTYPE_RAW
    )
    crashed.flush()  # in the page cache, never closed: as after kill -9

    served = Served(root)
    served.finish()

    row = CaptureFile.objects.get()
    assert row.closed
    assert row.packets == 1
    assert row.sha256 == hashlib.sha256(on_disk(row, root).read_bytes()).hexdigest()
    assert (row.session.router, row.session.intercept, row.session.sid) == (router, intercept, 5)


def test_a_listen_address_without_a_port_is_refused():
    with pytest.raises(CommandError, match="HOST:PORT"):
        call_command("receive", "--listen", "127.0.0.1")
