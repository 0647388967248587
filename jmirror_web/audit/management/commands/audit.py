"""``manage.py audit [--json] [--since T]``: list audit events, oldest first."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from jmirror_web.audit.models import AuditEvent
from jmirror_web.intercepts.records_file import utc_iso


def parse_since(text: str) -> datetime:
    """An ISO 8601 time; without a UTC offset it is taken as UTC, the time zone every
    time in jmirror-web is stored and shown in."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(
            f"--since: {text!r} is not an ISO 8601 time (e.g. 2026-12-01T09:30:00Z)",
            returncode=2,
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def event_fields(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.pk,
        "time": utc_iso(event.created_at),
        "actor": event.actor_name,
        "actor_id": event.actor_id,
        "source_address": event.source_address,
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "object": event.object_repr,
        "details": event.details,
        "hash": event.hash,
    }


def event_line(event: AuditEvent) -> str:
    """One event on one line: id, time, actor (``-`` when none), source address,
    action, object and details as compact JSON."""
    target = (
        f"{event.object_type}#{event.object_id} {event.object_repr!r}" if event.object_type else "-"
    )
    return " ".join(
        [
            f"#{event.pk}",
            utc_iso(event.created_at),
            event.actor_name or "-",
            event.source_address or "-",
            event.action,
            target,
            json.dumps(event.details, sort_keys=True, separators=(",", ":")),
        ]
    )


class Command(BaseCommand):
    help = "List audit events oldest first, one a line, or as JSON lines with --json."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="one JSON object a line")
        parser.add_argument(
            "--since",
            metavar="T",
            help="only events at or after T (ISO 8601; UTC unless an offset is given)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        events = AuditEvent.objects.order_by("id")
        if options["since"] is not None:
            events = events.filter(created_at__gte=parse_since(options["since"]))
        as_json = options["json"]
        # Streamed: the log only grows, and a listing must not load all of it.
        for event in events.iterator(chunk_size=2000):
            if as_json:
                self.stdout.write(json.dumps(event_fields(event), sort_keys=True))
            else:
                self.stdout.write(event_line(event))
