"""The receiver with an evidence store, in process (receiver.service.serve): files closed
by rotation while it runs, at its shutdown and by the next start's repair all reach the
store, and a store that goes away mid-capture loses no packet and gets everything once
it is back. A real S3 server (SeaweedFS); files rotate every few KiB here."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from jmirror_web import object_store
from jmirror_web.intercepts.models import CaptureFile, ReceiverProcess, Session
from jmirror_web.intercepts.retention import purge_after
from jmirror_web.object_store import ObjectStore, StorageConfig, sha256_checksum
from receiver import service
from receiver.store import PcapStore, SessionKey
from tests.factories import make_case, make_intercept, make_router
from tests.receiver.test_receive_command import Served, wait_for
from tests.receiver.test_store import die
from tests.s3_server import SeaweedServer

pytestmark = pytest.mark.django_db(transaction=True)

ROTATE_BYTES = 8 * 1024


class SmallFiles(PcapStore):
    """The receiver's store, rotating every ROTATE_BYTES: many closed files quickly."""

    def __init__(self, root: Path, **options: Any) -> None:
        super().__init__(root, rotate_bytes=ROTATE_BYTES, **options)


@pytest.fixture
def receiving(tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The sessions directory for a receiver with small files, and the records it
    claims traffic by: router 127.0.0.1, a case with legal hold, mirror id 0x300."""
    root = tmp_path / "sessions"
    settings.SESSIONS_DIR = root
    monkeypatch.setattr(service, "PcapStore", SmallFiles)
    make_router(address="127.0.0.1")
    make_intercept(make_case(retention_days=10, legal_hold=True), intercept_id=0x300)
    return root


def send(port: int, count: int) -> None:
    call_command(
        "simulate", "--to", f"127.0.0.1:{port}", "--count", str(count), "--rate", "0",
        "--mid", "0x300",
    )  # fmt: skip


def uploaded(store: ObjectStore) -> bool:
    closed = CaptureFile.objects.filter(closed=True)
    return closed.exists() and not closed.filter(uploaded_at__isnull=True).exists()


def assert_every_closed_file_is_in_the_store(store: ObjectStore) -> None:
    for row in CaptureFile.objects.filter(closed=True).select_related("session__intercept__case"):
        stored = row.stored_object
        assert stored is not None, row.path
        facts = store.facts(stored, legal_hold=True)
        assert facts.checksum_sha256 == sha256_checksum(row.sha256)
        assert facts.legal_hold is True
        assert row.session.intercept is not None
        assert facts.retain_until == purge_after(row.session.intercept.case).replace(microsecond=0)


def test_files_closed_by_rotation_shutdown_and_start_up_repair_all_go_up(
    object_storage: ObjectStore, receiving: Path
) -> None:
    served = Served(receiving)
    try:
        send(served.port, 400)
        wait_for(lambda: Session.objects.filter(packets=400).exists())
        # Rotated while running: in the store before the receiver stops.
        wait_for(
            lambda: CaptureFile.objects.filter(closed=True, uploaded_at__isnull=False).count() >= 3,
            timeout=20,
        )
    finally:
        served.finish()
    process = ReceiverProcess.objects.get()
    assert process.uploaded_files >= 3
    assert process.last_upload_error == ""
    # Closed at the shutdown: queued rows that the next start uploads. And a file a
    # killed receiver left open, repaired at that start.
    assert CaptureFile.objects.filter(closed=True, uploaded_at__isnull=True).exists()
    crashed = PcapStore(receiving)
    liid = Session.objects.get().intercept.liid  # type: ignore[union-attr]
    crashed.write(SessionKey(liid, "127.0.0.1", 0x300, 7), time.time_ns(), b"E" * 20, 101)
    crashed.flush()
    die(crashed)

    served = Served(receiving)
    try:
        wait_for(lambda: CaptureFile.objects.filter(session__sid=7, closed=True).exists())
        wait_for(lambda: uploaded(object_storage), timeout=20)
    finally:
        served.finish()
    assert_every_closed_file_is_in_the_store(object_storage)
    repaired = CaptureFile.objects.get(session__sid=7)
    assert repaired.node
    assert repaired.closed_at is not None
    assert sum(row.packets for row in CaptureFile.objects.exclude(session__sid=7)) == 400


# The acceptance's outage is 60 s, and a SeaweedFS restart on its data takes 10-15 s more:
# about 95 s in all, so it runs in the SQLite pass only (the PostgreSQL pass has the
# rotation and repair test above, and the queue's own tests, on its database).
ON_POSTGRESQL = bool(os.environ.get("DATABASE_URL"))


@pytest.mark.skipif(ON_POSTGRESQL, reason="runs once, in the SQLite pass (about 95 s)")
@pytest.mark.parametrize("outage_seconds", [60])
def test_a_store_outage_mid_capture_loses_no_packet_and_everything_goes_up_after(
    receiving: Path,
    tmp_path: Path,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    s3_server: Any,  # only for its skip when there is no weed binary
    outage_seconds: int,
) -> None:
    own = SeaweedServer(tmp_path / "weed")  # stopped here: not the session's shared one
    own.start()
    try:
        for name, value in own.environment().items():
            monkeypatch.setenv(name, value)
        settings.STORAGE = StorageConfig(own.make_bucket(), "", endpoint=own.endpoint)
        object_store._shared.clear()
        store = object_store.shared(settings.STORAGE)
        served = Served(receiving)
        sent = 0
        try:
            send(served.port, 400)  # enough for each of the session's two files to rotate
            sent += 400
            wait_for(lambda: CaptureFile.objects.filter(uploaded_at__isnull=False).exists(), 20)
            own.kill()
            began = time.monotonic()
            while time.monotonic() - began < outage_seconds:
                send(served.port, 100)
                sent += 100
                time.sleep(1)
            wait_for(lambda: Session.objects.filter(packets=sent).exists(), timeout=10)
            waiting = CaptureFile.objects.filter(closed=True, uploaded_at__isnull=True)
            assert waiting.count() >= 3  # closed during the outage, queued
            backlog = ReceiverProcess.objects.get()
            wait_for(
                lambda: (
                    ReceiverProcess.objects.filter(
                        pk=backlog.pk, upload_backlog__gte=3, upload_oldest_seconds__gt=0
                    )
                    .exclude(last_upload_error="")
                    .exists()
                )
            )
            own.start()
            wait_for(lambda: uploaded(store), timeout=30)
        finally:
            served.finish()
        session = Session.objects.get()
        assert (session.packets, session.stored_packets) == (sent, sent)
        assert sum(row.packets for row in CaptureFile.objects.all()) == sent
        stored = CaptureFile.objects.filter(closed=True, uploaded_at__isnull=False)
        for row in stored:
            assert row.stored_object is not None
            assert store.facts(row.stored_object).checksum_sha256 == sha256_checksum(row.sha256)
    finally:
        own.stop()
        object_store._shared.clear()
        connection.close()


def test_an_unreachable_store_stops_receive_at_start_with_one_line(settings: Any) -> None:
    settings.STORAGE = StorageConfig("evidence", "", endpoint="http://127.0.0.1:9")
    object_store._shared.clear()
    object_store._shared[settings.STORAGE] = object_store.connect(
        settings.STORAGE, timeout=1, attempts=1
    )
    try:
        with pytest.raises(CommandError) as refused:
            call_command("receive", "--listen", "127.0.0.1:0")
    finally:
        object_store._shared.clear()
    text = str(refused.value)
    assert refused.value.returncode == 2
    assert "\n" not in text
    assert text.startswith("cannot start: object store s3://evidence at http://127.0.0.1:9")
    assert not ReceiverProcess.objects.exists()  # nothing started
