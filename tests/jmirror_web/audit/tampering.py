"""Changing the audit tables as an attacker with the database owner's rights would."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from django.db import connection

from jmirror_web.audit.append_only import drop_sqlite_triggers
from jmirror_web.audit.models import GENESIS_HASH, AuditEvent


@contextlib.contextmanager
def owner_cursor() -> Iterator[Any]:
    """A cursor with the append-only triggers dropped: the owner of a PostgreSQL database
    can drop them, and so can anyone who can write an SQLite file. The test's transaction
    puts them back (DDL is transactional on both)."""
    if connection.vendor == "sqlite":
        drop_sqlite_triggers(connection)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("DROP TRIGGER IF EXISTS audit_event_append_only ON audit_auditevent")
            cursor.execute(
                "DROP TRIGGER IF EXISTS audit_checkpoint_append_only ON audit_auditcheckpoint"
            )
        yield cursor


def rewrite_chain() -> None:
    """Recompute every event's links and hash from the genesis, as someone covering an
    edit or a deletion would: the chain is then whole again."""
    previous = GENESIS_HASH
    with owner_cursor() as cursor:
        for event in AuditEvent.objects.order_by("id"):
            event.previous_hash = previous
            rewritten = event.compute_hash()
            cursor.execute(
                "UPDATE audit_auditevent SET previous_hash = %s, hash = %s WHERE id = %s",
                [previous, rewritten, event.pk],
            )
            previous = rewritten
