"""On SQLite, the database refuses UPDATE and DELETE on audit events too, as PostgreSQL
does since 0002. Anyone who can write the database file can drop these triggers; they
stop a bug or a careless shell, and the signed checkpoints show the rest."""

from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.state import StateApps

from jmirror_web.audit.append_only import sqlite_create_sql, sqlite_drop_sql


def create_triggers(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    if schema_editor.connection.vendor == "sqlite":
        for statement in sqlite_create_sql("audit_auditevent"):
            schema_editor.execute(statement, params=None)


def drop_triggers(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    if schema_editor.connection.vendor == "sqlite":
        for statement in sqlite_drop_sql("audit_auditevent"):
            schema_editor.execute(statement, params=None)


class Migration(migrations.Migration):
    dependencies = [("audit", "0002_append_only_trigger")]
    operations = [migrations.RunPython(create_triggers, drop_triggers)]
