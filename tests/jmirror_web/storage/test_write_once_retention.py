"""Write-once retention against a real S3 server (SeaweedFS): a case's legal hold and
retention follow it onto its objects (at the save, and by the periodic pass when the store
was down), the purge deletes an object only when the store allows it and audits what it
refused, a store out of reach during a purge marks nothing, and the health page says
whether evidence in the store is deletable."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from jmirror_web import object_store
from jmirror_web.audit.log import acting_as
from jmirror_web.audit.models import AuditEvent, verify_chain
from jmirror_web.intercepts import object_retention
from jmirror_web.intercepts.access import Role
from jmirror_web.intercepts.models import CaptureFile, Case
from jmirror_web.intercepts.object_retention import (
    OBJECT_HOLD_CLEARED,
    OBJECT_HOLD_FAILED,
    OBJECT_HOLD_SET,
    OBJECT_RETENTION_EXTENDED,
    reconcile_objects,
    wanted_retain_until,
)
from jmirror_web.intercepts.records_file import export_records, import_records
from jmirror_web.intercepts.retention import PURGE_COMPLETED, PURGE_REFUSED, PURGED, purge
from jmirror_web.object_store import ObjectDeleteRefused, ObjectStore, StorageConfig
from receiver.store import SessionKey, session_directory_name
from tests.factories import make_capture_file, make_case, make_intercept, make_session, make_user

pytestmark = pytest.mark.django_db

# Nothing listens on the discard port: connections are refused at once.
UNREACHABLE = "http://127.0.0.1:9"


@pytest.fixture(autouse=True)
def sessions_dir(settings: Any, tmp_path: Path) -> Path:
    settings.SESSIONS_DIR = tmp_path / "sessions"
    return settings.SESSIONS_DIR


@pytest.fixture(autouse=True)
def fresh_checks() -> Iterator[None]:
    object_retention.forget_bucket_checks()
    yield
    object_retention.forget_bucket_checks()


def unreachable_store(config: StorageConfig) -> ObjectStore:
    down = StorageConfig(config.bucket, config.prefix, endpoint=UNREACHABLE)
    return object_store.connect(down, timeout=1, attempts=1)


def uploaded(
    store: ObjectStore,
    case: Case,
    tmp_path: Path,
    count: int = 1,
    *,
    retain_until: datetime | None = None,
    legal_hold: bool = False,
) -> list[CaptureFile]:
    """Closed files of a session of ``case`` on disk, uploaded, with their rows set as the
    upload queue sets them."""
    intercept = make_intercept(case)
    session = make_session(intercept)
    key = SessionKey(intercept.liid, session.router.address, session.mid, session.sid)
    directory = tmp_path / "sessions" / session_directory_name(key)
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for number in range(count):
        content = os.urandom(200 + number)
        path = directory / f"file{number}.pcap"
        path.write_bytes(content)
        digest = hashlib.sha256(content).hexdigest()
        row = make_capture_file(
            session, path=str(path), bytes=len(content), sha256=digest, node="node-a"
        )
        stored = store.upload(
            path,
            f"node-a/{directory.name}/{path.name}",
            digest,
            retain_until=retain_until,
            legal_hold=legal_hold,
        )
        row.object_bucket, row.object_key, row.object_version = (
            stored.bucket,
            stored.key,
            stored.version,
        )
        row.uploaded_at = timezone.now()
        row.object_retain_until = retain_until
        row.object_legal_hold = legal_hold
        row.save()
        rows.append(row)
    return rows


def holds(store: ObjectStore, rows: list[CaptureFile]) -> list[bool | None]:
    found = []
    for row in rows:
        row.refresh_from_db()
        assert row.stored_object is not None
        found.append(store.facts(row.stored_object, legal_hold=True).legal_hold)
    return found


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


def test_a_case_legal_hold_set_through_the_api_holds_its_objects_and_lifting_it_clears_them(
    object_storage: ObjectStore, tmp_path: Path, django_capture_on_commit_callbacks: Any
) -> None:
    case = make_case()
    rows = uploaded(object_storage, case, tmp_path, 2)
    api = APIClient()
    admin = make_user(Role.LI_ADMIN)
    api.force_authenticate(admin)

    with django_capture_on_commit_callbacks(execute=True):
        response = api.patch(f"/api/cases/{case.pk}/", {"legal_hold": True}, format="json")
    assert response.status_code == 200, response.content
    assert holds(object_storage, rows) == [True, True]
    assert all(row.object_legal_hold for row in rows)
    for row in rows:
        assert row.stored_object is not None
        with pytest.raises(ObjectDeleteRefused):
            object_storage.delete(row.stored_object)
    [held] = events(OBJECT_HOLD_SET)
    assert held.actor_name == admin.username
    assert held.object_id == str(case.pk)
    assert held.details["objects"] == 2
    assert held.details["files"] == [row.pk for row in rows]

    # Lifted (here through the model, as the admin and the records import save it).
    case.legal_hold = False
    with django_capture_on_commit_callbacks(execute=True):
        case.save()
    assert holds(object_storage, rows) == [False, False]
    assert [event.details["objects"] for event in events(OBJECT_HOLD_CLEARED)] == [2]
    assert rows[0].stored_object is not None
    object_storage.delete(rows[0].stored_object)  # no retention, no hold: the store allows it
    assert not object_storage.exists(rows[0].stored_object)
    assert verify_chain() is None


def test_a_hold_the_store_missed_is_set_by_the_periodic_pass_and_the_failure_audited_once(
    object_storage: ObjectStore,
    tmp_path: Path,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any,
) -> None:
    case = make_case()
    rows = uploaded(object_storage, case, tmp_path, 2)
    down = unreachable_store(settings.STORAGE)
    configured = object_retention.configured_store
    monkeypatch.setattr(object_retention, "configured_store", lambda: down)

    case.legal_hold = True
    with django_capture_on_commit_callbacks(execute=True):
        case.save()  # the save succeeds whatever the store does
    case.title = "Renamed"
    with django_capture_on_commit_callbacks(execute=True):
        case.save()  # tried again, failed again: not audited twice
    [failed] = events(OBJECT_HOLD_FAILED)
    assert failed.details["legal_hold"] is True
    assert UNREACHABLE in failed.details["error"]
    assert failed.details["left"] == 2
    assert not CaptureFile.objects.filter(object_legal_hold=True).exists()
    assert holds(object_storage, rows) == [False, False]
    assert Case.objects.get(pk=case.pk).legal_hold

    monkeypatch.setattr(object_retention, "configured_store", configured)
    report = reconcile_objects()
    assert report.errors == []
    assert [(each.reference, each.holds_set) for each in report.cases] == [(case.reference, 2)]
    assert holds(object_storage, rows) == [True, True]
    [done] = events(OBJECT_HOLD_SET)
    assert done.actor_name == "system:retention"

    # A change no signal saw (a bulk update) is caught by the next pass too.
    Case.objects.filter(pk=case.pk).update(legal_hold=False)
    assert [each.holds_set for each in reconcile_objects().cases] == [2]
    assert holds(object_storage, rows) == [False, False]
    assert reconcile_objects().cases == []  # in line: nothing to do


def test_an_object_missing_from_the_store_does_not_keep_the_hold_from_the_others(
    object_storage: ObjectStore, tmp_path: Path, django_capture_on_commit_callbacks: Any
) -> None:
    case = make_case()
    rows = uploaded(object_storage, case, tmp_path, 2)
    assert rows[0].stored_object is not None
    object_storage.delete(rows[0].stored_object)  # gone behind the product's back
    case.legal_hold = True
    with django_capture_on_commit_callbacks(execute=True):
        case.save()
    assert holds(object_storage, rows[1:]) == [True]
    assert [event.details["files"] for event in events(OBJECT_HOLD_SET)] == [[rows[1].pk]]
    [failed] = events(OBJECT_HOLD_FAILED)
    assert failed.details["missing_files"] == [rows[0].pk]
    assert "not in the store" in failed.details["error"]


def test_a_legal_hold_from_a_records_import_reaches_the_objects_after_its_commit(
    object_storage: ObjectStore, tmp_path: Path, django_capture_on_commit_callbacks: Any
) -> None:
    case = make_case()
    rows = uploaded(object_storage, case, tmp_path, 2)
    records = export_records()
    for entry in records["cases"]:
        entry["legal_hold"] = True
    # The import runs in one transaction: the store is asked only after its commit.
    with (
        django_capture_on_commit_callbacks() as pending,
        acting_as("os:tester"),
    ):
        import_records(json.dumps(records).encode(), source="test")
    assert holds(object_storage, rows) == [False, False]
    for callback in pending:
        callback()
    assert holds(object_storage, rows) == [True, True]
    assert events(OBJECT_HOLD_SET)[0].actor_name == "os:tester"


def test_retention_is_extended_when_the_case_grows_and_never_shortened(
    object_storage: ObjectStore, tmp_path: Path, django_capture_on_commit_callbacks: Any
) -> None:
    now = timezone.now().replace(microsecond=0)
    case = make_case(valid_until=now + timedelta(hours=1), retention_days=0)
    until = wanted_retain_until(case)
    [row] = uploaded(object_storage, case, tmp_path, retain_until=until)

    case.retention_days = 2
    with django_capture_on_commit_callbacks(execute=True):
        case.save()
    longer = until + timedelta(days=2)
    assert row.stored_object is not None
    assert object_storage.facts(row.stored_object).retain_until == longer
    row.refresh_from_db()
    assert row.object_retain_until == longer
    [extended] = events(OBJECT_RETENTION_EXTENDED)
    assert extended.details["objects"] == 1
    assert extended.details["mode"] == "COMPLIANCE"

    # Shortened in the database: the object keeps its longer lock, nothing is asked.
    case.retention_days = 0
    case.valid_until = now + timedelta(minutes=30)
    with django_capture_on_commit_callbacks(execute=True):
        case.save()
    assert object_storage.facts(row.stored_object).retain_until == longer
    assert len(events(OBJECT_RETENTION_EXTENDED)) == 1


def wait_until(moment: datetime) -> None:
    """Sleep until the store's clock (ours: same host) has passed ``moment``."""
    while datetime.now(UTC) <= moment:
        time.sleep(0.1)


