"""Verification: stored files against their recorded SHA-256, and a file or hash
against the exports made.

A stored capture file's SHA-256 is computed by the receiver when it closes the file; a
later re-hash that differs (or a file gone from disk) means the evidence was altered or
lost, which stays an alert (the dashboard, the session page) until a later check finds
the file as recorded. Open files (still being written, no recorded hash yet) and purged
ones are skipped: there is nothing to compare.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Final

from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.db.models import Q, QuerySet
from django.utils import timezone

from jmirror_web.audit.log import record
from jmirror_web.exports.models import Export
from jmirror_web.exports.service import ExportRefused, file_path
from jmirror_web.intercepts.access import Action, cases_for, may
from jmirror_web.intercepts.models import CaptureFile

READ_BYTES: Final = 1024 * 1024


@dataclass(frozen=True)
class FileCheck:
    capture: CaptureFile
    ok: bool | None  # None: skipped (open or purged)
    detail: str


def sha256_of(path: Any) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(READ_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verify_capture_file(
    capture: CaptureFile, *, request: Any = None, actor: Any = None
) -> FileCheck:
    """Re-hash one stored file from disk, record the result on its row and audit it
    (``capture_file.verify``; ``capture_file.verify_failed`` on a mismatch)."""
    if capture.purged_at is not None:
        return FileCheck(capture, None, "purged: not verified")
    if not capture.closed or not capture.sha256:
        return FileCheck(capture, None, "still being written: no recorded SHA-256 yet")
    try:
        found = sha256_of(file_path(capture))
    except FileNotFoundError:
        ok, detail = False, "the file is missing from disk"
    except ExportRefused as error:
        ok, detail = False, str(error)
    except OSError as error:
        ok, detail = False, f"the file cannot be read ({error.strerror})"
    else:
        ok = found == capture.sha256
        detail = (
            "matches the recorded SHA-256"
            if ok
            else f"SHA-256 on disk is {found}, not the recorded {capture.sha256}"
        )
    capture.verified_at = timezone.now()
    capture.verify_ok = ok
    capture.verify_detail = detail[:300]
    capture.save(update_fields=["verified_at", "verify_ok", "verify_detail"])
    details = {
        "session": capture.session_id,
        "path": capture.path,
        "recorded_sha256": capture.sha256,
        "ok": ok,
        "detail": detail,
    }
    record("capture_file.verify", capture, request=request, actor=actor, details=details)
    if not ok:
        record("capture_file.verify_failed", capture, request=request, actor=actor, details=details)
    return FileCheck(capture, ok, detail)


# Identifying a file --------------------------------------------------------------------


@dataclass(frozen=True)
class Matches:
    exports: list[Export]
    captures: list[CaptureFile]
    hidden: int  # matches the user may not see: counted in the audit log only


def visible_exports(user: Any) -> QuerySet[Export]:
    """The exports whose manifest ``user`` may read (see ``access.may_see_export``)."""
    if may(user, Action.VIEW_AUDIT):
        return Export.objects.all()
    return Export.objects.filter(
        Q(requester=user) | Q(case__in=cases_for(user, Action.DOWNLOAD).values("pk"))
    )


def visible_captures(user: Any) -> QuerySet[CaptureFile]:
    """The stored files whose hash ``user`` may see: the session page's (metadata right),
    and every one for auditors."""
    if may(user, Action.VIEW_AUDIT):
        return CaptureFile.objects.all()
    return CaptureFile.objects.filter(
        session__intercept__case__in=cases_for(user, Action.VIEW_METADATA).values("pk")
    )


def find(sha256: str, user: Any) -> Matches:
    exports = Export.objects.filter(sha256=sha256, state=Export.State.COMPLETE)
    captures = CaptureFile.objects.filter(sha256=sha256)
    shown_exports = list(
        visible_exports(user)
        .filter(pk__in=exports.values("pk"))
        .select_related("case", "intercept", "session__router")
    )
    shown_captures = list(
        visible_captures(user)
        .filter(pk__in=captures.values("pk"))
        .select_related("session__router", "session__intercept__case")
    )
    hidden = exports.count() + captures.count() - len(shown_exports) - len(shown_captures)
    return Matches(shown_exports, shown_captures, hidden)


class HashedUpload(UploadedFile):
    """What is left of an uploaded file once hashed: its name, size and SHA-256."""

    def __init__(self, name: str, size: int, sha256: str) -> None:
        super().__init__(file=None, name=name, size=size)
        self.sha256 = sha256


class UploadTooLarge(Exception):
    pass


class HashingUploadHandler(FileUploadHandler):
    """Hashes each chunk of an uploaded file as it arrives and keeps none: the file is
    never written anywhere. Stops the upload beyond ``limit`` bytes."""

    def __init__(self, request: Any, limit: int) -> None:
        super().__init__(request)
        self.limit = limit
        self.too_large = False
        self._digest = hashlib.sha256()
        self._size = 0

    def handle_raw_input(
        self,
        input_data: Any,
        META: Any,
        content_length: int,
        boundary: Any,
        encoding: str | None = None,
    ) -> None:
        # A body announced as over the limit (plus room for the form's other parts) is
        # refused at its first chunk, without reading the rest.
        if content_length > self.limit + 64 * 1024:
            self.too_large = True

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        super().new_file(*args, **kwargs)
        self._digest = hashlib.sha256()
        self._size = 0

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        if self.too_large:
            raise StopUpload(connection_reset=True)
        self._size += len(raw_data)
        if self._size > self.limit:
            self.too_large = True
            raise StopUpload(connection_reset=False)
        self._digest.update(raw_data)

    def file_complete(self, file_size: int) -> HashedUpload:
        return HashedUpload(self.file_name or "", self._size, self._digest.hexdigest())
