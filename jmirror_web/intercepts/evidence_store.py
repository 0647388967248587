"""The evidence store as configured (``settings.STORAGE``), and a capture file's bytes
wherever they are: the capturing host's local copy while it exists, else the object the
upload put in the store.

Every reader of stored evidence (exports, the packet page, ``verify_files``) opens files
through :func:`open_capture`, so a file's transitions (``.part`` to closed, upload,
removal of the local copy) never change what it reads: it opens once and keeps that.
"""

from __future__ import annotations

from io import FileIO
from pathlib import Path

from django.conf import settings

from jmirror_web.intercepts.models import CaptureFile
from jmirror_web.object_store import (
    ObjectReader,
    ObjectStore,
    StorageConfig,
    StorageError,
    shared,
)
from receiver.store import PART_SUFFIX


def configured() -> StorageConfig | None:
    config: StorageConfig | None = settings.STORAGE
    return config


def store() -> ObjectStore | None:
    """The configured store (one client per process), or None for local files only."""
    config = configured()
    return None if config is None else shared(config)


def check_reachable(what: str) -> str:
    """At a start (``what`` names the command): reach the configured store, else raise
    :class:`StorageError` with one line. Returns a line for the start-up log."""
    found = store()
    if found is None:
        return "evidence store: local files only (JMIRROR_STORAGE_URL is empty)"
    facts = found.check()
    lock = "with Object Lock" if facts.object_lock else "WITHOUT Object Lock: evidence is deletable"
    return f"evidence store: {found.config.describe()} ({lock}); {what} node {settings.NODE_NAME}"


def reach_evidence_store(what: str) -> str:
    """:func:`check_reachable` for a command's start: a store that cannot be reached is
    a :class:`CommandError` of one line with exit status 2 (as a bad setting is)."""
    from django.core.management.base import CommandError

    try:
        return check_reachable(what)
    except StorageError as error:
        raise CommandError(f"cannot start: {error}", returncode=2) from None


class CaptureUnavailable(Exception):
    """Neither a local copy nor a stored object of a capture file can be read."""


def open_capture(
    capture: CaptureFile, *, fresh: bool = False
) -> tuple[FileIO | ObjectReader, bool]:
    """The file of ``capture`` opened for reading from its start, and whether it is
    still being written (a ``.part``: its last record may be incomplete).

    Local first (the final name, then ``.part``, then the final name again in case it
    was renamed in between); else, the row read again (it may have been uploaded
    since it was loaded; not when the caller just loaded it: ``fresh``), the stored
    object. Raises :class:`CaptureUnavailable`."""
    path = capture.on_disk()
    final = path.with_name(path.name.removesuffix(PART_SUFFIX))
    part = final.with_name(final.name + PART_SUFFIX)
    for candidate, growing in ((final, False), (part, True), (final, False)):
        try:
            return open(candidate, "rb", buffering=0), growing
        except FileNotFoundError:
            continue
        except OSError as error:
            raise CaptureUnavailable(
                f"The stored file {final.name} cannot be read ({error.strerror})."
            ) from error
    if capture.pk is not None and not fresh:
        capture.refresh_from_db()
    stored = capture.stored_object
    found = store()
    if stored is None or found is None:
        raise CaptureUnavailable(f"The stored file {final.name} is missing{_where(capture)}.")
    try:
        return found.open(stored), False
    except StorageError as error:
        raise CaptureUnavailable(f"The stored file {final.name} cannot be read: {error}") from error


def _where(capture: CaptureFile) -> str:
    if capture.node and capture.node != settings.NODE_NAME:
        if capture.closed:
            return f" here; it was captured on node {capture.node} and is not in the store yet"
        return f" here; it is still being written on node {capture.node}"
    return ""


def local_path(capture: CaptureFile) -> Path | None:
    """The local copy of a closed file, if this host has it."""
    try:
        path = capture.on_disk()
    except Exception:
        return None
    return path if path.exists() and not path.name.endswith(PART_SUFFIX) else None