def test_purge_before_the_store_allows_it_is_refused_and_audited_then_deletes_after(
    object_storage: ObjectStore, tmp_path: Path
) -> None:
    now = timezone.now()
    case = make_case(
        valid_from=now - timedelta(days=3), valid_until=now - timedelta(days=1), retention_days=0
    )
    # The store's lock outlasts the case's retention by a few seconds (a retention
    # shortened after the upload): the store decides.
    retain = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    rows = uploaded(object_storage, case, tmp_path, 2, retain_until=retain)

    dry = purge(timezone.now(), dry_run=True)  # reads the locks, writes nothing
    assert [each.state for each in dry.files] == ["refused", "refused"]
    assert not events(PURGE_REFUSED)
    report = purge(timezone.now())
    assert [each.state for each in report.files] == ["refused", "refused"]
    assert "retains" in report.refused[0].error
    assert "COMPLIANCE" in report.refused[0].error
    assert report.errors == []
    assert report.purged == []
    for row in rows:
        row.refresh_from_db()
        assert row.purged_at is None
        assert row.file_deleted_at is None
        assert row.stored_object is not None
        assert object_storage.exists(row.stored_object)
        assert Path(row.path).exists()
    refusals = events(PURGE_REFUSED)
    assert [event.object_id for event in refusals] == [str(row.pk) for row in rows]
    assert refusals[0].details["object"]["key"] == rows[0].object_key
    assert "retains" in refusals[0].details["reason"]
    assert not events(PURGED)
    purge(timezone.now())  # refused again: reported, not audited again
    assert len(events(PURGE_REFUSED)) == 2
    # The command lists it; a refusal is no error.
    out = io.StringIO()
    call_command("purge", stdout=out)
    assert f"kept, refused by the object store: {rows[0].path}" in out.getvalue()
    assert "2 files kept by the object store; 0 errors" in out.getvalue()

    wait_until(retain)
    report = purge(timezone.now())
    assert [each.state for each in report.files] == ["purged", "purged"]
    for row in rows:
        row.refresh_from_db()
        assert row.purged_at is not None
        assert row.file_deleted_at is not None
        assert row.stored_object is not None
        assert not object_storage.exists(row.stored_object)
        assert not Path(row.path).exists()  # the local copy too
    purged = events(PURGED)
    assert [event.object_id for event in purged] == [str(row.pk) for row in rows]
    assert purged[0].details["object"] == {
        "bucket": rows[0].object_bucket,
        "key": rows[0].object_key,
        "version": rows[0].object_version,
    }
    assert verify_chain() is None


