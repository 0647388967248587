"""``manage.py purge [--dry-run] [--json]``: delete the capture files whose retention
has passed (:mod:`jmirror_web.intercepts.retention`), each with an audit event naming the
operating-system user who ran the command. The receiver also runs the purge every hour.
Files in the object store are deleted there when the store allows it; what it still
retains is listed (and audited), not an error. First, the objects' legal holds and
retention are brought in line with their cases.

Exits with status 1 when some file could not be deleted (after printing the report).
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from jmirror_web.audit.actors import shell_actor
from jmirror_web.intercepts.retention import PurgeReport, purge


def _time(value: Any) -> str:
    text: str = value.strftime("%Y-%m-%d %H:%M:%SZ")
    return text


class Command(BaseCommand):
    help = (
        "Purge the pcap files of cases whose warrant ended more than their retention days "
        "ago, unless on legal hold. Each deletion is audited (path, size, SHA-256); the "
        "file rows are kept, marked purged."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="list what would be purged; change nothing"
        )
        parser.add_argument("--json", action="store_true", help="one JSON document on stdout")

    def handle(self, *args: Any, **options: Any) -> None:
        report = purge(timezone.now(), dry_run=options["dry_run"], actor=shell_actor())
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict(), indent=1))
        else:
            self._print(report)
        if report.errors:
            raise CommandError(
                f"{len(report.errors)} files could not be purged; see the report", returncode=1
            )
        if report.objects is not None and report.objects.errors:
            raise CommandError(
                "the object store could not be brought in line with the cases' legal holds "
                "and retention; see the report",
                returncode=1,
            )

    def _print(self, report: PurgeReport) -> None:
        write = self.stdout.write
        verb = "would purge" if report.dry_run else "purged"
        heading = f"retention at {_time(report.now)}"
        write(heading + (" (dry run: nothing changed)" if report.dry_run else ""))
        objects = report.objects
        if objects is not None and objects.skipped and objects.skipped != "local files only":
            write(f"object holds and retention not reconciled: {objects.skipped}")
        for changed in objects.cases if objects is not None else []:
            if changed.holds_set:
                state = "set" if changed.legal_hold else "cleared"
                count = changed.holds_set
                write(f"case {changed.reference}: legal hold {state} on {count} objects")
            if changed.retention_extended:
                write(
                    f"case {changed.reference}: retention of {changed.retention_extended} objects "
                    f"extended to {_time(changed.retain_until)}"
                )
            if changed.left:
                write(f"case {changed.reference}: {changed.left} objects left for the next run")
            for error in changed.errors:
                write(f"case {changed.reference}: FAILED in the object store: {error}")
        pending = [each for each in report.files if each.state in ("completed", "would complete")]
        if pending:
            write(f"earlier purges whose deletion was pending: {len(pending)} files")
            for each in pending:
                write(f"  {each.state}: {each.path}")
        for case in report.cases:
            write(
                f"case {case.reference}: warrant ended {_time(case.warrant_end)}, retention "
                f"{case.retention_days} days (due after {_time(case.purge_after)})"
            )
            if case.legal_hold:
                write(f"  skipped: legal hold, {case.files} files ({case.bytes} bytes) kept")
            for each in report.files:
                if each.case != case.reference or each.state in ("completed", "would complete"):
                    continue
                if each.state == "failed":
                    write(f"  FAILED {each.path}: {each.error}")
                elif each.state == "refused":
                    write(f"  kept, refused by the object store: {each.path}: {each.error}")
                elif each.state == "missing":
                    write(f"  purged {each.path}: already missing on disk (recorded as purged)")
                else:
                    write(f"  {verb} {each.path} ({each.bytes} bytes, sha256 {each.sha256})")
            for path in case.open_files:
                write(f"  not touched (still open): {path}")
        for directory in report.directories_removed:
            write(f"removed empty session directory {directory}")
        if report.unattributed_files:
            write(
                f"note: {report.unattributed_files} closed files belong to no intercept; no "
                "retention applies to them"
            )
        if not report.complete:
            write("stopped at its time budget: run again for the rest")
        held = len(report.held_cases)
        write(
            f"total: {verb} {len(report.purged)} files ({report.purged_bytes} bytes) of "
            f"{len(report.purged_cases)} cases; {held} cases skipped for legal hold; "
            f"{len(report.refused)} files kept by the object store; {len(report.errors)} errors"
        )
