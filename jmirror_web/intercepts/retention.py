"""Retention: purge the capture files of cases whose retention period has passed.

A case's files are kept for ``retention_days`` after its warrant ends (``valid_until``),
then purged, unless the case is on legal hold. Every purged file leaves an audit event
with its path, size and SHA-256; its CaptureFile row is kept (chain of custody) and marked
``purged_at`` (the purge was decided and audited) and ``file_deleted_at`` (the file was
seen gone from disk).

Ordering, so that a file can never vanish without its audit event:

1. one transaction per file locks the row and its case, re-checks that the case may be
   purged (its legal hold or warrant end may have changed since the run started), sets
   ``purged_at`` and appends the "capture file purged" audit event;
2. only after that transaction has committed is the file unlinked;
3. then ``file_deleted_at`` is set.

A crash (or a database or disk failure) between 1 and 2 leaves an audited row whose file
still exists: the next run finds it (``purged_at`` set, ``file_deleted_at`` empty) and
deletes it. A crash between 2 and 3 leaves the same row with its file already gone: the
next run sees that and sets ``file_deleted_at``. The reverse order could delete a file and
then lose its audit event, which is what must never happen. An audited purge is always
carried through, even if the case was put on legal hold after the event was written.

Files still being written (``closed=False``) are never touched: the receiver cannot be
storing for an ended warrant (the gate refuses it), so such a row is either a ``.part``
file left by a killed receiver, which the next receiver start closes (and the next run
then purges), or a row whose closing write was lost; both are listed in the report for the
operator. Files on disk without a row are not known to the purge.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal

from django.db import DatabaseError, connection, transaction

from jmirror_web.audit.log import record
from jmirror_web.audit.models import AuditEvent
from jmirror_web.intercepts.models import CaptureFile, Case, OutsideSessionsDirectory
from receiver.store import CAPTURE_SUFFIXES, parse_session_directory

logger = logging.getLogger(__name__)

# Who the audit log names when no one else is given (the receiver's periodic run).
RETENTION_ACTOR: Final = "system:retention"
PURGED: Final = "capture file purged"
PURGE_FAILED: Final = "capture file purge failed"
PURGE_COMPLETED: Final = "capture file purge completed"

FileState = Literal["purged", "missing", "would purge", "failed", "completed", "would complete"]


@dataclass
class FileEntry:
    """One capture file the run dealt with.

    ``state``: ``purged`` (audited and deleted), ``missing`` (audited; it was already
    gone), ``failed`` (see ``error``: audited as purged but still on disk, or refused before
    anything was written), ``completed`` (audited by an earlier run, deleted now), and the
    dry run's ``would purge`` / ``would complete``.
    """

    path: str
    case: str
    liid: str
    bytes: int
    sha256: str
    state: FileState
    error: str = ""


@dataclass
class CaseEntry:
    """A case whose retention has passed: purged, or kept because of its legal hold."""

    reference: str
    warrant_end: datetime
    retention_days: int
    purge_after: datetime
    legal_hold: bool
    files: int = 0  # purged (or would be), or kept under legal hold
    bytes: int = 0
    open_files: list[str] = field(default_factory=list)  # not touched


@dataclass
class PurgeReport:
    """What :func:`purge` did (or, with ``dry_run``, would do)."""

    now: datetime
    dry_run: bool
    cases: list[CaseEntry] = field(default_factory=list)
    files: list[FileEntry] = field(default_factory=list)
    directories_removed: list[str] = field(default_factory=list)
    # Closed, unpurged files whose session belongs to no intercept: no retention applies.
    unattributed_files: int = 0
    # False when the run stopped at its time budget: call again for the rest.
    complete: bool = True

    @property
    def purged(self) -> list[FileEntry]:
        """Files purged by this run (or that would be)."""
        return [each for each in self.files if each.state in ("purged", "missing", "would purge")]

    @property
    def errors(self) -> list[FileEntry]:
        return [each for each in self.files if each.state == "failed"]

    @property
    def purged_bytes(self) -> int:
        return sum(each.bytes for each in self.purged)

    @property
    def purged_cases(self) -> list[CaseEntry]:
        return [each for each in self.cases if not each.legal_hold and each.files]

    @property
    def held_cases(self) -> list[CaseEntry]:
        return [each for each in self.cases if each.legal_hold]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (times as ISO 8601 strings in UTC)."""
        data = asdict(self)
        data["totals"] = {
            "files": len(self.purged),
            "bytes": self.purged_bytes,
            "cases": len(self.purged_cases),
            "legal_hold_cases": len(self.held_cases),
            "errors": len(self.errors),
        }
        return _jsonable(data)  # type: ignore[no-any-return]


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    return value