def test_purge_clears_a_lifted_hold_first_then_deletes_in_a_governance_bucket(
    object_storage: ObjectStore, tmp_path: Path, settings: Any
) -> None:
    settings.STORAGE = StorageConfig(
        object_storage.bucket,
        endpoint=object_storage.config.endpoint,
        lock_mode=object_store.LockMode.GOVERNANCE,
    )
    governance = object_store.shared(settings.STORAGE)
    now = timezone.now()
    case = make_case(
        valid_from=now - timedelta(days=3), valid_until=now - timedelta(days=1), retention_days=0
    )
    retain = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    # Uploaded while the case was held; the hold was lifted by a bulk update no hook saw.
    [row] = uploaded(governance, case, tmp_path, retain_until=retain, legal_hold=True)
    assert row.stored_object is not None
    assert governance.facts(row.stored_object).lock_mode == "GOVERNANCE"

    wait_until(retain)
    report = purge(timezone.now())
    assert report.objects is not None
    assert [each.holds_set for each in report.objects.cases] == [1]
    assert [each.state for each in report.files] == ["purged"]
    assert not governance.exists(row.stored_object)
    assert [len(events(action)) for action in (OBJECT_HOLD_CLEARED, PURGED)] == [1, 1]


def test_deleting_a_locked_object_through_the_stores_own_api_is_refused(
    object_storage: ObjectStore, s3_server: Any, tmp_path: Path
) -> None:
    case = make_case()
    until = datetime.now(UTC) + timedelta(days=1)
    [row] = uploaded(object_storage, case, tmp_path, retain_until=until)
    client = s3_server.client(boto3)
    address = {"Bucket": row.object_bucket, "Key": row.object_key, "VersionId": row.object_version}
    for extra in ({}, {"BypassGovernanceRetention": True}):  # COMPLIANCE: no bypass
        with pytest.raises(ClientError) as refused:
            client.delete_object(**address, **extra)
        assert refused.value.response["Error"]["Code"] == "AccessDenied"
    assert client.head_object(**address)["ContentLength"] == row.bytes


