"""Retention: files purged after warrant end + retention, with audit events, never
before, never under legal hold; the purge command and the receiver's periodic run."""

from __future__ import annotations

import hashlib
import io
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, transaction
from django.test import override_settings

from jmirror_web.audit.models import AuditEvent, verify_chain
from jmirror_web.environment import ConfigurationError
from jmirror_web.intercepts import retention
from jmirror_web.intercepts.models import CaptureFile, Case, Session
from jmirror_web.intercepts.retention import (
    PURGE_COMPLETED,
    PURGE_FAILED,
    PURGED,
    purge,
    scheduled_purge,
)
from receiver import service
from receiver.store import SessionKey, session_directory_name
from tests.factories import make_capture_file, make_case, make_intercept, make_session

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def sessions_dir(settings: Any, tmp_path: Path) -> Path:
    """The tests store their files under tmp_path/sessions; the purge reads no other place."""
    settings.SESSIONS_DIR = tmp_path / "sessions"
    return settings.SESSIONS_DIR


WARRANT_END = datetime(2026, 3, 31, 12, 0, tzinfo=UTC)
DUE = WARRANT_END + timedelta(days=30, seconds=1)


def ended_case(**fields: Any) -> Case:
    values: dict[str, Any] = {
        "valid_from": WARRANT_END - timedelta(days=60),
        "valid_until": WARRANT_END,
        "retention_days": 30,
    }
    values.update(fields)
    return make_case(**values)


def stored_session(case: Case, root: Path) -> tuple[Session, Path]:
    """A session of the case and its directory, named as the receiver names it."""
    intercept = make_intercept(case)
    session = make_session(
        intercept,
        first_seen=WARRANT_END - timedelta(days=2),
        last_seen=WARRANT_END - timedelta(days=1),
    )
    key = SessionKey(intercept.liid, session.router.address, session.mid, session.sid)
    directory = root / "sessions" / session_directory_name(key)
    directory.mkdir(parents=True, exist_ok=True)
    return session, directory


def stored_file(session: Session, directory: Path, name: str, size: int = 100) -> CaptureFile:
    """A closed pcap file on disk with its row (absolute path, real size and SHA-256)."""
    content = os.urandom(size)
    path = directory / f"{name}.pcap"
    path.write_bytes(content)
    return make_capture_file(
        session,
        path=str(path),
        bytes=size,
        sha256=hashlib.sha256(content).hexdigest(),
    )


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


def test_files_are_purged_only_once_the_retention_after_warrant_end_has_passed(tmp_path):
    case = ended_case()
    session, directory = stored_session(case, tmp_path)
    rows = [stored_file(session, directory, f"file{n}", size=100 + n) for n in range(3)]

    at_boundary = WARRANT_END + timedelta(days=30)
    report = purge(at_boundary)
    assert report.files == []
    assert report.cases == []
    assert all(Path(row.path).exists() for row in rows)
    assert not CaptureFile.objects.filter(purged_at__isnull=False).exists()

    just_after = at_boundary + timedelta(microseconds=1)
    report = purge(just_after)

    assert [each.state for each in report.files] == ["purged"] * 3
    assert len(report.purged) == 3
    assert report.purged_bytes == 100 + 101 + 102
    assert [each.reference for each in report.purged_cases] == [case.reference]
    assert report.errors == []
    assert report.complete
    assert not any(Path(row.path).exists() for row in rows)
    assert not directory.exists()  # the session directory was left empty: removed
    assert report.directories_removed == [str(directory)]
    # The rows stay (chain of custody), marked.
    kept = CaptureFile.objects.filter(pk__in=[row.pk for row in rows])
    assert kept.count() == 3
    assert all(row.purged_at == just_after and row.file_deleted_at == just_after for row in kept)
    assert all(row.sha256 and row.bytes for row in kept)


def test_a_case_still_in_force_or_within_its_retention_keeps_its_files(tmp_path):
    now = datetime(2026, 6, 1, tzinfo=UTC)
    active = make_case(valid_from=now - timedelta(days=5), valid_until=now + timedelta(days=5))
    recent = ended_case(valid_until=now - timedelta(days=10), retention_days=30)
    rows = []
    for case in (active, recent):
        session, directory = stored_session(case, tmp_path)
        rows.append(stored_file(session, directory, "kept"))
    report = purge(now)
    assert report.files == []
    assert all(Path(row.path).exists() for row in rows)


