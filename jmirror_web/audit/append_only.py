"""The database's own refusal to change the audit tables, as SQL for each vendor.

The models refuse UPDATE and DELETE already; these triggers refuse them below Django
too: a bug, a raw query, or a shell on the database with the application's
credentials. On PostgreSQL the database owner can still drop them or TRUNCATE, and on
SQLite anyone who can write the file can drop them: what such a person changes is found
by ``manage.py verify_audit`` against the signed checkpoints, not prevented.
"""

from __future__ import annotations

from typing import Final

from django.db.backends.base.base import BaseDatabaseWrapper

# Table -> what the refusal calls its rows.
APPEND_ONLY_TABLES: Final = {
    "audit_auditevent": "audit events",
    "audit_auditcheckpoint": "audit checkpoints",
}


def sqlite_create_sql(table: str) -> list[str]:
    noun = APPEND_ONLY_TABLES[table]
    return [
        f"CREATE TRIGGER IF NOT EXISTS {table}_no_{operation.lower()} "
        f"BEFORE {operation} ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{noun} are append-only ({operation} refused)'); END"
        for operation in ("UPDATE", "DELETE")
    ]


def sqlite_drop_sql(table: str) -> list[str]:
    return [f"DROP TRIGGER IF EXISTS {table}_no_{operation}" for operation in ("update", "delete")]


def drop_sqlite_triggers(connection: BaseDatabaseWrapper) -> None:
    with connection.cursor() as cursor:
        for table in APPEND_ONLY_TABLES:
            for statement in sqlite_drop_sql(table):
                cursor.execute(statement)


def create_sqlite_triggers(connection: BaseDatabaseWrapper) -> None:
    """Only for the tables that exist: ``flush`` also runs on a database migrated part
    of the way."""
    tables = set(connection.introspection.table_names())
    with connection.cursor() as cursor:
        for table in APPEND_ONLY_TABLES:
            if table in tables:
                for statement in sqlite_create_sql(table):
                    cursor.execute(statement)
