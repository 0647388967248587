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

Files in the object store (uploaded: ``CaptureFile.stored_object``) are purged in the same
order, the object version deleted before the local copy (if the host still has one), but
only when the store allows it: before anything is written the object's lock is read, and
a file whose object the store still retains (Object Lock retention not over, a legal hold)
is reported as refused by the store and audited (:data:`PURGE_REFUSED`, once per file and
reason), its row left as it is; it is tried again at every run. A store out of reach is an
error, tried again at the next run, and nothing is marked. Should the store refuse the
delete itself after the purge was audited (rights, a clock ahead of ours), the row waits
with ``purged_at`` set as a failed local deletion does, and the next run deletes it. Before
the purge, the objects' legal holds and retention are brought in line with their cases
(:func:`jmirror_web.intercepts.object_retention.reconcile_objects`).

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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal

from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from jmirror_web.audit.log import record
from jmirror_web.audit.models import AuditEvent
from jmirror_web.conversations.models import forget_session
from jmirror_web.intercepts import evidence_store, object_retention
from jmirror_web.intercepts.models import CaptureFile, Case, OutsideSessionsDirectory
from jmirror_web.intercepts.object_retention import ObjectsReport
from jmirror_web.object_store import (
    ObjectDeleteRefused,
    ObjectStore,
    StorageError,
    StoredObject,
)
from receiver.packet_index import index_path, remove_index
from receiver.store import CAPTURE_SUFFIXES, parse_session_directory

logger = logging.getLogger(__name__)

# Who the audit log names when no one else is given (the receiver's periodic run).
RETENTION_ACTOR: Final = "system:retention"
PURGED: Final = "capture file purged"
SUMMARIES_PURGED: Final = "session summaries purged"
PURGE_FAILED: Final = "capture file purge failed"
PURGE_COMPLETED: Final = "capture file purge completed"
PURGE_REFUSED: Final = "capture file purge refused by the store"
NO_STORE: Final = (
    "the file is in the object store but JMIRROR_STORAGE_URL is empty here: its object "
    "cannot be deleted"
)

FileState = Literal[
    "purged", "missing", "would purge", "failed", "refused", "completed", "would complete"
]