def test_zero_retention_purges_just_after_warrant_end(tmp_path):
    case = ended_case(retention_days=0)
    session, directory = stored_session(case, tmp_path)
    row = stored_file(session, directory, "a")
    assert purge(WARRANT_END).files == []
    assert [each.path for each in purge(WARRANT_END + timedelta(seconds=1)).purged] == [row.path]


def test_legal_hold_keeps_every_file_and_is_reported(tmp_path):
    held = ended_case(legal_hold=True)
    session, directory = stored_session(held, tmp_path)
    rows = [stored_file(session, directory, name, size=50) for name in ("a", "b")]

    report = purge(DUE + timedelta(days=3650))

    assert report.purged == []
    assert report.files == []
    assert all(Path(row.path).exists() for row in rows)
    assert not CaptureFile.objects.filter(purged_at__isnull=False).exists()
    [entry] = report.held_cases
    assert (entry.reference, entry.legal_hold, entry.files, entry.bytes) == (
        held.reference,
        True,
        2,
        100,
    )
    assert not events(PURGED)


def test_legal_hold_set_after_the_run_began_is_respected(tmp_path, monkeypatch):
    """The case is re-read, locked, inside each file's transaction."""
    case = ended_case()
    session, directory = stored_session(case, tmp_path)
    row = stored_file(session, directory, "a")
    real = retention._purge_file

    def hold_first(*args: Any, **kwargs: Any) -> bool:
        Case.objects.filter(pk=case.pk).update(legal_hold=True)
        return real(*args, **kwargs)

    monkeypatch.setattr(retention, "_purge_file", hold_first)
    report = purge(DUE)
    assert report.purged == []
    assert Path(row.path).exists()
    assert CaptureFile.objects.get(pk=row.pk).purged_at is None
    assert not events(PURGED)


def test_a_dry_run_lists_what_would_go_and_changes_nothing(tmp_path):
    case = ended_case()
    session, directory = stored_session(case, tmp_path)
    rows = [stored_file(session, directory, name) for name in ("a", "b")]
    before = AuditEvent.objects.count()

    report = purge(DUE, dry_run=True)

    assert report.dry_run
    assert sorted(each.path for each in report.purged) == sorted(row.path for row in rows)
    assert {each.state for each in report.files} == {"would purge"}
    assert all(Path(row.path).exists() for row in rows)
    assert directory.exists()
    assert AuditEvent.objects.count() == before
    assert not CaptureFile.objects.filter(purged_at__isnull=False).exists()


def test_each_purged_file_leaves_an_audit_event_and_the_chain_verifies(tmp_path):
    case = ended_case(retention_days=30)
    session, directory = stored_session(case, tmp_path)
    assert session.intercept is not None
    rows = [stored_file(session, directory, name, size=64) for name in ("a", "b")]

    purge(DUE, actor="os:tester")

    purged = events(PURGED)
    assert len(purged) == 2
    for event, row in zip(purged, rows, strict=True):
        assert (event.object_type, event.object_id) == ("intercepts.CaptureFile", str(row.pk))
        assert event.actor_name == "os:tester"
        assert event.details["path"] == row.path
        assert event.details["bytes"] == 64
        assert event.details["sha256"] == row.sha256
        assert event.details["case"] == case.reference
        assert event.details["liid"] == session.intercept.liid
        assert event.details["retention_days"] == 30
        assert event.details["warrant_end"].startswith("2026-03-31 12:00:00")
        assert event.details["missing"] is False
    assert verify_chain() is None


def test_the_receiver_run_is_audited_as_the_system():
    assert retention.RETENTION_ACTOR == "system:retention"


def test_a_file_already_missing_is_recorded_as_purged_with_missing(tmp_path):
    case = ended_case()
    session, directory = stored_session(case, tmp_path)
    gone = stored_file(session, directory, "gone")
    Path(gone.path).unlink()
    present = stored_file(session, directory, "present")

    report = purge(DUE)

    states = {each.path: each.state for each in report.files}
    assert states == {gone.path: "missing", present.path: "purged"}
    [event] = [each for each in events(PURGED) if each.details["path"] == gone.path]
    assert event.details["missing"] is True
    row = CaptureFile.objects.get(pk=gone.pk)
    assert row.purged_at == DUE
    assert row.file_deleted_at == DUE
    assert verify_chain() is None