def purge_after(case: Case) -> datetime:
    """The instant after which the case's files may be purged."""
    return case.valid_until + timedelta(days=case.retention_days)


def is_due(case: Case, now: datetime) -> bool:
    """True when the case's warrant ended more than its retention days before ``now``."""
    return now > purge_after(case)


def purge(
    now: datetime,
    *,
    dry_run: bool = False,
    actor: Any = RETENTION_ACTOR,
    time_budget: float | None = None,
) -> PurgeReport:
    """Purge the closed capture files of every case due at ``now`` that is not on legal
    hold (see the module's docstring for the order of the steps), and finish purges that
    an earlier run audited but could not carry out.

    ``actor`` is who the audit events name (a user, or a string such as ``"os:root"``).
    ``time_budget`` (seconds) stops the run between two files once spent, with
    ``complete=False`` in the report. ``dry_run`` reads only.
    """
    report = PurgeReport(now=now, dry_run=dry_run)
    deadline = None if time_budget is None else time.monotonic() + time_budget

    def out_of_time() -> bool:
        if deadline is not None and time.monotonic() >= deadline:
            report.complete = False
            return True
        return False

    _finish_pending(report, now, actor=actor, out_of_time=out_of_time)
    ended = Case.objects.filter(valid_until__lt=now).order_by("valid_until", "pk")
    for case in ended:
        if not is_due(case, now) or not report.complete:
            continue
        entry = CaseEntry(
            reference=case.reference,
            warrant_end=case.valid_until,
            retention_days=case.retention_days,
            purge_after=purge_after(case),
            legal_hold=case.legal_hold,
        )
        rows = (
            CaptureFile.objects.filter(session__intercept__case=case, purged_at__isnull=True)
            .select_related("session__intercept")
            .order_by("pk")
        )
        for row in rows:
            if not row.closed:
                entry.open_files.append(row.path)
            elif case.legal_hold:
                entry.files += 1
                entry.bytes += row.bytes
            elif out_of_time():
                break
            elif _purge_file(report, entry, case, row, now, actor=actor):
                entry.files += 1
                entry.bytes += row.bytes
        if entry.files or entry.open_files or entry.legal_hold:
            report.cases.append(entry)
    report.unattributed_files = CaptureFile.objects.filter(
        session__intercept__isnull=True, closed=True, purged_at__isnull=True
    ).count()
    return report


def _purge_file(
    report: PurgeReport,
    entry: CaseEntry,
    case: Case,
    row: CaptureFile,
    now: datetime,
    *,
    actor: Any,
) -> bool:
    """Audit, then delete, one closed file of a due case; True when it was purged (or, in a
    dry run, would be)."""
    assert row.session.intercept is not None  # the query went through it
    liid = row.session.intercept.liid

    def note(state: FileState, error: str = "") -> None:
        report.files.append(
            FileEntry(row.path, case.reference, liid, row.bytes, row.sha256, state, error)
        )

    try:
        path = row.on_disk()
    except OutsideSessionsDirectory as refused:
        note("failed", str(refused))
        return False
    if not path.name.endswith(CAPTURE_SUFFIXES):
        # Rows are written by the receiver; anything else in one is not ours to delete.
        note("failed", "not a capture file name (.pcap, .pcapng): refused, nothing recorded")
        return False
    if report.dry_run:
        note("would purge")
        return True
    # durable: this must be the outermost transaction, so that leaving the block commits
    # (inside a caller's transaction it would be a savepoint, and the file could be deleted
    # before a commit that may never come). Django raises RuntimeError otherwise.
    with transaction.atomic(durable=True):
        locked = (
            CaptureFile.objects.select_for_update()
            .filter(pk=row.pk, purged_at__isnull=True, closed=True)
            .first()
        )
        current = Case.objects.select_for_update().filter(pk=case.pk).first()
        if locked is None or current is None or current.legal_hold or not is_due(current, now):
            return False  # purged by another run meanwhile, or the case changed: leave it
        missing = not os.path.lexists(path)
        locked.purged_at = now
        if missing:
            locked.file_deleted_at = now
        locked.save(update_fields=["purged_at", "file_deleted_at"])
        details: dict[str, Any] = {
            "path": locked.path,
            "bytes": locked.bytes,
            "sha256": locked.sha256,
            "case": current.reference,
            "liid": liid,
            "retention_days": current.retention_days,
            "warrant_end": current.valid_until,
            "missing": missing,
        }
        record(PURGED, locked, actor=actor, details=details)
    # Committed: the audit event exists, so the file may go now.
    if missing:
        note("missing")
    else:
        error = _unlink(path)
        if error:
            _record_failure(locked, error, actor=actor)
            note("failed", error)
            return False
        CaptureFile.objects.filter(pk=row.pk, file_deleted_at__isnull=True).update(
            file_deleted_at=now
        )
        note("purged")
    _remove_empty_directory(report, path)
    return True


