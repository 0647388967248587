"""Write-once retention of the objects in the evidence store: a case's legal hold and
retention carried onto the objects of its uploaded files.

What each object should have follows from its case: the legal hold on while the case's
``legal_hold`` is, and Object Lock retention until the warrant end plus the retention
days (:func:`jmirror_web.intercepts.retention.purge_after`), only ever extended. A
:class:`CaptureFile` row records what was last set on its object (``object_legal_hold``,
``object_retain_until``), so the objects still to change are the rows that differ from
their case.

Two paths, so that a change reaches the store even when the store is down at that moment:

- when a case is saved (admin, API, records import, shell: one ``post_save`` hook, run
  once the transaction committed), its objects are brought in line at once, within
  :data:`SAVE_TIME_BUDGET`;
- :func:`reconcile_objects`, from the receiver's periodic retention run and from
  ``manage.py purge``, does the same for every case whose rows differ (a failure at the
  save, a budget run out, a change made by a bulk update that sends no signal).

Every change is audited per case (what was set on how many objects); a failure is
audited once until the next success for that case (it is logged at every attempt), so a
store down for a day does not fill the audit log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Min, Q
from django.db.models.signals import post_save

from jmirror_web.audit.log import acting_as, current_context, record
from jmirror_web.audit.models import AuditEvent
from jmirror_web.intercepts.models import CaptureFile, Case
from jmirror_web.object_store import (
    BucketFacts,
    ObjectStore,
    StorageConfig,
    StorageError,
    connect,
)

logger = logging.getLogger(__name__)

OBJECT_HOLD_SET: Final = "object legal hold set"
OBJECT_HOLD_CLEARED: Final = "object legal hold cleared"
OBJECT_HOLD_FAILED: Final = "object legal hold failed"
OBJECT_RETENTION_EXTENDED: Final = "object retention extended"
OBJECT_RETENTION_FAILED: Final = "object retention failed"
RECONCILE_ACTOR: Final = "system:retention"

# A save of a case waits at most this long for the store (a web request or an import):
# what is left goes to the next periodic pass, which the audit event says.
SAVE_TIME_BUDGET: Final = 10.0
# Housekeeping (the receiver's periodic run, the health page) must not hang on a store out
# of reach: a client with short timeouts and one attempt. A failure is retried at the
# next run.
QUICK_TIMEOUT: Final = 3.0
# How long the bucket's facts (Object Lock, versioning) are reused by the health page
# and the periodic pass, so neither asks the store more than once a minute.
BUCKET_CHECK_TTL: Final = 60.0
# At most this many file ids in one audit event (the count is always complete).
AUDIT_FILE_IDS: Final = 200

_quick: dict[StorageConfig, ObjectStore] = {}
_checks: dict[StorageConfig, tuple[float, BucketFacts | None, str]] = {}
_lock = threading.Lock()


def configured_store() -> ObjectStore | None:
    """The configured store for housekeeping (short timeouts, one attempt), or None for
    local files only."""
    config: StorageConfig | None = settings.STORAGE
    if config is None:
        return None
    with _lock:
        store = _quick.get(config)
        if store is None:
            store = _quick[config] = connect(config, timeout=QUICK_TIMEOUT, attempts=1)
        return store


def bucket_facts(store: ObjectStore) -> tuple[BucketFacts | None, str]:
    """The bucket's facts and an empty error, or None and the store's one-line error;
    checked at most once per :data:`BUCKET_CHECK_TTL` per configuration."""
    now = time.monotonic()
    with _lock:
        cached = _checks.get(store.config)
    if cached is not None and now - cached[0] < BUCKET_CHECK_TTL:
        return cached[1], cached[2]
    try:
        facts: BucketFacts | None = store.check()
        error = ""
    except StorageError as failure:
        facts, error = None, str(failure)
    with _lock:
        _checks[store.config] = (time.monotonic(), facts, error)
    return facts, error


def forget_bucket_checks() -> None:
    """Drop the cached bucket facts and clients (tests; a changed configuration)."""
    with _lock:
        _checks.clear()
        _quick.clear()


def wanted_retain_until(case: Case) -> datetime:
    """Until when the case's objects must stay locked: the warrant end plus retention."""
    return case.valid_until + timedelta(days=case.retention_days)


@dataclass
class CaseObjects:
    """What one pass did to one case's objects."""

    reference: str
    legal_hold: bool
    holds_set: int = 0
    retention_extended: int = 0
    retain_until: datetime | None = None
    left: int = 0  # still to do when the time budget ran out
    errors: list[str] = field(default_factory=list)


@dataclass
class ObjectsReport:
    """What :func:`reconcile_objects` did. ``skipped`` says why nothing was tried (local
    files only, a bucket without Object Lock, the store out of reach)."""

    cases: list[CaseObjects] = field(default_factory=list)
    skipped: str = ""
    unreachable: bool = False  # skipped because the store could not be reached
    complete: bool = True

    @property
    def errors(self) -> list[str]:
        found = [error for case in self.cases for error in case.errors]
        return [self.skipped, *found] if self.unreachable else found


