"""manage.py verify_audit and manage.py audit."""

from __future__ import annotations

import io
import json
from datetime import UTC, timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction

from jmirror_web.audit.models import GENESIS_HASH, AuditCheckpoint, AuditEvent, append_event
from jmirror_web.intercepts.records_file import utc_iso
from tests.factories import make_case, make_router
from tests.jmirror_web.audit.tampering import owner_cursor

pytestmark = pytest.mark.django_db

NO_CHECKPOINTS = (
    "no checkpoints, so a rewritten or truncated log would pass (see `manage.py audit checkpoint`)"
)


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.fixture
def events() -> list[AuditEvent]:
    """A few events: records created through the audited models, and one direct."""
    make_case(reference="NZ-1")
    make_router(name="mx1")
    append_event(action="download", actor="os:someone", details={"bytes": 1500})
    return list(AuditEvent.objects.order_by("id"))


def test_verify_audit_reports_an_intact_log_with_its_size_and_last_hash(events):
    assert run("verify_audit") == (
        f"audit log intact: {len(events)} events, last hash {events[-1].hash}; {NO_CHECKPOINTS}\n"
    )


def test_verify_audit_accepts_an_empty_log():
    assert run("verify_audit") == (
        f"audit log intact: 0 events, last hash {GENESIS_HASH}; {NO_CHECKPOINTS}\n"
    )


def test_verify_audit_names_an_event_whose_row_was_altered(events):
    target = events[1]
    with owner_cursor() as cursor:
        # Raw SQL with the triggers dropped, as a tamperer would.
        cursor.execute(
            "UPDATE audit_auditevent SET details = %s WHERE id = %s",
            ['{"after": {"reference": "NZ-2"}}', target.pk],
        )

    with pytest.raises(CommandError) as broken:
        run("verify_audit")

    assert broken.value.returncode == 1
    assert str(broken.value) == (
        f"audit log broken at event #{target.pk} ({utc_iso(target.created_at)}, "
        f"{target.action}): its content does not match its hash"
    )


def test_verify_audit_names_the_event_after_a_removed_one(events):
    removed, following = events[1], events[2]
    with owner_cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE id = %s", [removed.pk])

    with pytest.raises(CommandError) as broken:
        run("verify_audit")

    assert broken.value.returncode == 1
    assert str(broken.value) == (
        f"audit log broken at event #{following.pk} ({utc_iso(following.created_at)}, "
        f"{following.action}): its previous hash does not match the event before it"
    )


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_auditevent SET details = '{}' WHERE id = %s",
        "DELETE FROM audit_auditevent WHERE id = %s",
    ],
)
def test_the_database_refuses_to_alter_or_remove_an_event(events, statement):
    with (
        pytest.raises(DatabaseError, match="audit events are append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(statement, [events[1].pk])

    assert run("verify_audit").startswith(f"audit log intact: {len(events)} events")


def test_audit_lists_one_event_a_line_oldest_first(events):
    lines = run("audit").splitlines()

    assert len(lines) == len(events)
    assert lines[-1] == (
        f"#{events[-1].pk} {utc_iso(events[-1].created_at)} "
        'os:someone - download - {"bytes":1500}'
    )
    assert lines[0].startswith(f"#{events[0].pk} ")
    assert " case.create intercepts.Case#" in lines[0]


def test_audit_json_gives_one_object_a_line(events):
    lines = [json.loads(line) for line in run("audit", "--json").splitlines()]

    assert [line["id"] for line in lines] == [event.pk for event in events]
    assert lines[-1] | {"id": 0, "time": ""} == {
        "id": 0,
        "time": "",
        "actor": "os:someone",
        "actor_id": None,
        "source_address": None,
        "action": "download",
        "object_type": "",
        "object_id": "",
        "object": "",
        "details": {"bytes": 1500},
        "hash": events[-1].hash,
    }


def test_audit_since_lists_only_the_events_at_or_after_that_time(events):
    since = events[-1].created_at

    lines = run("audit", "--since", utc_iso(since)).splitlines()
    later = run("audit", "--since", utc_iso(since + timedelta(seconds=1))).splitlines()

    assert [line.split()[0] for line in lines] == [f"#{events[-1].pk}"]
    assert later == []


def test_audit_since_without_an_offset_is_utc(events):
    naive = events[-1].created_at.astimezone(UTC).replace(tzinfo=None)

    lines = run("audit", "--since", naive.isoformat()).splitlines()

    assert [line.split()[0] for line in lines] == [f"#{events[-1].pk}"]


@pytest.mark.parametrize("value", ["yesterday", "2026-13-01", ""])
def test_audit_since_refuses_a_value_that_is_not_a_time(value):
    with pytest.raises(CommandError) as refused:
        run("audit", "--since", value)

    assert refused.value.returncode == 2
    assert str(refused.value) == (
        f"--since: {value!r} is not an ISO 8601 time (e.g. 2026-12-01T09:30:00Z)"
    )


def test_flush_empties_the_audit_tables_and_leaves_them_append_only(events):
    AuditCheckpoint.objects.create(
        created_at=events[-1].created_at,
        sequence=events[-1].pk,
        head_hash=events[-1].hash,
        key_id="0" * 16,
        signature="",
    )

    call_command("flush", interactive=False, verbosity=0)

    assert not AuditEvent.objects.exists()
    assert not AuditCheckpoint.objects.exists()
    event = append_event(action="after.flush")
    with (
        pytest.raises(DatabaseError, match="audit events are append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute("DELETE FROM audit_auditevent WHERE id = %s", [event.pk])