def test_an_undeletable_file_is_reported_and_the_others_are_purged(tmp_path):
    case = ended_case()
    session, directory = stored_session(case, tmp_path)
    first = stored_file(session, directory, "a")
    # A directory where the file should be: unlink fails (EISDIR).
    blocked = make_capture_file(session, path=str(directory / "blocked.pcap"), bytes=10)
    Path(blocked.path).mkdir()
    last = stored_file(session, directory, "z")

    report = purge(DUE)

    assert [each.path for each in report.errors] == [blocked.path]
    assert report.errors[0].error
    assert {each.path for each in report.purged} == {first.path, last.path}
    assert not Path(first.path).exists()
    assert not Path(last.path).exists()
    # Audited as purged before the deletion was tried, then the failure audited too.
    row = CaptureFile.objects.get(pk=blocked.pk)
    assert row.purged_at == DUE
    assert row.file_deleted_at is None
    [failure] = events(PURGE_FAILED)
    assert failure.details["path"] == blocked.path
    assert failure.details["error"]
    assert directory.exists()  # not empty
    # Tried again on the next run, still failing: reported and logged, audited only once.
    again = purge(DUE + timedelta(hours=1))
    assert [(each.path, each.state) for each in again.errors] == [(blocked.path, "failed")]
    assert len(events(PURGE_FAILED)) == 1
    assert len(events(PURGED)) == 3
    assert verify_chain() is None


def test_purge_refuses_to_run_inside_a_callers_transaction(tmp_path):
    """Inside an outer transaction the audit event would not be committed before the
    file is deleted: refused, nothing changed."""
    case = ended_case()
    session, directory = stored_session(case, tmp_path)
    row = stored_file(session, directory, "a")
    with pytest.raises(RuntimeError), transaction.atomic():
        purge(DUE)
    assert Path(row.path).exists()
    assert CaptureFile.objects.get(pk=row.pk).purged_at is None
    assert not events(PURGED)


def test_a_permission_error_is_retried_by_the_next_run(tmp_path, monkeypatch):
    """Also what happens after a crash between the audit event and the deletion: the
    next run finds the audited row whose file is still there and deletes it."""
    case = ended_case()
    session, directory = stored_session(case, tmp_path)
    stuck = stored_file(session, directory, "stuck")
    other = stored_file(session, directory, "other")
    real_unlink = Path.unlink

    def refuse(self: Path, missing_ok: bool = False) -> None:
        if str(self) == stuck.path:
            raise PermissionError(13, "Permission denied")
        real_unlink(self, missing_ok=missing_ok)

    with monkeypatch.context() as patch:
        patch.setattr(Path, "unlink", refuse)
        report = purge(DUE)
    assert [each.path for each in report.errors] == [stuck.path]
    assert "Permission denied" in report.errors[0].error
    assert not Path(other.path).exists()
    assert Path(stuck.path).exists()

    later = DUE + timedelta(hours=1)
    report = purge(later)

    assert [(each.path, each.state) for each in report.files] == [(stuck.path, "completed")]
    assert not Path(stuck.path).exists()
    assert not directory.exists()
    row = CaptureFile.objects.get(pk=stuck.pk)
    assert (row.purged_at, row.file_deleted_at) == (DUE, later)
    assert len(events(PURGED)) == 2  # one per file, never twice
    [completed] = events(PURGE_COMPLETED)
    assert completed.details["path"] == stuck.path
    assert verify_chain() is None
    # Nothing left to do.
    assert purge(later + timedelta(hours=1)).files == []


def test_open_files_are_not_touched(tmp_path):
    case = ended_case()
    session, directory = stored_session(case, tmp_path)
    part = directory / "open.pcap.part"
    part.write_bytes(b"x" * 10)
    open_row = make_capture_file(session, path=str(directory / "open.pcap"), closed=False)
    closed_row = stored_file(session, directory, "closed")

    report = purge(DUE)

    assert [each.path for each in report.purged] == [closed_row.path]
    [entry] = report.cases
    assert entry.open_files == [open_row.path]
    assert part.exists()
    assert CaptureFile.objects.get(pk=open_row.pk).purged_at is None
    assert directory.exists()


def test_a_time_budget_stops_between_files_and_the_next_call_goes_on(tmp_path):
    case = ended_case()
    session, directory = stored_session(case, tmp_path)
    rows = [stored_file(session, directory, name) for name in ("a", "b")]
    stopped = purge(DUE, time_budget=0)
    assert not stopped.complete
    assert stopped.purged == []
    assert scheduled_purge(DUE, time_budget=0) is False
    assert len(purge(DUE).purged) == 2
    assert not any(Path(row.path).exists() for row in rows)


