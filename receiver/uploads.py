"""The upload queue: closed capture files of this node go to the evidence store.

The queue is the :class:`CaptureFile` rows themselves: this node's closed files with a
SHA-256, not uploaded and not purged, whose ``upload_after`` is empty or past, oldest
``closed_at`` first. Nothing else holds it, so it survives restarts, database hiccups and
store outages, and files closed by rotation, idle timeout, shutdown or start-up repair
(:func:`receiver.bookkeeping.record_recovered`) are queued alike.

:class:`Uploader` works the queue in ``manage.py upload``, which the receiver
(:func:`receiver.service.serve`) runs as its child process (:class:`UploadProcess`), with
its own database connection and interpreter: the capture loop never waits for it. Each file goes up
with its recorded SHA-256 as the object's checksum (the store refuses a body that does
not match) and, when the bucket has Object Lock, locked until its case's warrant end
plus retention days, with the case's legal hold. Only after the store confirmed the
upload does the row say where the object is (one UPDATE guarded by ``uploaded_at IS
NULL``, audited in the same transaction). A failure is counted on the row and retried
with exponential backoff and jitter; a local copy that is missing or no longer matches
its SHA-256 is never uploaded: the row's verification records it (the dashboard's
altered-file alert) and the audit log says so once.

``JMIRROR_LOCAL_KEEP_HOURS`` after its upload, a file's local copy is removed, never
before, and only once the store confirmed again that it holds the object with the file's
checksum; the removal is audited (where the evidence is changed: the chain of custody).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import logging
import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Count, F, Min, Q, QuerySet, Sum

from jmirror_web import object_store
from jmirror_web.audit.log import record
from jmirror_web.intercepts.models import (
    CaptureFile,
    Case,
    OutsideSessionsDirectory,
    ReceiverProcess,
)
from jmirror_web.intercepts.retention import purge_after
from jmirror_web.object_store import ObjectStore, StorageError, StoredObject, sha256_checksum
from receiver.child_process import ChildCommand
from receiver.metrics import UploadBacklog

logger = logging.getLogger(__name__)

# Who the audit log names for what this queue does.
UPLOADS_ACTOR: Final = "system:uploads"
UPLOADED: Final = "capture_file.uploaded"
UPLOAD_REFUSED: Final = "capture_file.upload_refused"
LOCAL_COPY_REMOVED: Final = "capture_file.local_copy_removed"
# A failed upload is tried again after FIRST, doubling per failure up to LIMIT, each wait
# between half and all of that (jitter: several receivers coming back from one outage do
# not all knock at once).
BACKOFF_FIRST: Final = 2.0
BACKOFF_LIMIT: Final = 300.0
# Whether the bucket has Object Lock is asked at start and again this often (a bucket
# given Object Lock later gets locked objects from then on).
LOCK_CHECK_INTERVAL: Final = 600.0
# While the store does not answer (at start, or after a failed upload), it is asked
# again this often, and nothing else is sent to it.
PROBE_INTERVAL: Final = 5.0
# Local copies due for removal are looked for this often (and after each upload when
# JMIRROR_LOCAL_KEEP_HOURS is 0), this many per round.
REMOVAL_INTERVAL: Final = 30.0
REMOVALS_PER_ROUND: Final = 100
# The backlog is counted for the receiver's row and the metrics this often.
REPORT_INTERVAL: Final = 2.0
# With nothing due, the queue is looked at again after this long.
IDLE_WAIT: Final = 1.0
# Every object with Object Lock is locked at least this long, even of a case already past
# its retention (its local copy is purged meanwhile; the object a day later at the earliest).
MINIMUM_LOCK: Final = timedelta(days=1)
_HASH_BLOCK: Final = 2**20
# One line of a failure on a row (CaptureFile.upload_error, ReceiverProcess.last_upload_error).
ERROR_CHARS: Final = 300
# An upload process standing by (another works its node's queue) tries the lock this often.
STANDBY_WAIT: Final = 5.0


@contextlib.contextmanager
def sole_worker(lock_path: Path, stop: threading.Event, node: str) -> Iterator[bool]:
    """Hold the queue's lock file while the block runs: yields True once this process
    holds it, False when ``stop`` was set while waiting for it.

    Why: one capture host runs one receiver per core on the same port (SO_REUSEPORT),
    each with its upload process, all working the same node's queue. Without the lock
    they took the same oldest file at once and each uploaded it, one more object version
    and one more upload's CPU per receiver. The others stand by and take over within
    :data:`STANDBY_WAIT` when the holder exits or is killed (the kernel releases an
    ``flock`` with its process)."""
    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        told = False
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told:
                    logger.info(
                        "upload queue: another upload process works node %s's queue; "
                        "this one stands by",
                        node,
                    )
                    told = True
                if stop.wait(STANDBY_WAIT):
                    yield False
                    return
        if told:
            logger.info("upload queue: taking over node %s's queue", node)
        yield True
    finally:
        os.close(descriptor)  # releases the lock


def queue_lock_path(node: str) -> Path:
    """The lock file of ``node``'s queue in this host's data directory."""
    return Path(settings.DATA_DIR) / f"upload-queue.{node}.lock"


def backoff(attempts: int, rng: random.Random) -> float:
    """Seconds before the next try after ``attempts`` failures (1 or more)."""
    ceiling = min(BACKOFF_LIMIT, BACKOFF_FIRST * 2 ** max(0, attempts - 1))
    return float(ceiling * (0.5 + 0.5 * rng.random()))


def pending(node: str) -> QuerySet[CaptureFile]:
    """Every file of ``node`` waiting for its upload, due or not."""
    return CaptureFile.objects.filter(
        node=node, closed=True, uploaded_at__isnull=True, purged_at__isnull=True
    ).exclude(sha256="")


def due(node: str, now: datetime) -> QuerySet[CaptureFile]:
    """The queue as it stands at ``now``: oldest closed first."""
    return (
        pending(node)
        .filter(Q(upload_after__isnull=True) | Q(upload_after__lte=now))
        .order_by(F("closed_at").asc(nulls_first=True), "pk")
    )


def retention_for(
    case: Case | None, now: datetime, *, object_lock: bool
) -> tuple[datetime | None, bool]:
    """The object's retain-until date and legal hold: its case's warrant end plus
    retention days and the case's legal hold, at least :data:`MINIMUM_LOCK` from now.
    A session no intercept claimed (a file of no case) is kept the default retention
    (JMIRROR_RETENTION_DAYS) from now, no legal hold: no file is ever stored unlocked in
    a bucket that locks. Without Object Lock: (None, False), the store could not keep
    either."""
    if not object_lock:
        return None, False
    if case is None:
        return now + timedelta(days=settings.JMIRROR_RETENTION_DAYS), False
    return max(purge_after(case), now + MINIMUM_LOCK), bool(case.legal_hold)


def composite_checksum(path: Path, part_bytes: int) -> str:
    """The checksum S3 gives a multipart object whose parts were ``part_bytes`` of the
    file at ``path``: the SHA-256 of the parts' SHA-256s, in base64, then ``-N``."""
    digests = []
    with path.open("rb") as stream:
        while True:
            part = hashlib.sha256()
            left = part_bytes
            while left:
                block = stream.read(min(_HASH_BLOCK, left))
                if not block:
                    break
                part.update(block)
                left -= len(block)
            if left == part_bytes:
                break
            digests.append(part.digest())
            if left:
                break
    whole = base64.b64encode(hashlib.sha256(b"".join(digests)).digest()).decode("ascii")
    return f"{whole}-{len(digests)}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _one_line(text: str) -> str:
    return " ".join(text.split())[:ERROR_CHARS]


