"""Signed checkpoints of the audit chain, append-only on both databases like the events."""

from django.db import migrations, models
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.state import StateApps

from jmirror_web.audit.append_only import sqlite_create_sql, sqlite_drop_sql

POSTGRESQL_CREATE = """
CREATE OR REPLACE FUNCTION audit_checkpoint_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit checkpoints are append-only (% refused)', TG_OP;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_checkpoint_append_only BEFORE UPDATE OR DELETE ON audit_auditcheckpoint
    FOR EACH ROW EXECUTE FUNCTION audit_checkpoint_append_only();
"""
POSTGRESQL_DROP = """
DROP TRIGGER IF EXISTS audit_checkpoint_append_only ON audit_auditcheckpoint;
DROP FUNCTION IF EXISTS audit_checkpoint_append_only();
"""


def create_triggers(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(POSTGRESQL_CREATE, params=None)
    elif vendor == "sqlite":
        for statement in sqlite_create_sql("audit_auditcheckpoint"):
            schema_editor.execute(statement, params=None)


def drop_triggers(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(POSTGRESQL_DROP, params=None)
    elif vendor == "sqlite":
        for statement in sqlite_drop_sql("audit_auditcheckpoint"):
            schema_editor.execute(statement, params=None)


class Migration(migrations.Migration):
    dependencies = [("audit", "0003_sqlite_append_only_trigger")]

    operations = [
        migrations.CreateModel(
            name="AuditCheckpoint",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("created_at", models.DateTimeField()),
                ("sequence", models.BigIntegerField(db_index=True)),
                ("head_hash", models.CharField(max_length=64)),
                ("key_id", models.CharField(max_length=16)),
                ("signature", models.CharField(max_length=88)),
            ],
            options={"ordering": ["id"]},
        ),
        migrations.RunPython(create_triggers, drop_triggers),
    ]
