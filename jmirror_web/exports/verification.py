"""Verification: stored files against their recorded SHA-256, and a file or hash
against the exports made.

A stored capture file's SHA-256 is computed by the receiver when it closes the file; a
later re-hash that differs (or a file gone from disk and never uploaded) means the
evidence was altered or lost, which stays an alert (the dashboard, the session page)
until a later check finds the file as recorded. Once uploaded, the object in the
evidence store is checked too (the store's checksum, or its bytes re-hashed on request),
and is all there is to check once the local copy was removed. Open files (still being
written, no recorded hash yet) and purged ones are skipped: there is nothing to compare.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any, BinaryIO, Final

from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.db.models import Q, QuerySet
from django.utils import timezone
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from jmirror_web.audit.log import record
from jmirror_web.exports.models import Export
from jmirror_web.intercepts import evidence_store
from jmirror_web.intercepts.access import Action, cases_for, may
from jmirror_web.intercepts.models import CaptureFile, OutsideSessionsDirectory
from jmirror_web.object_store import ObjectReader, StorageError, StoredObject, sha256_checksum

READ_BYTES: Final = 1024 * 1024


@dataclass(frozen=True)
class FileCheck:
    capture: CaptureFile
    ok: bool | None  # None: skipped (open or purged), or not checkable (``unchecked``)
    detail: str
    # The file could not be checked at all (its only copy is in a store out of reach):
    # neither verified nor altered; the row's last result stands.
    unchecked: bool = False
    newer_versions: int = 0  # versions written over its key in the store after its own


def sha256_of(stream: BinaryIO | ObjectReader) -> str:
    digest = hashlib.sha256()
    while chunk := stream.read(READ_BYTES):
        digest.update(chunk)
    return digest.hexdigest()


class _Findings:
    """What the checks of one file found: mismatches, what could not be checked, notes."""

    def __init__(self) -> None:
        self.altered: list[str] = []
        self.unreachable: list[str] = []
        self.notes: list[str] = []
        self.matched: list[str] = []
        self.newer = 0


def _check_local(capture: CaptureFile, found: _Findings) -> bool:
    """Re-hash the local copy when this host has one; whether it had one."""
    try:
        path = capture.on_disk()
    except OutsideSessionsDirectory as error:
        found.altered.append(str(error))
        return True
    try:
        with path.open("rb") as stream:
            digest = sha256_of(stream)
    except FileNotFoundError:
        return False
    except OSError as error:
        found.altered.append(f"the file cannot be read ({error.strerror})")
        return True
    if digest == capture.sha256:
        found.matched.append("on disk")
    else:
        found.altered.append(f"SHA-256 on disk is {digest}, not the recorded {capture.sha256}")
    return True


def _check_stored(
    capture: CaptureFile, stored: StoredObject, found: _Findings, *, rehash: bool
) -> None:
    """The stored object: the store's own SHA-256 of it (kept with the object since the
    upload sent the file's), or its bytes re-hashed when asked, or when the store has no
    whole-object SHA-256 (a multipart upload's is a checksum of the parts' checksums,
    ``<base64>-<parts>``). Versions written over its key are reported, not failed: the
    recorded version is what the row points at and what exports read."""
    store = evidence_store.store()
    if store is None:
        found.unreachable.append(
            f"it is in the store ({stored.bucket}/{stored.key}) but no store is configured "
            "here (JMIRROR_STORAGE_URL)"
        )
        return
    try:
        facts = store.facts(stored)
        whole = facts.checksum_sha256 and "-" not in facts.checksum_sha256
        if rehash or not whole:
            digest = store.sha256(stored)
            if digest == capture.sha256:
                found.matched.append("in the store, re-hashed")
            else:
                found.altered.append(
                    f"SHA-256 in the store is {digest}, not the recorded {capture.sha256}"
                )
        if whole:
            if facts.checksum_sha256 == sha256_checksum(capture.sha256):
                found.matched.append("by the store's checksum")
            else:
                found.altered.append(
                    f"the store's SHA-256 of the object is {_hex(facts.checksum_sha256)}, "
                    f"not the recorded {capture.sha256}"
                )
        found.newer = store.newer_versions(stored)
    except StorageError as error:
        found.unreachable.append(f"the stored object cannot be checked: {error}")
        return
    if found.newer:
        found.notes.append(
            f"warning: {found.newer} newer version(s) written over its key in the store "
            "(the recorded version is the one checked)"
        )


def _hex(checksum: str) -> str:
    try:
        return base64.b64decode(checksum, validate=True).hex()
    except ValueError:
        return checksum[:64]


def verify_capture_file(
    capture: CaptureFile, *, request: Any = None, actor: Any = None, rehash: bool = False
) -> FileCheck:
    """Check one stored file against its recorded SHA-256: its local copy re-hashed when
    this host has one, and its object in the store once uploaded (the store's checksum;
    its bytes re-hashed with ``rehash``). Records the result on its row and audits it
    (``capture_file.verify``; ``capture_file.verify_failed`` on a mismatch). A file that
    cannot be checked at all (its only copy in a store out of reach) is audited as such
    and leaves the row's last result as it was."""
    if capture.purged_at is not None:
        return FileCheck(capture, None, "purged: not verified")
    if not capture.closed or not capture.sha256:
        return FileCheck(capture, None, "still being written: no recorded SHA-256 yet")
    found = _Findings()
    had_local = _check_local(capture, found)
    stored = capture.stored_object
    if stored is not None:
        _check_stored(capture, stored, found, rehash=rehash)
    elif not had_local:
        found.altered.append("the file is missing from disk")
    unchecked = not found.altered and not found.matched
    ok: bool | None
    if found.altered:
        ok, detail = False, "; ".join(found.altered + found.unreachable)
    elif unchecked:
        ok, detail = None, "; ".join(found.unreachable)
    else:
        ok = True
        detail = "matches the recorded SHA-256"
        if stored is not None:
            detail += f" ({', '.join(found.matched)})"
        detail = "; ".join([detail, *found.unreachable])
    detail = "; ".join([detail, *found.notes])
    if not unchecked:
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
    if stored is not None:
        details["object"] = {"bucket": stored.bucket, "key": stored.key, "version": stored.version}
        details["rehashed"] = rehash
        details["newer_versions"] = found.newer
    record("capture_file.verify", capture, request=request, actor=actor, details=details)
    if ok is False:
        record("capture_file.verify_failed", capture, request=request, actor=actor, details=details)
    return FileCheck(capture, ok, detail, unchecked=unchecked, newer_versions=found.newer)


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

    def close(self) -> None:
        # Nothing was kept to close. Django closes every file of a form it gives up on
        # (too many files): File.close would call close() on None.
        pass