@dataclass
class UploadTotals:
    """What this run of the queue did: files and bytes uploaded, failed attempts, local
    copies removed, and the last failure (one line, no path: the receiver's row is a
    system record that must not hold case data such as a LIID)."""

    uploaded_files: int = 0
    uploaded_bytes: int = 0
    failures: int = 0
    local_copies_removed: int = 0
    last_error: str = ""


class Uploader:
    """Works this node's upload queue (see the module's docstring) until stopped."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        node: str | None = None,
        keep_hours: int | None = None,
        process_id: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.node = node if node is not None else settings.NODE_NAME
        keep = settings.JMIRROR_LOCAL_KEEP_HOURS if keep_hours is None else keep_hours
        self.keep = timedelta(hours=keep)
        self.process_id = process_id
        self.totals = UploadTotals()
        self.object_lock: bool | None = None  # not known until the bucket answered
        self._down = False
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not a secret)
        self._lock_checked = -LOCK_CHECK_INTERVAL
        self._next_removal = 0.0
        self._next_report = 0.0
        self._backlog = UploadBacklog()
        self._backlog_lock = threading.Lock()

    # -- the thread ---------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Upload, remove and report until ``stop`` is set; never raises (a failure is
        logged and tried again). Closes this thread's database connection at the end."""
        try:
            while not stop.is_set():
                pause = IDLE_WAIT
                try:
                    pause = self.step()
                except DatabaseError as error:
                    logger.warning("upload queue: database error (%s); trying again", error)
                    connection.close()
                    pause = BACKOFF_FIRST
                except Exception:
                    logger.exception("upload queue: unexpected error; trying again")
                    pause = BACKOFF_FIRST
                if pause:
                    stop.wait(pause)
            # The last counts may be lost with this run; the queue itself never is.
            with contextlib.suppress(DatabaseError):
                self.report()
        finally:
            connection.close()

    def step(self) -> float:
        """One round: the store's check when due, one upload, the removals and the report
        when due. Returns how long to wait before the next round (0: go on at once)."""
        since = time.monotonic() - self._lock_checked
        if self.reachable:
            if since >= LOCK_CHECK_INTERVAL:
                self.check_lock()
        elif since >= PROBE_INTERVAL:
            self.check_lock()
        pause = IDLE_WAIT
        if self.reachable:
            row = due(self.node, datetime.now(UTC)).select_related("session__intercept__case")
            first = row.first()
            if first is not None:
                pause = self.upload(first)
        if self.reachable and (
            time.monotonic() >= self._next_removal or (not self.keep and pause == 0)
        ):
            self.remove_local_copies()
            self._next_removal = time.monotonic() + REMOVAL_INTERVAL
        if time.monotonic() >= self._next_report:
            self.report()
            self._next_report = time.monotonic() + REPORT_INTERVAL
        return pause

    @property
    def reachable(self) -> bool:
        """Whether uploads go on: the bucket answered its last check and no upload has
        failed since. While not, the queue pauses and only the check is tried, every
        PROBE_INTERVAL: an outage costs one failed attempt on one row, and uploads
        resume within seconds of the store's return, whatever the rows' backoff."""
        return self.object_lock is not None and not self._down

    def check_lock(self) -> bool:
        """Ask whether the bucket has Object Lock (kept as last known when the store
        does not answer; nothing is uploaded before the first answer). Returns whether
        the store answered."""
        self._lock_checked = time.monotonic()
        try:
            facts = self.store.check()
        except StorageError as error:
            self._down = True
            self._note_failure(str(error))
            logger.warning("upload queue paused: %s", error)
            return False
        if self._down:
            logger.info("upload queue: the store answers again; uploads resume")
        self._down = False
        if facts.object_lock != self.object_lock:
            if facts.object_lock:
                logger.info("upload queue: the bucket has Object Lock; objects are locked")
            else:
                logger.warning(
                    "upload queue: the bucket has no Object Lock: uploaded evidence is "
                    "deletable by anyone holding the store's credentials"
                )
        self.object_lock = facts.object_lock
        return True

    # -- uploads ------------------------------------------------------------------------

    def upload(self, row: CaptureFile) -> float:
        """Upload one file of the queue; returns the pause before the next (0 after a
        success; after a failure, the row's backoff, so an outage is not hammered)."""
        now = datetime.now(UTC)
        try:
            path = row.on_disk()
        except OutsideSessionsDirectory as error:
            return self._refuse(row, str(error))
        if not path.is_file():
            return self._refuse(row, "the local copy is missing; not uploaded")
        intercept = row.session.intercept
        case = intercept.case if intercept is not None else None
        retain_until, legal_hold = retention_for(case, now, object_lock=bool(self.object_lock))
        key = object_store.object_key(self.store.config, self.node, CaptureFile.stored_path(path))
        size = path.stat().st_size
        logger.info("uploading %s (%d bytes, attempt %d)", row.path, size, row.upload_attempts + 1)
        try:
            stored = self.store.upload(
                path, key, row.sha256, retain_until=retain_until, legal_hold=legal_hold
            )
        except StorageError as error:
            return self._failed(row, path, key, str(error))
        with transaction.atomic():
            updated = CaptureFile.objects.filter(pk=row.pk, uploaded_at__isnull=True).update(
                object_bucket=stored.bucket,
                object_key=stored.key,
                object_version=stored.version,
                uploaded_at=datetime.now(UTC),
                object_retain_until=retain_until,
                object_legal_hold=legal_hold,
                upload_error="",
                upload_after=None,
            )
            if updated:
                record(
                    UPLOADED,
                    row,
                    actor=UPLOADS_ACTOR,
                    details={
                        **self._object_details(row, stored),
                        "bytes": size,
                        "retain_until": retain_until.isoformat() if retain_until else None,
                        "lock_mode": str(self.store.config.lock_mode) if retain_until else "",
                        "legal_hold": legal_hold,
                    },
                )
        if not updated:
            # Another process of this node recorded it first: this object is one more
            # version under the key (locked like the first); the row keeps the first.
            logger.warning("upload queue: %s was recorded as uploaded meanwhile", row.path)
            return 0.0
        self.totals.uploaded_files += 1
        self.totals.uploaded_bytes += size
        self.totals.last_error = ""
        logger.info("uploaded %s (%d bytes) as %s", row.path, size, stored.key)
        if case is not None and self.object_lock:
            self._follow_case(row.pk, stored, case, retain_until, legal_hold)
        return 0.0

    def _follow_case(
        self,
        pk: int,
        stored: StoredObject,
        case: Case,
        retain_until: datetime | None,
        legal_hold: bool,
    ) -> None:
        """The case as it is now: a legal hold set or lifted, or a warrant extended,
        while the file went up is carried to the object (whoever changed the case saw
        no stored object for this file yet)."""
        now = Case.objects.filter(pk=case.pk).values("legal_hold", "valid_until").first()
        if now is None:
            return
        try:
            if bool(now["legal_hold"]) != legal_hold:
                self.store.set_legal_hold(stored, bool(now["legal_hold"]))
                CaptureFile.objects.filter(pk=pk).update(object_legal_hold=now["legal_hold"])
            later = now["valid_until"] + timedelta(days=case.retention_days)
            if retain_until is not None and later > retain_until:
                self.store.extend_retention(stored, later)
                CaptureFile.objects.filter(pk=pk).update(object_retain_until=later)
        except StorageError as error:
            logger.error("upload queue: the case changed during the upload: %s", error)

    def _failed(self, row: CaptureFile, path: Path, key: str, error: str) -> float:
        """A failed upload: a local copy that no longer matches is refused; anything
        else is counted on the row and tried again later."""
        try:
            found = file_sha256(path)
        except OSError as read_error:
            return self._refuse(row, f"the local copy cannot be read ({read_error.strerror})")
        if found != row.sha256:
            return self._refuse(
                row, f"the local copy's SHA-256 is {found}, not the recorded {row.sha256}"
            )
        attempts = row.upload_attempts + 1
        wait = backoff(attempts, self._rng)
        CaptureFile.objects.filter(pk=row.pk).update(
            upload_attempts=attempts,
            upload_error=_one_line(error),
            upload_after=datetime.now(UTC) + timedelta(seconds=wait),
        )
        logger.warning(
            "upload of %s failed (attempt %d, next in %.0f s): %s", row.path, attempts, wait, error
        )
        # The system records (the receiver's row, the metrics) carry no key or path.
        self._note_failure(f"file {row.pk}: " + error.replace(key, "its object"))
        # Until the store answers a check again, nothing more is tried (see reachable).
        self._down = True
        self._lock_checked = time.monotonic()
        return min(wait, PROBE_INTERVAL)

    def _note_failure(self, error: str) -> None:
        self.totals.failures += 1
        self.totals.last_error = _one_line(error)

    def _refuse(self, row: CaptureFile, reason: str) -> float:
        """The local copy cannot be what was recorded: never uploaded. The row's
        verification says so (an alert on the dashboard and the session page), the audit
        log once, and the file waits as long as any failure may (an operator's case)."""
        attempts = row.upload_attempts + 1
        wait = backoff(attempts, self._rng)
        first = not (row.verify_ok is False and row.verify_detail == reason[:300])
        with transaction.atomic():
            CaptureFile.objects.filter(pk=row.pk).update(
                upload_attempts=attempts,
                upload_error=_one_line(reason),
                upload_after=datetime.now(UTC) + timedelta(seconds=wait),
                verified_at=datetime.now(UTC),
                verify_ok=False,
                verify_detail=reason[:300],
            )
            if first:
                record(
                    UPLOAD_REFUSED,
                    row,
                    actor=UPLOADS_ACTOR,
                    details={"path": row.path, "node": self.node, "sha256": row.sha256,
                             "reason": reason},
                )  # fmt: skip
        if first:
            logger.error("not uploading %s: %s", row.path, reason)
        self._note_failure(f"file {row.pk} not uploaded: its local copy is missing or altered")
        return 0.0

    # -- local copies -------------------------------------------------------------------

    def remove_local_copies(self) -> int:
        """Remove the local copies uploaded more than the keep time ago, each once the
        store confirmed it holds the object with the file's checksum; returns how many."""
        cutoff = datetime.now(UTC) - self.keep
        rows = list(
            CaptureFile.objects.filter(
                node=self.node,
                uploaded_at__lte=cutoff,
                local_removed_at__isnull=True,
                purged_at__isnull=True,
            )
            .exclude(object_key="")
            .order_by("uploaded_at", "pk")[:REMOVALS_PER_ROUND]
        )
        removed = 0
        for row in rows:
            try:
                removed += self.remove_local_copy(row)
            except StorageError as error:
                self._note_failure(f"file {row.pk}: " + str(error).replace(row.object_key, "it"))
                logger.warning("keeping the local copy of %s: %s", row.path, error)
                break  # the store does not answer: the others wait for the next round
        return removed

    def remove_local_copy(self, row: CaptureFile) -> bool:
        """Remove one uploaded file's local copy after confirming the stored object."""
        stored = row.stored_object
        assert stored is not None
        try:
            path: Path | None = row.on_disk()
        except OutsideSessionsDirectory:
            path = None
        exists = path is not None and path.is_file()
        mismatch = self._stored_mismatch(row, stored, path if exists else None)
        if mismatch:
            if row.verify_ok is not False or row.verify_detail != mismatch[:300]:
                with transaction.atomic():
                    CaptureFile.objects.filter(pk=row.pk).update(
                        verified_at=datetime.now(UTC), verify_ok=False, verify_detail=mismatch[:300]
                    )
                    record(
                        "capture_file.verify_failed",
                        row,
                        actor=UPLOADS_ACTOR,
                        details={"path": row.path, "recorded_sha256": row.sha256,
                                 "ok": False, "detail": mismatch},
                    )  # fmt: skip
                logger.error("keeping the local copy of %s: %s", row.path, mismatch)
            return False
        if exists:
            assert path is not None
            path.unlink(missing_ok=True)
        # After the unlink: a crash in between leaves an uploaded row whose copy is gone,
        # which the next round finds here and records (the object was confirmed again).
        with transaction.atomic():
            marked = CaptureFile.objects.filter(pk=row.pk, local_removed_at__isnull=True).update(
                local_removed_at=datetime.now(UTC)
            )
            if marked:
                record(
                    LOCAL_COPY_REMOVED,
                    row,
                    actor=UPLOADS_ACTOR,
                    details={
                        **self._object_details(row, stored),
                        "found_gone": not exists,
                    },
                )
        self.totals.local_copies_removed += 1
        logger.info(
            "removed the local copy of %s (in the store as %s)",
            row.path,
            stored.key,
        )
        return True

    def _stored_mismatch(self, row: CaptureFile, stored: StoredObject, path: Path | None) -> str:
        """Why the stored object cannot stand in for the local copy, or "" when it can:
        its checksum is the file's SHA-256 (or, for a multipart object, the composite of
        the local copy's parts while the local copy still has the recorded SHA-256),
        else the object read back in full hashes to it."""
        facts = self.store.facts(stored)
        if path is not None and facts.size != path.stat().st_size:
            return f"the stored object has {facts.size} bytes, the local copy {path.stat().st_size}"
        if facts.checksum_sha256 == sha256_checksum(row.sha256):
            return ""
        if (
            path is not None
            and "-" in facts.checksum_sha256
            and facts.checksum_sha256 == composite_checksum(path, object_store.PART_BYTES)
            and file_sha256(path) == row.sha256
        ):
            return ""
        found = self.store.sha256(stored)
        if found != row.sha256:
            return f"the stored object's SHA-256 is {found}, not the recorded {row.sha256}"
        return ""

    # -- the backlog --------------------------------------------------------------------

    def _object_details(self, row: CaptureFile, stored: StoredObject) -> dict[str, str]:
        """What the audit log says of a file and its object, in every event of theirs."""
        return {
            "path": row.path,
            "node": self.node,
            "bucket": stored.bucket,
            "key": stored.key,
            "version": stored.version,
            "sha256": row.sha256,
        }

    def backlog(self) -> UploadBacklog:
        """The latest counts (for the metrics endpoint, read from another thread)."""
        with self._backlog_lock:
            return self._backlog

    def report(self) -> UploadBacklog:
        """Count the backlog and write it, with this run's totals, to the receiver's row."""
        counted = pending(self.node).aggregate(
            files=Count("pk"), bytes=Sum("bytes"), oldest=Min("closed_at")
        )
        now = datetime.now(UTC)
        oldest = counted["oldest"]
        totals = self.totals
        backlog = UploadBacklog(
            files=counted["files"] or 0,
            bytes=counted["bytes"] or 0,
            oldest_seconds=max(0.0, (now - oldest).total_seconds()) if oldest else 0.0,
            uploaded_files=totals.uploaded_files,
            uploaded_bytes=totals.uploaded_bytes,
            failures=totals.failures,
            local_copies_removed=totals.local_copies_removed,
            last_error=totals.last_error,
        )
        with self._backlog_lock:
            self._backlog = backlog
        if self.process_id is not None:
            ReceiverProcess.objects.filter(pk=self.process_id).update(
                upload_backlog=backlog.files,
                upload_backlog_bytes=backlog.bytes,
                upload_oldest_seconds=backlog.oldest_seconds,
                uploaded_files=backlog.uploaded_files,
                uploaded_bytes=backlog.uploaded_bytes,
                upload_failures=backlog.failures,
                local_copies_removed=backlog.local_copies_removed,
                last_upload_error=backlog.last_error,
            )
        return backlog


