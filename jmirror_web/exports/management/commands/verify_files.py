"""``manage.py verify_files [--case REF] [--session ID] [--rehash]``: check stored capture
files against the SHA-256 recorded when they were closed
(:mod:`jmirror_web.exports.verification`): the local copy re-hashed where this host has
one, the object in the evidence store by the store's checksum (``--rehash``: its bytes
read and hashed too), each check audited with the operating-system user who ran it.

Prints one line per file (a version written over an evidence key in the store is a
warning on it); exits with status 1 when any file is altered or missing, or could not be
checked (its store out of reach).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from jmirror_web.audit.actors import shell_actor
from jmirror_web.exports.verification import verify_capture_file
from jmirror_web.intercepts.models import CaptureFile, Case


class Command(BaseCommand):
    help = (
        "Re-hash the stored capture files (closed, not purged) and compare each with its "
        "recorded SHA-256; a mismatch is audited and shown as an alert until a later check "
        "finds the file as recorded."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--case", metavar="REF", help="only this case's files")
        parser.add_argument("--session", metavar="ID", type=int, help="only this session's files")
        parser.add_argument(
            "--rehash",
            action="store_true",
            help="read back and hash every stored object (default: the store's checksum)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        files = CaptureFile.objects.filter(closed=True, purged_at__isnull=True).order_by("pk")
        if options["case"] is not None:
            if not Case.objects.filter(reference=options["case"]).exists():
                raise CommandError(f"No case {options['case']!r}.")
            files = files.filter(session__intercept__case__reference=options["case"])
        if options["session"] is not None:
            files = files.filter(session=options["session"])
        actor = shell_actor()
        checked = altered = unchecked = warned = 0
        for capture in files.iterator():
            check = verify_capture_file(capture, actor=actor, rehash=options["rehash"])
            if check.unchecked:
                unchecked += 1
                self.stdout.write(f"UNCHECKED {capture.path}: {check.detail}")
                continue
            if check.ok is None:
                self.stdout.write(f"skipped  {capture.path}: {check.detail}")
                continue
            checked += 1
            warned += bool(check.newer_versions)
            if check.ok:
                self.stdout.write(f"ok       {capture.path}: {check.detail}")
            else:
                altered += 1
                self.stdout.write(f"MISMATCH {capture.path}: {check.detail}")
        summary = f"{checked} files checked, {altered} altered or missing"
        if warned:
            summary += f", {warned} with newer versions over their key in the store"
        if unchecked:
            summary += f", {unchecked} could not be checked"
        self.stdout.write(summary)
        if altered:
            raise CommandError(
                f"{altered} stored file(s) do not match their recorded SHA-256", returncode=1
            )
        if unchecked:
            raise CommandError(
                f"{unchecked} stored file(s) could not be checked: the store is out of reach",
                returncode=1,
            )
