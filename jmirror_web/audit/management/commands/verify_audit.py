"""``manage.py verify_audit [--checkpoints FILE] [--public-key FILE]``: check the audit
chain, and check it against the signed checkpoints; exit status 1 on any finding."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.core.management.base import BaseCommand, CommandError, CommandParser

from jmirror_web.audit.checkpoints import (
    KEY_FILE_MAX_BYTES,
    SignedCheckpoint,
    SigningKeyError,
    check_checkpoints,
    key_file,
    key_id,
    load_public_key,
    read_checkpoint_file,
    signing_key,
)
from jmirror_web.audit.models import GENESIS_HASH, AuditCheckpoint, AuditEvent, verify_chain
from jmirror_web.intercepts.records_file import utc_iso


class Command(BaseCommand):
    help = (
        "Check the audit log's SHA-256 chain from the first event to the last, then each "
        "signed checkpoint (from the database and, with --checkpoints, from an exported "
        "file): its signature, and that the event it names still has its hash. Prints the "
        "number of events, the last hash and the newest checkpoint; or names the first "
        "broken event or disagreeing checkpoint and exits 1."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--checkpoints",
            metavar="FILE",
            help="checkpoints exported by `manage.py audit checkpoints` (JSON lines) and "
            "kept off this host; any of them missing from the database is reported",
        )
        parser.add_argument(
            "--public-key",
            metavar="FILE",
            action="append",
            help="a public key from `manage.py audit public-key` (repeatable, e.g. after a "
            "key change); default: the key in JMIRROR_AUDIT_KEY_FILE",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        public_keys = self.public_keys(options["public_key"])
        kept = self.kept_checkpoints(options["checkpoints"])
        stored = [
            SignedCheckpoint.of(each)
            for each in AuditCheckpoint.objects.order_by("id").iterator(chunk_size=2000)
        ]
        wanted = {each.sequence for each in [*stored, *kept]}
        event_hashes: dict[int, str] = {}
        seen = 0
        last_id = 0
        last_hash = GENESIS_HASH

        def counted() -> Iterator[AuditEvent]:
            nonlocal seen, last_id, last_hash
            for event in AuditEvent.objects.order_by("id").iterator(chunk_size=2000):
                seen += 1
                if event.pk in wanted:
                    event_hashes[event.pk] = event.hash
                yield event
                last_id, last_hash = event.pk, event.hash

        broken = verify_chain(counted())
        if broken is not None:
            event = AuditEvent.objects.get(pk=broken.event_id)
            raise CommandError(
                f"audit log broken at event #{event.pk} ({utc_iso(event.created_at)}, "
                f"{event.action}): {broken.problem}",
                returncode=1,
            )
        findings = check_checkpoints(
            stored, kept, public_keys, event_hashes, last_id, options["checkpoints"] or ""
        )
        if findings:
            for finding in findings[1:]:
                self.stderr.write(f"also: {finding}")
            raise CommandError(f"audit log disagrees with {findings[0]}", returncode=1)
        summary = f"audit log intact: {seen} events, last hash {last_hash}"
        checkpoints = sorted([*stored, *kept], key=lambda each: each.sequence)
        if checkpoints:
            newest = checkpoints[-1]
            count = len({each.identity() for each in checkpoints})
            summary += (
                f"; {count} checkpoint{' agrees' if count == 1 else 's agree'}, the newest at "
                f"event #{newest.sequence} "
                f"({newest.time})"
            )
        else:
            summary += (
                "; no checkpoints, so a rewritten or truncated log would pass "
                "(see `manage.py audit checkpoint`)"
            )
        self.stdout.write(summary)

    def public_keys(self, files: list[str] | None) -> dict[str, Ed25519PublicKey]:
        """The keys given, or the key file's own public key: never made here, since a
        verifier must not sign."""
        keys: list[Ed25519PublicKey] = []
        try:
            if files:
                for name in files:
                    try:
                        with open(name, "rb") as source:
                            data = source.read(KEY_FILE_MAX_BYTES + 1)
                    except OSError as error:
                        raise SigningKeyError(f"{name} cannot be read: {error.strerror}") from None
                    keys.append(load_public_key(data, name))
            elif key_file().exists():
                keys.append(signing_key(create=False).public_key())
        except SigningKeyError as error:
            raise CommandError(str(error), returncode=2) from None
        return {key_id(key): key for key in keys}

    def kept_checkpoints(self, name: str | None) -> list[SignedCheckpoint]:
        if name is None:
            return []
        try:
            with Path(name).open(encoding="utf-8") as source:
                return read_checkpoint_file(source, name)
        except OSError as error:
            raise CommandError(f"{name} cannot be read: {error.strerror}", returncode=2) from None
        except UnicodeDecodeError:
            raise CommandError(f"{name} is not UTF-8 text", returncode=2) from None
        except ValueError as error:
            raise CommandError(str(error), returncode=2) from None