class UploadProcess(ChildCommand):
    """``manage.py upload`` as the receiver's child (see that command for why a process).
    Its backlog reaches the receiver's row from the child; :meth:`backlog` reads it back
    for the metrics endpoint."""

    def __init__(self, process_id: int, *, manage_py: Path | None = None) -> None:
        super().__init__(
            "upload queue",
            ["upload", "--receiver-process", str(process_id)],
            manage_py=manage_py,
        )
        self.process_id = process_id

    def backlog(self) -> UploadBacklog:
        """The backlog as the child last wrote it to the receiver's row."""
        try:
            row = (
                ReceiverProcess.objects.filter(pk=self.process_id)
                .values(
                    "upload_backlog",
                    "upload_backlog_bytes",
                    "upload_oldest_seconds",
                    "uploaded_files",
                    "uploaded_bytes",
                    "upload_failures",
                    "local_copies_removed",
                    "last_upload_error",
                )
                .first()
            )
        except DatabaseError:
            return UploadBacklog()
        finally:
            connection.close()  # a metrics scrape's thread keeps no connection
        if row is None:
            return UploadBacklog()
        return UploadBacklog(
            files=row["upload_backlog"],
            bytes=row["upload_backlog_bytes"],
            oldest_seconds=row["upload_oldest_seconds"],
            uploaded_files=row["uploaded_files"],
            uploaded_bytes=row["uploaded_bytes"],
            failures=row["upload_failures"],
            local_copies_removed=row["local_copies_removed"],
            last_error=row["last_upload_error"],
        )


def start_uploader(
    store: ObjectStore, stop: threading.Event, *, process_id: int | None
) -> tuple[Uploader, threading.Thread]:
    """The queue's thread, started (a daemon: an upload in flight at exit is done again
    by the next start, the row being the queue)."""
    uploader = Uploader(store, process_id=process_id)
    thread = threading.Thread(
        target=uploader.run, args=(stop,), name="receive-uploads", daemon=True
    )
    thread.start()
    return uploader, thread