ONE_FILE: Final = "Send one file at a time."
MALFORMED: Final = "The upload is not a well-formed form (multipart/form-data)."
# The key under the ASGI scope's "extensions" where the server (bounded_requests) hands
# the view an upload it hashed while receiving it: only a server sets a scope.
HASHED_UPLOAD_EXTENSION: Final = "jmirror.hashed_upload"
# The verify form's fields besides the file (CSRF token, SHA-256): a few, and short.
FORM_FIELDS_MAX: Final = 16
FORM_FIELD_BYTES_MAX: Final = 4096


class StreamedVerifyUpload:
    """The verify form hashed as its multipart body is fed in, piece by piece: the file
    part's bytes go into SHA-256 and are dropped, so the memory used is the same for
    1 KB and 4 GB; the form's other fields (the CSRF token, a SHA-256) are kept, each at
    most :data:`FORM_FIELD_BYTES_MAX` bytes, :data:`FORM_FIELDS_MAX` of them.

    Used by the server (:mod:`jmirror_web.server.bounded_requests`) on a signed-in user's
    upload, which so never reaches Django whole; :meth:`outcome` is what the view gets."""

    def __init__(self, boundary: bytes, file_limit: int) -> None:
        self.file_limit = file_limit
        self.fields: list[tuple[str, str]] = []
        self.error: str | None = None
        self.too_large = False
        self.file: dict[str, Any] | None = None
        self._files = 0
        self._digest: Any = None
        self._size = 0
        self._header_field = b""
        self._disposition = b""
        self._value = bytearray()
        self._field_name: str | None = None
        self._ended = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field_data,
                "on_header_value": self._header_value_data,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )

    def feed(self, data: bytes) -> None:
        if self.error is not None:
            return
        try:
            self._parser.write(data)
        except MultipartParseError:
            self._fail(MALFORMED)

    def finish(self) -> None:
        if self.error is None and not self._ended:
            self._fail(MALFORMED)

    def outcome(self) -> dict[str, Any]:
        """What the view needs: the file's name, size and SHA-256, or the error."""
        if self.error is not None:
            return {"error": self.error}
        return {"file": self.file}

    def _fail(self, error: str) -> None:
        self.error = error
        self._digest = None

    def _part_begin(self) -> None:
        self._header_field = b""
        self._disposition = b""
        self._value = bytearray()
        self._field_name = None
        self._digest = None

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        if self._header_field.strip().lower() == b"content-disposition":
            self._disposition += data[start:end]

    def _header_end(self) -> None:
        self._header_field = b""

    def _headers_finished(self) -> None:
        if self.error is not None:
            return
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in options:
            self._files += 1
            if self._files > 1:
                self._fail(ONE_FILE)
                return
            self._digest = hashlib.sha256()
            self._size = 0
            self.file = {
                "field": name,
                "name": options[b"filename"].decode("utf-8", "replace")[:255],
            }
            return
        if len(self.fields) >= FORM_FIELDS_MAX:
            self._fail(MALFORMED)
            return
        self._field_name = name

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self.error is not None:
            return
        if self._digest is not None:
            self._size += end - start
            if self._size > self.file_limit:
                self.too_large = True
                self._fail(f"The file is larger than {self.file_limit // (1024 * 1024)} MB.")
                return
            self._digest.update(data[start:end])
        elif self._field_name is not None:
            self._value += data[start:end]
            if len(self._value) > FORM_FIELD_BYTES_MAX:
                self._fail(MALFORMED)

    def _end(self) -> None:
        self._ended = True

    def _part_end(self) -> None:
        if self.error is not None:
            return
        if self._digest is not None and self.file is not None:
            self.file.update(size=self._size, sha256=self._digest.hexdigest())
            self._digest = None
        elif self._field_name is not None:
            self.fields.append((self._field_name, self._value.decode("utf-8", "replace")))
            self._field_name = None


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