def test_a_store_out_of_reach_during_purge_is_an_error_and_nothing_is_marked(
    object_storage: ObjectStore, tmp_path: Path, settings: Any
) -> None:
    now = timezone.now()
    case = make_case(
        valid_from=now - timedelta(days=3), valid_until=now - timedelta(days=1), retention_days=0
    )
    rows = uploaded(object_storage, case, tmp_path, 2)
    settings.STORAGE = StorageConfig(object_storage.bucket, endpoint=UNREACHABLE)
    object_store._shared[settings.STORAGE] = unreachable_store(settings.STORAGE)

    report = purge(timezone.now())
    assert [each.state for each in report.files] == ["failed", "failed"]
    assert all(UNREACHABLE in each.error for each in report.files)
    assert not CaptureFile.objects.filter(purged_at__isnull=False).exists()
    assert not CaptureFile.objects.filter(file_deleted_at__isnull=False).exists()
    assert not events(PURGED)
    assert not events(PURGE_REFUSED)
    assert all(Path(row.path).exists() for row in rows)
    with pytest.raises(CommandError):
        call_command("purge", stdout=io.StringIO())

    # Back: the next run purges.
    settings.STORAGE = object_storage.config
    report = purge(timezone.now())
    assert [each.state for each in report.files] == ["purged", "purged"]
    assert all(
        row.stored_object is not None and not object_storage.exists(row.stored_object)
        for row in rows
    )


def test_an_audited_purge_left_pending_deletes_its_object_at_the_next_run(
    object_storage: ObjectStore, tmp_path: Path
) -> None:
    case = make_case()
    [row] = uploaded(object_storage, case, tmp_path)
    row.purged_at = timezone.now()  # audited by a run that stopped before the delete
    row.save()
    Path(row.path).unlink()  # the local copy was already removed after the upload
    report = purge(timezone.now())
    assert [each.state for each in report.files] == ["completed"]
    assert row.stored_object is not None
    assert not object_storage.exists(row.stored_object)
    row.refresh_from_db()
    assert row.file_deleted_at is not None
    assert len(events(PURGE_COMPLETED)) == 1


HEALTH = reverse("console:health")


def health_page(client: Any) -> str:
    client.force_login(make_user(Role.SYSADMIN))
    response = client.get(HEALTH)
    assert response.status_code == 200
    return str(response.content.decode())


def test_health_shows_the_store_with_object_lock_and_checks_it_once_a_minute(
    object_storage: ObjectStore, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = []
    real = ObjectStore.check

    def counted(store: ObjectStore) -> object_store.BucketFacts:
        checks.append(store.bucket)
        return real(store)

    monkeypatch.setattr(ObjectStore, "check", counted)
    page = health_page(client)
    assert f"s3://{object_storage.bucket}" in page
    assert str(object_storage.config.endpoint) in page
    assert 'data-object-lock="on"' in page
    assert "COMPLIANCE" in page
    assert "data-store-deletable" not in page
    assert "data-store-error" not in page
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in page
    health_page(client)
    assert len(checks) == 1  # the second view reused the check


def test_health_warns_that_evidence_is_deletable_without_object_lock(
    object_storage: ObjectStore, s3_server: Any, settings: Any, client: Any
) -> None:
    plain = s3_server.make_bucket(object_lock=False)
    settings.STORAGE = StorageConfig(plain, "", endpoint=s3_server.endpoint)
    page = health_page(client)
    assert 'data-object-lock="off"' in page
    assert "data-store-deletable" in page
    assert "evidence in the store is deletable" in page


def test_health_says_when_the_store_cannot_be_reached(
    object_storage: ObjectStore, settings: Any, client: Any
) -> None:
    settings.STORAGE = StorageConfig(object_storage.bucket, "", endpoint=UNREACHABLE)
    page = health_page(client)
    assert "data-store-error" in page
    assert "The evidence store cannot be reached" in page
    assert "data-object-lock" not in page


def test_health_without_a_store_says_local_files(client: Any) -> None:
    assert "Local files only" in health_page(client)
