"""``manage.py intercepts import FILE`` / ``manage.py intercepts export [FILE]``: the
intercept records (cases, routers, intercepts) as one JSON file; the format is
described in :mod:`jmirror_web.intercepts.records_file`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from jmirror_web.audit.actors import shell_actor
from jmirror_web.audit.log import acting_as, record
from jmirror_web.intercepts.records_file import (
    MAX_FILE_BYTES,
    RecordsFileError,
    export_records,
    import_records,
    records_text,
)

# argparse's own usage errors exit with 2 as well: every refusal of input does.
_BAD_INPUT = 2


class Command(BaseCommand):
    help = (
        "Import or export cases, routers and intercepts as one JSON object "
        '{"cases": [...], "routers": [...], "intercepts": [...]}; intercepts use OpenLI\'s '
        "IP intercept keys. Import is keyed by case reference, router name and LIID, runs "
        "in one transaction, and exits with status 2 naming the record and key at fault."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        read = actions.add_parser(
            "import", help="create or update the records in FILE ('-' for standard input)"
        )
        read.add_argument("file", metavar="FILE")
        write = actions.add_parser(
            "export", help="write every record to FILE (default: standard output)"
        )
        write.add_argument("file", metavar="FILE", nargs="?", default="-")

    def handle(self, *args: Any, **options: Any) -> None:
        with acting_as(shell_actor()):
            if options["action"] == "import":
                self.import_file(options["file"])
            else:
                self.export_file(options["file"])

    def import_file(self, name: str) -> None:
        raw = self.read_bounded(name)
        try:
            summary = import_records(raw, source=name)
        except RecordsFileError as error:
            raise CommandError(f"{name}: {error}", returncode=_BAD_INPUT) from None
        self.stdout.write(f"imported {name}: {summary}")

    def read_bounded(self, name: str) -> bytes:
        """The file's bytes, reading at most one byte past the limit so that a huge
        file is refused without being loaded."""
        try:
            if name == "-":
                raw = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
            else:
                with Path(name).open("rb") as stream:
                    raw = stream.read(MAX_FILE_BYTES + 1)
        except OSError as error:
            raise CommandError(
                f"{name}: cannot read: {error.strerror or error}", returncode=_BAD_INPUT
            ) from None
        if len(raw) > MAX_FILE_BYTES:
            message = f"the file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB"
            record("intercepts.import_failed", details={"source": name, "error": message})
            raise CommandError(f"{name}: {message}; refusing to read it", returncode=_BAD_INPUT)
        return raw

    def export_file(self, name: str) -> None:
        records = export_records()
        text = records_text(records)
        if name == "-":
            self.stdout.write(text, ending="")
        else:
            try:
                Path(name).write_text(text, encoding="utf-8")
            except OSError as error:
                raise CommandError(
                    f"{name}: cannot write: {error.strerror or error}", returncode=_BAD_INPUT
                ) from None
        # Exporting hands every warrant's details to whoever runs it: worth a record.
        counts = {kind: len(items) for kind, items in records.items()}
        record("intercepts.export", details={"destination": name} | counts)