def _live_rows(case: Case) -> Any:
    """The case's uploaded files whose objects are kept (not purged)."""
    return CaptureFile.objects.filter(
        session__intercept__case=case,
        uploaded_at__isnull=False,
        purged_at__isnull=True,
        file_deleted_at__isnull=True,
    ).exclude(object_key="")


@dataclass
class _Pass:
    """One kind of change over a case's rows: which were done, which objects the store
    does not have, the error that stopped it and how many rows were left."""

    done: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    error: str = ""
    left: int = 0


def _each_object(
    rows: list[CaptureFile],
    store: ObjectStore,
    change: Callable[[CaptureFile], None],
    deadline: float | None,
) -> _Pass:
    """``change`` each row's object, in order. An object the store does not have is
    skipped (``verify_files`` reports it; it must not block the others); any other
    failure stops the pass (the store refusing one object refuses the next alike, and
    one out of reach is not waited on once per file), as does ``deadline``."""
    result = _Pass()
    for position, row in enumerate(rows):
        if deadline is not None and time.monotonic() >= deadline:
            result.left = len(rows) - position
            break
        try:
            change(row)
        except StorageError as failure:
            stored = row.stored_object
            try:
                gone = stored is not None and not store.exists(stored)
            except StorageError:
                gone = False
            if gone:
                result.missing.append(row.pk)
                continue
            result.error = str(failure)
            result.left = len(rows) - position
            break
        result.done.append(row.pk)
    return result


def reconcile_case(
    case: Case,
    store: ObjectStore,
    *,
    actor: Any = None,
    deadline: float | None = None,
) -> CaseObjects:
    """Set the legal hold the case wants on every object whose row says otherwise, and
    extend the retention of every object locked for less than the case wants; record
    each on the row after the store confirmed it, and audit it per case. Stops at
    ``deadline`` (time.monotonic()) and at a failure (see :func:`_each_object`)."""
    result = CaseObjects(case.reference, case.legal_hold)
    wanted = case.legal_hold
    rows = _live_rows(case)

    def set_hold(row: CaptureFile) -> None:
        assert row.stored_object is not None  # uploaded rows with a key
        store.set_legal_hold(row.stored_object, wanted)
        CaptureFile.objects.filter(pk=row.pk).update(object_legal_hold=wanted)

    held = _each_object(
        list(rows.exclude(object_legal_hold=wanted).order_by("pk")), store, set_hold, deadline
    )
    result.holds_set = len(held.done)
    details: dict[str, Any] = {"case": case.reference, "legal_hold": wanted}
    if held.done:
        record(
            OBJECT_HOLD_SET if wanted else OBJECT_HOLD_CLEARED,
            case,
            actor=actor,
            details=details
            | {"objects": len(held.done), "files": held.done[:AUDIT_FILE_IDS], "left": held.left},
        )
    _failed(
        result,
        held,
        OBJECT_HOLD_FAILED,
        (OBJECT_HOLD_SET, OBJECT_HOLD_CLEARED),
        case,
        actor,
        details,
    )

    until = wanted_retain_until(case)

    def extend(row: CaptureFile) -> None:
        assert row.stored_object is not None
        store.extend_retention(row.stored_object, until)
        CaptureFile.objects.filter(pk=row.pk).update(object_retain_until=until)

    short = rows.filter(object_retain_until__isnull=False, object_retain_until__lt=until)
    extended = _each_object(list(short.order_by("pk")), store, extend, deadline)
    result.retention_extended = len(extended.done)
    result.retain_until = until
    details = {"case": case.reference, "retain_until": until.isoformat()}
    if extended.done:
        record(
            OBJECT_RETENTION_EXTENDED,
            case,
            actor=actor,
            details=details
            | {
                "mode": str(store.config.lock_mode),
                "objects": len(extended.done),
                "files": extended.done[:AUDIT_FILE_IDS],
            },
        )
    _failed(
        result,
        extended,
        OBJECT_RETENTION_FAILED,
        (OBJECT_RETENTION_EXTENDED,),
        case,
        actor,
        details,
    )
    return result


def _failed(
    result: CaseObjects,
    done: _Pass,
    action: str,
    successes: tuple[str, ...],
    case: Case,
    actor: Any,
    details: dict[str, Any],
) -> None:
    """Count what is left, and log and audit what failed (see :func:`_audit_failure`)."""
    result.left += done.left
    errors = []
    if done.error:
        errors.append(done.error)
    if done.missing:
        errors.append(
            f"{len(done.missing)} objects are not in the store (files {done.missing[:20]}); "
            "verify_files reports them"
        )
    if not errors:
        return
    result.errors.extend(errors)
    _audit_failure(
        action,
        successes,
        case,
        actor,
        details
        | {
            "error": "; ".join(errors),
            "objects_done": len(done.done),
            "missing_files": done.missing[:AUDIT_FILE_IDS],
            "left": done.left,
        },
    )