def test_relative_paths_are_under_the_data_directory(tmp_path, settings):
    settings.DATA_DIR = tmp_path
    case = ended_case()
    session, directory = stored_session(case, tmp_path)
    (directory / "rel.pcap").write_bytes(b"pcap")
    relative = str((directory / "rel.pcap").relative_to(tmp_path))
    row = make_capture_file(session, path=relative, bytes=4)
    report = purge(DUE)
    assert [each.path for each in report.purged] == [relative]
    assert not (directory / "rel.pcap").exists()
    assert CaptureFile.objects.get(pk=row.pk).file_deleted_at == DUE


def test_a_row_that_does_not_name_a_pcap_file_is_refused(tmp_path):
    case = ended_case()
    session, directory = stored_session(case, tmp_path)
    target = directory / "precious.txt"
    target.write_text("keep me")
    row = make_capture_file(session, path=str(target))
    report = purge(DUE)
    assert [each.path for each in report.errors] == [row.path]
    assert target.exists()
    assert CaptureFile.objects.get(pk=row.pk).purged_at is None


def test_files_of_sessions_without_an_intercept_are_counted_not_purged(tmp_path):
    make_capture_file(make_session(make_intercept()))  # a case in force: not counted
    orphan = make_session(make_intercept())
    Session.objects.filter(pk=orphan.pk).update(intercept=None)
    make_capture_file(Session.objects.get(pk=orphan.pk))
    assert purge(DUE).unattributed_files == 1


# The command --------------------------------------------------------------------


def run_purge(*args: str) -> str:
    out = io.StringIO()
    call_command("purge", *args, stdout=out)
    return out.getvalue()


def backdated(tmp_path: Path) -> tuple[Case, Case, list[CaptureFile], CaptureFile]:
    """One case due now, one due but on legal hold."""
    now = datetime.now(UTC)
    due = ended_case(valid_until=now - timedelta(days=31), valid_from=now - timedelta(days=90))
    held = ended_case(
        valid_until=now - timedelta(days=400),
        valid_from=now - timedelta(days=500),
        legal_hold=True,
    )
    session, directory = stored_session(due, tmp_path)
    rows = [stored_file(session, directory, name, size=10) for name in ("a", "b")]
    held_session, held_directory = stored_session(held, tmp_path)
    return due, held, rows, stored_file(held_session, held_directory, "held", size=7)


def test_the_command_prints_what_it_purged_and_the_legal_hold_cases(tmp_path):
    due, held, rows, kept = backdated(tmp_path)

    text = run_purge()

    assert f"case {due.reference}:" in text
    assert f"purged {rows[0].path} (10 bytes, sha256 {rows[0].sha256})" in text
    assert f"case {held.reference}:" in text
    assert "skipped: legal hold, 1 files (7 bytes) kept" in text
    assert "total: purged 2 files (20 bytes) of 1 cases; 1 cases skipped for legal hold" in text
    assert not any(Path(row.path).exists() for row in rows)
    assert Path(kept.path).exists()
    assert {each.actor_name for each in events(PURGED)} == {retention_actor_of_shell()}


def retention_actor_of_shell() -> str:
    from jmirror_web.audit.actors import shell_actor

    return shell_actor()


def test_the_command_dry_run_changes_nothing(tmp_path):
    _due, _held, rows, _kept = backdated(tmp_path)
    text = run_purge("--dry-run")
    assert "dry run: nothing changed" in text
    assert f"would purge {rows[0].path}" in text
    assert "total: would purge 2 files (20 bytes)" in text
    assert all(Path(row.path).exists() for row in rows)
    assert not events(PURGED)


def test_the_command_json(tmp_path):
    due, held, rows, _kept = backdated(tmp_path)
    data = json.loads(run_purge("--json"))
    assert data["dry_run"] is False
    assert data["totals"] == {
        "files": 2,
        "bytes": 20,
        "cases": 1,
        "legal_hold_cases": 1,
        "errors": 0,
        "refused_by_store": 0,
    }
    assert {each["path"] for each in data["files"]} == {row.path for row in rows}
    assert {each["state"] for each in data["files"]} == {"purged"}
    cases = {each["reference"]: each for each in data["cases"]}
    assert cases[held.reference]["legal_hold"] is True
    assert cases[due.reference]["retention_days"] == 30
    assert cases[due.reference]["warrant_end"].endswith("Z")


def test_the_command_fails_when_a_file_could_not_be_deleted(tmp_path):
    _due, _held, rows, _kept = backdated(tmp_path)
    Path(rows[0].path).unlink()
    Path(rows[0].path).mkdir()
    out = io.StringIO()
    with pytest.raises(CommandError, match="1 files could not be purged"):
        call_command("purge", stdout=out)
    assert f"FAILED {rows[0].path}" in out.getvalue()
    assert not Path(rows[1].path).exists()


