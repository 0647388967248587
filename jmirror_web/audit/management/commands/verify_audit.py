"""``manage.py verify_audit``: check the whole audit chain; exit status 1 when broken."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from jmirror_web.audit.models import GENESIS_HASH, AuditEvent, verify_chain
from jmirror_web.intercepts.records_file import utc_iso


class Command(BaseCommand):
    help = (
        "Check the audit log's SHA-256 chain from the first event to the last. Prints the "
        "number of events and the last hash (keep it: removing events from the end of the "
        "log changes it but breaks no link), or names the first broken event and exits 1."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        seen = 0
        last_hash = GENESIS_HASH

        def counted() -> Iterator[AuditEvent]:
            nonlocal seen, last_hash
            for event in AuditEvent.objects.order_by("id").iterator(chunk_size=2000):
                seen += 1
                yield event
                last_hash = event.hash

        broken = verify_chain(counted())
        if broken is not None:
            event = AuditEvent.objects.get(pk=broken.event_id)
            raise CommandError(
                f"audit log broken at event #{event.pk} ({utc_iso(event.created_at)}, "
                f"{event.action}): {broken.problem}",
                returncode=1,
            )
        self.stdout.write(f"audit log intact: {seen} events, last hash {last_hash}")
