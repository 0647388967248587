"""``manage.py audit [--json] [--since T]``: list audit events, oldest first.

``manage.py audit checkpoint`` signs one now, ``audit checkpoints [--since N]`` exports
them, and ``audit public-key`` prints the key that checks them (see
:mod:`jmirror_web.audit.checkpoints`); checkpoints are JSON lines, to keep off the host."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from jmirror_web.audit.checkpoints import (
    SignedCheckpoint,
    SigningKeyError,
    public_key_pem,
    signing_key,
    write_checkpoint,
)
from jmirror_web.audit.models import AuditCheckpoint, AuditEvent
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


def parse_checkpoint_number(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = -1
    if number < 0:
        raise CommandError(f"--since: {text!r} is not a checkpoint number (e.g. 41)", returncode=2)
    return number


class Command(BaseCommand):
    help = (
        "List audit events oldest first, one a line, or as JSON lines with --json. "
        "'checkpoint' signs a checkpoint of the log now and prints it as a JSON line; "
        "'checkpoints' prints them all (--since N: those after number N); 'public-key' "
        "prints the public key that verifies them."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "what",
            nargs="?",
            choices=["events", "checkpoint", "checkpoints", "public-key"],
            default="events",
            help="events (the default), or checkpoint, checkpoints, public-key",
        )
        parser.add_argument("--json", action="store_true", help="events: one JSON object a line")
        parser.add_argument(
            "--since",
            metavar="T|N",
            help="events: only those at or after T (ISO 8601; UTC unless an offset is "
            "given); checkpoints: only those numbered after N",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        what = options["what"]
        if what != "events" and options["json"]:
            raise CommandError(f"--json is for listing events, not for {what}", returncode=2)
        if what in ("checkpoint", "public-key") and options["since"] is not None:
            raise CommandError(f"--since is not for {what}", returncode=2)
        try:
            if what == "checkpoint":
                self.write_checkpoint()
            elif what == "public-key":
                self.stdout.write(public_key_pem(signing_key()), ending="")
            elif what == "checkpoints":
                self.list_checkpoints(options["since"])
            else:
                self.list_events(options["json"], options["since"])
        except SigningKeyError as error:
            raise CommandError(str(error), returncode=2) from None

    def write_checkpoint(self) -> None:
        checkpoint = write_checkpoint()
        if checkpoint is None:
            raise CommandError("the audit log is empty: there is nothing to sign", returncode=1)
        self.stdout.write(SignedCheckpoint.of(checkpoint).json_line())

    def list_checkpoints(self, since: str | None) -> None:
        checkpoints = AuditCheckpoint.objects.order_by("id")
        if since is not None:
            checkpoints = checkpoints.filter(id__gt=parse_checkpoint_number(since))
        for checkpoint in checkpoints.iterator(chunk_size=2000):
            self.stdout.write(SignedCheckpoint.of(checkpoint).json_line())

    def list_events(self, as_json: bool, since: str | None) -> None:
        events = AuditEvent.objects.order_by("id")
        if since is not None:
            events = events.filter(created_at__gte=parse_since(since))
        # Streamed: the log only grows, and a listing must not load all of it.
        for event in events.iterator(chunk_size=2000):
            if as_json:
                self.stdout.write(json.dumps(event_fields(event), sort_keys=True))
            else:
                self.stdout.write(event_line(event))
