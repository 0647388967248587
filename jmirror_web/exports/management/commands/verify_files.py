"""``manage.py verify_files [--case REF] [--session ID]``: re-hash stored capture files
against the SHA-256 recorded when they were closed (:mod:`jmirror_web.exports.verification`),
each check audited with the operating-system user who ran the command.

Prints one line per file; exits with status 1 when any file is altered or missing.
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

    def handle(self, *args: Any, **options: Any) -> None:
        files = CaptureFile.objects.filter(closed=True, purged_at__isnull=True).order_by("pk")
        if options["case"] is not None:
            if not Case.objects.filter(reference=options["case"]).exists():
                raise CommandError(f"No case {options['case']!r}.")
            files = files.filter(session__intercept__case__reference=options["case"])
        if options["session"] is not None:
            files = files.filter(session=options["session"])
        actor = shell_actor()
        checked = altered = 0
        for capture in files.iterator():
            check = verify_capture_file(capture, actor=actor)
            if check.ok is None:
                self.stdout.write(f"skipped  {capture.path}: {check.detail}")
                continue
            checked += 1
            if check.ok:
                self.stdout.write(f"ok       {capture.path}")
            else:
                altered += 1
                self.stdout.write(f"MISMATCH {capture.path}: {check.detail}")
        self.stdout.write(f"{checked} files checked, {altered} altered or missing")
        if altered:
            raise CommandError(
                f"{altered} stored file(s) do not match their recorded SHA-256", returncode=1
            )