@dataclass
class FileEntry:
    """One capture file the run dealt with.

    ``state``: ``purged`` (audited and deleted), ``missing`` (audited; it was already
    gone), ``failed`` (see ``error``: audited as purged but still on disk or in the store,
    or refused before anything was written, or the store out of reach), ``refused`` (the
    object store still retains its object: ``error`` says why; nothing marked),
    ``completed`` (audited by an earlier run, deleted now), and the dry run's
    ``would purge`` / ``would complete``.
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
    # The objects' legal holds and retention brought in line first (not in a dry run).
    objects: ObjectsReport | None = None
    # The first "store out of reach" of this run: later files are not tried (each would
    # wait for the same timeout), they fail with it and are tried at the next run.
    store_error: str = ""

    @property
    def purged(self) -> list[FileEntry]:
        """Files purged by this run (or that would be)."""
        return [each for each in self.files if each.state in ("purged", "missing", "would purge")]

    @property
    def errors(self) -> list[FileEntry]:
        return [each for each in self.files if each.state == "failed"]

    @property
    def refused(self) -> list[FileEntry]:
        """Files whose objects the store still retains (kept, tried again next run)."""
        return [each for each in self.files if each.state == "refused"]

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
            "refused_by_store": len(self.refused),
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
    store: ObjectStore | None = None,
) -> PurgeReport:
    """Purge the closed capture files of every case due at ``now`` that is not on legal
    hold (see the module's docstring for the order of the steps), and finish purges that
    an earlier run audited but could not carry out.

    ``actor`` is who the audit events name (a user, or a string such as ``"os:root"``).
    ``time_budget`` (seconds) stops the run between two files once spent, with
    ``complete=False`` in the report. ``dry_run`` reads only (the objects' locks too).
    ``store`` is the object store of uploaded files (default: the configured one).
    """
    report = PurgeReport(now=now, dry_run=dry_run)
    deadline = None if time_budget is None else time.monotonic() + time_budget
    if store is None:
        store = evidence_store.store()
    if not dry_run:
        report.objects = object_retention.reconcile_objects(
            store=store, actor=actor, time_budget=time_budget
        )
        report.complete = report.objects.complete

    def out_of_time() -> bool:
        if deadline is not None and time.monotonic() >= deadline:
            report.complete = False
            return True
        return False

    _finish_pending(report, now, actor=actor, out_of_time=out_of_time, store=store)
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
            elif _purge_file(report, entry, case, row, now, actor=actor, store=store):
                entry.files += 1
                entry.bytes += row.bytes
        # A case whose files were all refused (by the store, or before anything was
        # written) is listed too: the report names them under it.
        noted = any(each.case == case.reference for each in report.files)
        if entry.files or entry.open_files or entry.legal_hold or noted:
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
    store: ObjectStore | None,
) -> bool:
    """Audit, then delete, one closed file of a due case (its object in the store first,
    if uploaded, then the local copy); True when it was purged (or, in a dry run, would
    be)."""
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
    stored = row.stored_object
    object_missing = False
    if stored is not None:
        # Asked before anything is written: a file the store still retains stays as it is
        # (unpurged, readable), and the store's reason goes in the report and the audit.
        verdict, reason = _object_verdict(report, store, stored)
        if verdict == "failed":
            note("failed", reason)
            return False
        if verdict == "refused":
            note("refused", reason)
            if not report.dry_run:
                _record_refusal(row, current_case=case, reason=reason, actor=actor)
            return False
        object_missing = verdict == "missing"
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
        local_missing = not os.path.lexists(path)
        # An uploaded file is gone when its object is (the local copy is only a cache).
        missing = object_missing if stored is not None else local_missing
        locked.purged_at = now
        if missing and local_missing:
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
        if stored is not None:
            details["object"] = _object_details(stored)
        record(PURGED, locked, actor=actor, details=details)
        _forget_summaries(locked, current, actor=actor)
    # Committed: the audit event exists, so the file may go now.
    if stored is not None:
        error = "" if object_missing else _delete_object(store, stored, report)
        error = error or _unlink(path)  # the local copy, if the host still has it
        if error:
            _record_failure(locked, error, actor=actor)
            note("failed", error)
            return False
        CaptureFile.objects.filter(pk=row.pk, file_deleted_at__isnull=True).update(
            file_deleted_at=now
        )
        note("missing" if missing else "purged")
    elif missing:
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
    report: PurgeReport,
    now: datetime,
    *,
    actor: Any,
    out_of_time: Callable[[], bool],
    store: ObjectStore | None,
) -> None:
    """Delete the files (objects, then local copies) of rows audited as purged by an
    earlier run that did not get to (or failed to) delete them, and mark them deleted."""
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
            stored = row.stored_object
            error = ""
            if not path.name.endswith(CAPTURE_SUFFIXES):
                error = "not a capture file name (.pcap, .pcapng)"
            elif stored is not None:
                # The object first: the evidence is gone only once the store deleted it.
                error = report.store_error or _delete_object(store, stored, report)
            error = error or _unlink(path)
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


def _forget_summaries(purged: CaptureFile, case: Case, *, actor: Any) -> None:
    """Delete the conversations and names of the purged file's session once none of its
    files is left unpurged (what was summarised from purged packets must not outlive
    them), audited; in the purge's transaction, so both happen or neither does."""
    if CaptureFile.objects.filter(session_id=purged.session_id, purged_at__isnull=True).exists():
        return
    deleted = forget_session(purged.session_id)
    if any(deleted.values()):
        record(
            SUMMARIES_PURGED,
            purged.session,
            actor=actor,
            details={**deleted, "case": case.reference, "last_file": purged.path},
        )


def _object_details(stored: StoredObject) -> dict[str, str]:
    return {"bucket": stored.bucket, "key": stored.key, "version": stored.version}


def _object_verdict(
    report: PurgeReport, store: ObjectStore | None, stored: StoredObject
) -> tuple[Literal["allowed", "missing", "refused", "failed"], str]:
    """Whether the store will let the object version go now, read from its lock (the
    store decides by its own clock, so ours is the real one, not the run's ``now``):
    ``refused`` with the store's reason, ``missing`` when it is gone already, ``failed``
    with the error when the store cannot be asked."""
    if store is None:
        return "failed", NO_STORE
    if report.store_error:
        return "failed", report.store_error
    try:
        facts = store.facts(stored, legal_hold=True)
    except StorageError as error:
        try:
            gone = not store.exists(stored)
        except StorageError:
            gone = False
        if gone:
            return "missing", ""
        report.store_error = str(error)
        return "failed", str(error)
    if facts.legal_hold:
        return "refused", f"the store holds {stored.key} under a legal hold"
    if facts.retain_until is not None and facts.retain_until > timezone.now():
        until = _jsonable(facts.retain_until.astimezone(UTC))
        mode = facts.lock_mode or "Object Lock"
        return "refused", f"the store retains {stored.key} until {until} ({mode})"
    return "allowed", ""


def _delete_object(
    store: ObjectStore | None, stored: StoredObject, report: PurgeReport | None = None
) -> str:
    """Delete the object version; an empty string when done, else why not (the store's
    refusal, or the store out of reach, which ``report`` remembers for the run)."""
    if store is None:
        return NO_STORE
    try:
        store.delete(stored)
    except ObjectDeleteRefused as refused:
        return str(refused)
    except StorageError as error:
        if report is not None:
            report.store_error = str(error)
        return str(error)
    return ""


def _record_refusal(row: CaptureFile, *, current_case: Case, reason: str, actor: Any) -> None:
    """Audit that the store still retains a due file's object: once per file and reason
    (the run repeats hourly until the store lets it go; the report says it every time)."""
    logger.warning("retention: %s kept: %s", row.path, reason)
    earlier = AuditEvent.objects.filter(
        action=PURGE_REFUSED, object_type=row._meta.label, object_id=str(row.pk)
    ).values_list("details", flat=True)
    if any(details.get("reason") == reason for details in earlier):
        return
    stored = row.stored_object
    record(
        PURGE_REFUSED,
        row,
        actor=actor,
        details={
            "path": row.path,
            "case": current_case.reference,
            "sha256": row.sha256,
            "object": _object_details(stored) if stored is not None else {},
            "reason": reason,
        },
    )


def _unlink(path: Path) -> str:
    """Delete the file; an empty string when it is gone (already gone included), else
    the reason it could not be deleted."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as error:
        return f"{error.strerror or error} ({path})"
    # Its packet index goes with it: summaries of purged packets must not outlive them.
    try:
        remove_index(path)
    except OSError as error:
        return f"{error.strerror or error} ({index_path(path)})"
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
        # The quick client: an unreachable store fails within seconds, not minutes, in
        # the receiver's bookkeeping thread.
        report = purge(now, time_budget=time_budget, store=object_retention.configured_store())
    except DatabaseError as error:
        logger.warning("retention: purge failed (%s); trying again later", error)
        connection.close()  # a broken connection is not reused
        return True
    except Exception:
        logger.exception("retention: purge failed; trying again later")
        return True
    if report.purged or report.errors or report.refused:
        logger.info(
            "retention: purged %d files (%d bytes) of %d cases; %d could not be deleted; "
            "%d kept by the object store's lock",
            len(report.purged),
            report.purged_bytes,
            len(report.purged_cases),
            len(report.errors),
            len(report.refused),
        )
    return report.complete