def _audit_failure(
    action: str, successes: tuple[str, ...], case: Case, actor: Any, details: dict[str, Any]
) -> None:
    """Log the failure; audit it unless the case's last event of this kind is already
    this failure for the same wanted state (one event per outage, not one per retry)."""
    logger.error("retention: case %s: %s", case.reference, details["error"])
    last = (
        AuditEvent.objects.filter(
            action__in=(action, *successes),
            object_type=case._meta.label,
            object_id=str(case.pk),
        )
        .order_by("-id")
        .first()
    )
    wanted_key = "legal_hold" if "legal_hold" in details else "retain_until"
    if (
        last is not None
        and last.action == action
        and last.details.get(wanted_key) == details[wanted_key]
    ):
        return
    record(action, case, actor=actor, details=details)


def _cases_to_reconcile() -> list[Case]:
    """The cases some of whose kept objects differ from what the case wants: one grouped
    query (the hold counts and the shortest retention of each case's uploaded files)."""
    files = "intercepts__sessions__files__"
    live = Q(
        **{
            f"{files}uploaded_at__isnull": False,
            f"{files}purged_at__isnull": True,
            f"{files}file_deleted_at__isnull": True,
        }
    ) & ~Q(**{f"{files}object_key": ""})
    cases = Case.objects.annotate(
        holds_on=Count(f"{files}pk", filter=live & Q(**{f"{files}object_legal_hold": True})),
        holds_off=Count(f"{files}pk", filter=live & Q(**{f"{files}object_legal_hold": False})),
        shortest_lock=Min(f"{files}object_retain_until", filter=live),
    ).filter(Q(holds_on__gt=0) | Q(holds_off__gt=0))
    due: list[Case] = []
    for case in cases.order_by("pk"):
        holds_differ = case.holds_off if case.legal_hold else case.holds_on
        shortest: datetime | None = case.shortest_lock
        if holds_differ or (shortest is not None and shortest < wanted_retain_until(case)):
            due.append(case)
    return due


def reconcile_objects(
    *,
    store: ObjectStore | None = None,
    actor: Any = RECONCILE_ACTOR,
    time_budget: float | None = None,
) -> ObjectsReport:
    """Bring every case's objects in line with the case (legal hold, retention): the
    periodic pass behind :func:`apply_case_change`. Nothing is tried without a store,
    with a bucket without Object Lock (it can hold no lock; the health page warns), or
    with the store out of reach (retried at the next run)."""
    report = ObjectsReport()
    store = store if store is not None else configured_store()
    if store is None:
        report.skipped = "local files only"
        return report
    cases = _cases_to_reconcile()
    if not cases:
        return report
    facts, error = bucket_facts(store)
    if facts is None:
        report.skipped, report.unreachable = error, True
        logger.warning("retention: object holds and retention not reconciled: %s", error)
        return report
    if not facts.object_lock:
        report.skipped = "the bucket has no Object Lock: objects cannot be held or retained"
        return report
    deadline = None if time_budget is None else time.monotonic() + time_budget
    for case in cases:
        if deadline is not None and time.monotonic() >= deadline:
            report.complete = False
            break
        result = reconcile_case(case, store, actor=actor, deadline=deadline)
        report.cases.append(result)
        if result.left and not result.errors:
            report.complete = False
    return report


def apply_case_change(case_pk: int) -> CaseObjects | None:
    """After a case was saved and committed: its objects' legal hold and retention as the
    case now says, within :data:`SAVE_TIME_BUDGET`; the audit names whoever saved it (the
    audit context). Never raises for the store: a failure is audited and the periodic
    pass tries again."""
    store = configured_store()
    if store is None:
        return None
    case = Case.objects.filter(pk=case_pk).first()
    if case is None:
        return None
    if not _live_rows(case).exists():
        return None  # nothing uploaded yet: the upload sets both from the case
    try:
        return reconcile_case(case, store, deadline=time.monotonic() + SAVE_TIME_BUDGET)
    except Exception:
        # The case is saved whatever happens here: the periodic pass finishes the work.
        logger.exception("retention: case %s: objects not updated; the next pass will", case)
        return None


def _case_saved(sender: type[Case], instance: Case, created: bool, **kwargs: Any) -> None:
    if created or kwargs.get("raw") or settings.STORAGE is None:
        return
    case_pk = instance.pk
    # Whoever saved it is named in the audit, whenever the commit comes.
    context = current_context()

    def after_commit() -> None:
        if context is None:
            apply_case_change(case_pk)
            return
        with acting_as(context.actor, context.source_address):
            apply_case_change(case_pk)

    # After the commit: the store must never hold a state the database rolled back.
    transaction.on_commit(after_commit)


def connect_hooks() -> None:
    """Wire the case save hook (from the intercepts app's ready())."""
    post_save.connect(_case_saved, sender=Case, dispatch_uid="object_retention_case_saved")