def _finish_pending(
    report: PurgeReport, now: datetime, *, actor: Any, out_of_time: Callable[[], bool]
) -> None:
    """Delete the files of rows audited as purged by an earlier run that did not get to
    (or failed to) delete them, and mark them deleted."""
    pending = (
        CaptureFile.objects.filter(purged_at__isnull=False, file_deleted_at__isnull=True)
        .select_related("session__intercept__case")
        .order_by("pk")
    )
    for row in pending:
        if out_of_time():
            return
        intercept = row.session.intercept
        case = intercept.case.reference if intercept is not None else ""
        liid = intercept.liid if intercept is not None else ""
        entry = FileEntry(row.path, case, liid, row.bytes, row.sha256, "would complete")
        report.files.append(entry)
        if report.dry_run:
            continue
        try:
            path = row.on_disk()
        except OutsideSessionsDirectory as refused:
            error = str(refused)
        else:
            error = (
                _unlink(path)
                if path.name.endswith(CAPTURE_SUFFIXES)
                else "not a capture file name (.pcap, .pcapng)"
            )
        if error:
            # Audited once per file (not at every hourly retry); logged every time.
            already = AuditEvent.objects.filter(
                action=PURGE_FAILED, object_type=row._meta.label, object_id=str(row.pk)
            ).exists()
            _record_failure(row, error, actor=actor, audit=not already)
            entry.state, entry.error = "failed", error
            continue
        with transaction.atomic():
            done = CaptureFile.objects.filter(pk=row.pk, file_deleted_at__isnull=True).update(
                file_deleted_at=now
            )
            if done:  # not another run's work
                record(
                    PURGE_COMPLETED,
                    row,
                    actor=actor,
                    details={"path": row.path, "purged_at": row.purged_at, "case": case},
                )
        entry.state = "completed"
        _remove_empty_directory(report, path)


def _unlink(path: Path) -> str:
    """Delete the file; an empty string when it is gone (already gone included), else
    the reason it could not be deleted."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as error:
        return f"{error.strerror or error} ({path})"
    return ""


def _record_failure(row: CaptureFile, error: str, *, actor: Any, audit: bool = True) -> None:
    """Log, and say in the audit log, that a file audited as purged is still on disk."""
    logger.error("retention: cannot delete %s: %s", row.path, error)
    if not audit:
        return
    try:
        record(PURGE_FAILED, row, actor=actor, details={"path": row.path, "error": error})
    except DatabaseError as failure:
        logger.error("retention: cannot record the failure for %s: %s", row.path, failure)


def _remove_empty_directory(report: PurgeReport, path: Path) -> None:
    """Remove the file's session directory if that left it empty."""
    directory = path.parent
    # Only directories receiver.store.session_directory_name() makes are removed when empty.
    if parse_session_directory(directory.name) is None:
        return
    try:
        directory.rmdir()
    except OSError:
        return  # not empty (other files, or a .part), or already gone
    report.directories_removed.append(str(directory))


def scheduled_purge(now: datetime, *, time_budget: float) -> bool:
    """The receiver's periodic run: purge, log what happened, never raise (capture must
    go on whatever the database or the disk do). False when files are left for a next
    call soon (the time budget ran out), True otherwise."""
    try:
        report = purge(now, time_budget=time_budget)
    except DatabaseError as error:
        logger.warning("retention: purge failed (%s); trying again later", error)
        connection.close()  # a broken connection is not reused
        return True
    except Exception:
        logger.exception("retention: purge failed; trying again later")
        return True
    if report.purged or report.errors:
        logger.info(
            "retention: purged %d files (%d bytes) of %d cases; %d could not be deleted",
            len(report.purged),
            report.purged_bytes,
            len(report.purged_cases),
            len(report.errors),
        )
    return report.complete
