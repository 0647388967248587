"""The upload queue (receiver.uploads) against a real S3 server (SeaweedFS): closed files
go up with their SHA-256 and their case's retention, the row says where only after the
store confirmed, failures back off, an altered or missing local copy is never uploaded,
and a local copy is removed only after its upload and a fresh look at the object."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from jmirror_web import object_store
from jmirror_web.audit.models import AuditEvent
from jmirror_web.intercepts.models import CaptureFile, Session
from jmirror_web.intercepts.retention import purge_after
from jmirror_web.object_store import ObjectStore, StorageConfig, sha256_checksum
from receiver import uploads
from receiver.metrics import SnapshotCollector, UploadBacklog, upload_metrics
from receiver.uploads import (
    BACKOFF_FIRST,
    BACKOFF_LIMIT,
    MINIMUM_LOCK,
    Uploader,
    backoff,
    composite_checksum,
    due,
    retention_for,
)
from tests.factories import make_case, make_intercept, make_session

pytestmark = pytest.mark.django_db


@pytest.fixture
def sessions_dir(tmp_path: Path, settings: Any) -> Path:
    root = tmp_path / "sessions"
    root.mkdir()
    settings.SESSIONS_DIR = root
    return root


def closed_file(
    session: Session,
    data: bytes,
    *,
    name: str | None = None,
    node: str | None = None,
    **fields: Any,
) -> CaptureFile:
    """A closed capture file of ``session`` on disk under the sessions directory, with
    its row as the bookkeeping leaves it (node, closed_at, SHA-256)."""
    name = name or f"{os.urandom(4).hex()}.pcap"
    directory = Path(django_settings.SESSIONS_DIR) / f"session-{session.pk}"
    directory.mkdir(exist_ok=True)
    (directory / name).write_bytes(data)
    values: dict[str, Any] = {
        "session": session,
        "path": f"sessions/session-{session.pk}/{name}",
        "first_packet": session.first_seen,
        "last_packet": session.last_seen,
        "packets": 1,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "closed": True,
        "node": node if node is not None else django_settings.NODE_NAME,
        "closed_at": timezone.now(),
    }
    values.update(fields)
    return CaptureFile.objects.create(**values)


def drain(uploader: Uploader, rounds: int = 20) -> None:
    """Rounds until nothing is due (each round uploads at most one file)."""
    for _ in range(rounds):
        if uploader.step() != 0.0 and not due(uploader.node, datetime.now(UTC)).exists():
            return
    raise AssertionError("the queue did not drain")


def test_backoff_doubles_from_2_s_to_5_minutes_with_jitter() -> None:
    rng = random.Random(7)
    waits = [backoff(attempts, rng) for attempts in range(1, 12)]
    assert BACKOFF_FIRST / 2 <= waits[0] <= BACKOFF_FIRST
    assert all(BACKOFF_LIMIT / 2 <= wait <= BACKOFF_LIMIT for wait in waits[8:])
    assert len({round(wait, 6) for wait in waits[8:]}) > 1  # jittered, not one value


def test_retention_is_the_case_warrant_end_plus_its_days_at_least_a_day() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    case = make_case(
        valid_from=now - timedelta(days=1), valid_until=now + timedelta(days=10),
        retention_days=30, legal_hold=True,
    )  # fmt: skip
    assert retention_for(case, now, object_lock=True) == (purge_after(case), True)
    ended = make_case(
        valid_from=now - timedelta(days=400), valid_until=now - timedelta(days=100),
        retention_days=30,
    )  # fmt: skip
    assert retention_for(ended, now, object_lock=True) == (now + MINIMUM_LOCK, False)
    no_case = retention_for(None, now, object_lock=True)
    assert no_case == (now + timedelta(days=django_settings.JMIRROR_RETENTION_DAYS), False)
    assert retention_for(case, now, object_lock=False) == (None, False)


def test_a_closed_file_goes_up_with_its_checksum_retention_and_legal_hold(
    object_storage: ObjectStore, sessions_dir: Path
) -> None:
    case = make_case(retention_days=30, legal_hold=True)
    session = make_session(make_intercept(case))
    data = os.urandom(70_000)
    row = closed_file(session, data)
    uploader = Uploader(object_storage, keep_hours=24)

    drain(uploader)

    row.refresh_from_db()
    stored = row.stored_object
    assert stored is not None
    assert (row.object_bucket, row.object_key) == (
        object_storage.bucket,
        f"{django_settings.NODE_NAME}/{row.path}",
    )
    assert row.object_version
    facts = object_storage.facts(stored, legal_hold=True)
    assert facts.size == len(data)
    assert facts.checksum_sha256 == sha256_checksum(row.sha256)
    assert facts.lock_mode == "COMPLIANCE"
    assert facts.retain_until == purge_after(case).replace(microsecond=0)
    assert facts.legal_hold is True
    assert row.object_retain_until == purge_after(case)
    assert row.object_legal_hold is True
    assert object_storage.sha256(stored) == row.sha256
    event = AuditEvent.objects.get(action=uploads.UPLOADED)
    assert event.actor_name == uploads.UPLOADS_ACTOR
    assert event.details["key"] == row.object_key
    assert event.details["version"] == row.object_version
    # Kept locally for the keep time: the local copy is still there.
    assert row.local_removed_at is None
    assert row.on_disk().exists()
    assert uploader.totals.uploaded_files == 1


def test_the_queue_is_this_node_closed_hashed_unuploaded_unpurged_files_oldest_first(
    sessions_dir: Path,
) -> None:
    session = make_session()
    now = timezone.now()
    later = closed_file(session, b"b", closed_at=now - timedelta(seconds=5))
    older = closed_file(session, b"a", closed_at=now - timedelta(seconds=50))
    closed_file(session, b"c", node="another-node")
    closed_file(session, b"d", closed=False, sha256="")
    closed_file(session, b"e", purged_at=now)
    closed_file(session, b"f", uploaded_at=now, object_key="k")
    closed_file(session, b"g", upload_after=now + timedelta(minutes=1))
    retry = closed_file(session, b"h", upload_after=now - timedelta(seconds=1), closed_at=now)
    assert list(due(django_settings.NODE_NAME, now)) == [older, later, retry]


def test_an_altered_local_copy_is_never_uploaded_and_alerts_once(
    object_storage: ObjectStore, sessions_dir: Path
) -> None:
    row = closed_file(make_session(), b"as recorded")
    row.on_disk().write_bytes(b"changed after")
    uploader = Uploader(object_storage, rng=random.Random(1))

    assert uploader.step() == 0.0
    row.refresh_from_db()
    assert row.uploaded_at is None
    assert row.object_key == ""
    assert row.verify_ok is False
    assert "not the recorded" in row.verify_detail
    assert row.upload_attempts == 1
    assert row.upload_after is not None
    assert "not the recorded" in row.upload_error
    # Retried when due, refused again, audited once.
    CaptureFile.objects.filter(pk=row.pk).update(upload_after=None)
    uploader.step()
    row.refresh_from_db()
    assert row.upload_attempts == 2
    assert AuditEvent.objects.filter(action=uploads.UPLOAD_REFUSED).count() == 1
    assert not list(object_storage.client.list_objects_v2(Bucket=object_storage.bucket).get(
        "Contents", []
    ))  # fmt: skip
    assert uploader.totals.failures == 2
    assert str(row.pk) in uploader.totals.last_error
    assert row.path not in uploader.totals.last_error


def test_a_missing_local_copy_is_an_error_not_an_upload(
    object_storage: ObjectStore, sessions_dir: Path
) -> None:
    row = closed_file(make_session(), b"gone")
    row.on_disk().unlink()
    Uploader(object_storage).step()
    row.refresh_from_db()
    assert row.uploaded_at is None
    assert (row.verify_ok, row.verify_detail) == (False, "the local copy is missing; not uploaded")


def test_an_unreachable_store_backs_off_and_the_file_goes_up_when_it_answers(
    object_storage: ObjectStore, sessions_dir: Path, s3_server: Any
) -> None:
    row = closed_file(make_session(), os.urandom(1000))
    unreachable = object_store.connect(
        StorageConfig(object_storage.bucket, "", endpoint="http://127.0.0.1:9"),
        timeout=1,
        attempts=1,
    )
    uploader = Uploader(unreachable, rng=random.Random(3))
    uploader.object_lock = True  # as known from before the outage
    uploader._lock_checked = 1e18  # no re-check in this test

    pause = uploader.step()

    assert BACKOFF_FIRST / 2 <= pause <= BACKOFF_FIRST
    assert not uploader.reachable  # paused: only the store's check until it answers
    row.refresh_from_db()
    assert row.uploaded_at is None
    assert row.upload_attempts == 1
    assert "127.0.0.1:9" in row.upload_error
    assert "\n" not in row.upload_error
    assert "AWS_SECRET" not in row.upload_error
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in row.upload_error
    assert row.verify_ok is None  # a store failure says nothing against the file
    assert not due(uploader.node, datetime.now(UTC)).exists()  # waits its backoff
    assert row.path not in uploader.backlog().last_error

    CaptureFile.objects.filter(pk=row.pk).update(upload_after=timezone.now())
    drain(Uploader(object_storage))
    row.refresh_from_db()
    assert row.uploaded_at is not None
    assert row.upload_error == ""
    assert row.upload_attempts == 1  # the history stays


def test_the_local_copy_is_removed_after_the_keep_time_never_before_the_upload(
    object_storage: ObjectStore, sessions_dir: Path
) -> None:
    session = make_session()
    uploaded = closed_file(session, os.urandom(5000))
    waiting = closed_file(
        session, os.urandom(5000), upload_after=timezone.now() + timedelta(hours=1)
    )
    keeping = Uploader(object_storage, keep_hours=1)
    drain(keeping)
    assert keeping.remove_local_copies() == 0  # uploaded, but kept for the hour

    CaptureFile.objects.filter(pk=uploaded.pk).update(
        uploaded_at=timezone.now() - timedelta(hours=1, seconds=1)
    )
    assert keeping.remove_local_copies() == 1
    uploaded.refresh_from_db()
    assert uploaded.local_removed_at is not None
    assert not uploaded.on_disk().exists()
    event = AuditEvent.objects.get(action=uploads.LOCAL_COPY_REMOVED)
    assert event.details["version"] == uploaded.object_version
    assert event.details["found_gone"] is False
    # The file not yet uploaded keeps its local copy whatever the keep time.
    assert Uploader(object_storage, keep_hours=0).remove_local_copies() == 0
    waiting.refresh_from_db()
    assert waiting.on_disk().exists()
    assert waiting.local_removed_at is None


def test_keep_0_removes_right_after_the_upload_and_a_multipart_object_is_confirmed(
    object_storage: ObjectStore, sessions_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(object_store, "MULTIPART_THRESHOLD", 2**20)
    monkeypatch.setattr(object_store, "PART_BYTES", 5 * 2**20)
    data = os.urandom(11 * 2**20 + 3)
    row = closed_file(make_session(), data)
    local = row.on_disk()
    composite = composite_checksum(local, 5 * 2**20)
    assert composite.endswith("-3")
    uploader = Uploader(object_storage, keep_hours=0)

    drain(uploader)

    row.refresh_from_db()
    stored = row.stored_object
    assert stored is not None
    assert object_storage.facts(stored).checksum_sha256 == composite
    assert row.local_removed_at is not None
    assert not local.exists()
    assert uploader.totals.local_copies_removed == 1


def test_an_object_altered_in_the_store_keeps_the_local_copy(
    object_storage: ObjectStore, sessions_dir: Path, s3_server: Any
) -> None:
    bucket = s3_server.make_bucket(object_lock=False)
    plain = object_store.connect(StorageConfig(bucket, "", endpoint=s3_server.endpoint))
    row = closed_file(make_session(), b"evidence bytes")
    uploader = Uploader(plain, keep_hours=0)
    drain(uploader)
    row.refresh_from_db()
    assert row.object_retain_until is None  # no Object Lock: no retention to set
    # Someone with the credentials overwrites the version in a bucket without versioning.
    plain.client.put_object(Bucket=bucket, Key=row.object_key, Body=b"evidence BYTES")
    CaptureFile.objects.filter(pk=row.pk).update(object_version="", local_removed_at=None)
    row.on_disk().write_bytes(b"evidence bytes")  # the local copy back, as it was
    row.refresh_from_db()

    assert uploader.remove_local_copy(row) is False

    row.refresh_from_db()
    assert row.local_removed_at is None
    assert row.on_disk().exists()
    assert row.verify_ok is False
    assert "stored object" in row.verify_detail


def test_the_backlog_is_reported_on_the_receiver_row_and_as_metrics(
    object_storage: ObjectStore, sessions_dir: Path
) -> None:
    from jmirror_web.intercepts.models import ReceiverProcess

    process = ReceiverProcess.objects.create(
        hostname="h", node=django_settings.NODE_NAME, pid=1, started_at=timezone.now(),
        reported_at=timezone.now(),
    )  # fmt: skip
    session = make_session()
    closed_file(session, b"x" * 100, closed_at=timezone.now() - timedelta(minutes=3))
    closed_file(session, b"y" * 50)
    uploader = Uploader(object_storage, process_id=process.pk)

    backlog = uploader.report()

    assert (backlog.files, backlog.bytes) == (2, 150)
    assert backlog.oldest_seconds >= 180
    process.refresh_from_db()
    assert (process.upload_backlog, process.upload_backlog_bytes) == (2, 150)
    assert process.upload_oldest_seconds >= 180
    drain(uploader)
    uploader.report()
    process.refresh_from_db()
    assert (process.upload_backlog, process.uploaded_files, process.uploaded_bytes) == (0, 2, 150)
    names = {metric.name for metric in upload_metrics(uploader.backlog())}
    assert {"jmirror_upload_backlog_files", "jmirror_upload_oldest_seconds"} <= names
    samples = {
        sample.name: sample.value
        for metric in upload_metrics(UploadBacklog(files=3, uploaded_files=9))
        for sample in metric.samples
    }
    assert samples["jmirror_upload_backlog_files"] == 3
    assert samples["jmirror_uploaded_files_total"] == 9
    assert SnapshotCollector(uploads=uploader.backlog)  # accepted by the collector


def test_one_upload_process_per_node_works_the_queue_the_others_stand_by(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Receivers on one host (one per core, SO_REUSEPORT) each start an upload process:
    # only the holder of the node's lock uploads; another takes over when it exits.
    monkeypatch.setattr(uploads, "STANDBY_WAIT", 0.02)
    lock_path = tmp_path / "upload-queue.node-a.lock"
    release = threading.Event()
    holding = threading.Event()
    standby_took_over = threading.Event()

    def first() -> None:
        with uploads.sole_worker(lock_path, threading.Event(), "node-a") as held:
            assert held
            holding.set()
            release.wait(10)

    def second() -> None:
        with uploads.sole_worker(lock_path, threading.Event(), "node-a") as held:
            if held:
                standby_took_over.set()

    worker = threading.Thread(target=first)
    worker.start()
    assert holding.wait(5)
    standby = threading.Thread(target=second)
    standby.start()
    assert not standby_took_over.wait(0.3)  # stands by while the first holds the lock
    release.set()
    worker.join(5)
    assert standby_took_over.wait(5)
    standby.join(5)
    assert oct(lock_path.stat().st_mode & 0o777) == "0o600"


def test_a_standby_upload_process_stops_when_asked_and_takes_over_from_a_killed_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(uploads, "STANDBY_WAIT", 0.02)
    lock_path = tmp_path / "upload-queue.node-a.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(lock_path)!r}, os.O_RDWR | os.O_CREAT, 0o600)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        stop = threading.Event()
        stop.set()
        with uploads.sole_worker(lock_path, stop, "node-a") as held:
            assert held is False  # asked to stop while standing by
        holder.kill()  # -9: the kernel releases its lock
        holder.wait(5)
        with uploads.sole_worker(lock_path, threading.Event(), "node-a") as held:
            assert held is True
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(5)