# Settings -------------------------------------------------------------------------


def test_new_cases_take_the_configured_retention():
    with override_settings(JMIRROR_RETENTION_DAYS=90):
        assert make_case().retention_days == 90
    assert make_case(retention_days=7).retention_days == 7


def test_the_retention_setting_is_read_from_the_environment(load_settings):
    assert load_settings({})["JMIRROR_RETENTION_DAYS"] == 365
    assert load_settings({"JMIRROR_RETENTION_DAYS": "30"})["JMIRROR_RETENTION_DAYS"] == 30
    with pytest.raises(ConfigurationError, match="JMIRROR_RETENTION_DAYS"):
        load_settings({"JMIRROR_RETENTION_DAYS": "-1"})
    with pytest.raises(ConfigurationError, match="JMIRROR_RETENTION_DAYS"):
        load_settings({"JMIRROR_RETENTION_DAYS": "a year"})


# The receiver's periodic run ------------------------------------------------------


@pytest.mark.parametrize("error", [DatabaseError("gone"), OSError(28, "No space left")])
def test_a_failing_scheduled_purge_is_logged_and_never_raises(monkeypatch, caplog, error):
    def fail(*args: Any, **kwargs: Any) -> None:
        raise error

    monkeypatch.setattr(retention, "purge", fail)
    assert scheduled_purge(DUE, time_budget=1.0) is True
    assert "purge failed" in caplog.text


@pytest.mark.django_db(transaction=True)
def test_the_receiver_purges_periodically_while_it_runs(tmp_path, monkeypatch):
    from tests.receiver.test_receive_command import Served, wait_for

    calls: list[datetime] = []
    real = retention.scheduled_purge

    def counted(now: datetime, *, time_budget: float) -> bool:
        calls.append(now)
        return real(now, time_budget=time_budget)

    monkeypatch.setattr(service, "scheduled_purge", counted)
    monkeypatch.setattr(service, "PURGE_FIRST_DELAY", 0.0)
    monkeypatch.setattr(service, "PURGE_INTERVAL", 0.5)
    now = datetime.now(UTC)
    case = ended_case(valid_until=now - timedelta(days=31), valid_from=now - timedelta(days=90))
    session, directory = stored_session(case, tmp_path)
    row = stored_file(session, directory, "old")

    served = Served(tmp_path / "sessions")
    try:
        wait_for(lambda: CaptureFile.objects.filter(pk=row.pk, file_deleted_at__isnull=False)
                 .exists())  # fmt: skip
        wait_for(lambda: len(calls) >= 3)  # and again, at the (shortened) interval
    finally:
        served.finish()
    assert not Path(row.path).exists()
    [event] = events(PURGED)
    assert event.actor_name == "system:retention"
    assert event.details["path"] == row.path


def test_a_sessions_summaries_go_with_its_last_purged_file_audited(tmp_path):
    """Conversations and names are derived from the stored packets: they must not outlive
    them. They stay while one of the session's files is unpurged (an open one here), and
    go, audited, in the transaction that purges the last."""
    from jmirror_web.conversations.models import Conversation, ObservedName, SummaryProgress

    case = ended_case()
    session, directory = stored_session(case, tmp_path)
    first = stored_file(session, directory, "a")
    still_open = stored_file(session, directory, "b")
    CaptureFile.objects.filter(pk=still_open.pk).update(closed=False)
    seen = {"first_seen": WARRANT_END, "last_seen": WARRANT_END}
    Conversation.objects.create(
        session=session, protocol=17, address_a="192.0.2.1", address_b="192.0.2.2", **seen
    )
    ObservedName.objects.create(
        session=session, kind="tls-sni", name="example.com", address="192.0.2.2", **seen
    )
    SummaryProgress.objects.create(capture=first, packets=10)

    purge(DUE)
    assert CaptureFile.objects.get(pk=first.pk).purged_at is not None
    assert Conversation.objects.filter(session=session).count() == 1
    assert events(retention.SUMMARIES_PURGED) == []

    CaptureFile.objects.filter(pk=still_open.pk).update(closed=True)
    purge(DUE)
    assert not Conversation.objects.filter(session=session).exists()
    assert not ObservedName.objects.filter(session=session).exists()
    assert not SummaryProgress.objects.filter(capture__session=session).exists()
    [event] = events(retention.SUMMARIES_PURGED)
    assert (event.object_type, event.object_id) == ("intercepts.Session", str(session.pk))
    assert event.details["conversations"] == 1
    assert event.details["names"] == 1
    assert event.details["case"] == case.reference
    assert verify_chain() is None
