"""``manage.py flush`` that can empty the append-only audit tables on SQLite too.

Django's flush empties tables with DELETE on SQLite (TRUNCATE on PostgreSQL, which the
row triggers do not see), so the audit triggers would refuse it, and with it the test
framework's clean-up between transactional tests. Here the triggers are dropped for the
flush and made again in the same transaction: nothing is left without them even if
the flush fails, and a flush stays what it is on PostgreSQL, the end of all data.
"""

from __future__ import annotations

from typing import Any

from django.core.management.commands import flush
from django.db import connections, transaction

from jmirror_web.audit.append_only import create_sqlite_triggers, drop_sqlite_triggers


class Command(flush.Command):
    def handle(self, **options: Any) -> None:
        database = options["database"]
        connection = connections[database]
        if connection.vendor != "sqlite":
            super().handle(**options)
            return
        with transaction.atomic(using=database):
            drop_sqlite_triggers(connection)
            super().handle(**options)
            create_sqlite_triggers(connection)
