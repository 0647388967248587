import pytest
from django.db import DatabaseError, connection, transaction
from django.test import Client

from jmirror_web.audit.log import acting_as, record
from jmirror_web.audit.models import GENESIS_HASH, AuditEvent, verify_chain
from jmirror_web.intercepts.access import Role
from jmirror_web.intercepts.models import Case
from tests.factories import PASSWORD, assign, make_case, make_intercept, make_user
from tests.jmirror_web.audit.tampering import owner_cursor

pytestmark = pytest.mark.django_db


def actions() -> list[str]:
    return list(AuditEvent.objects.values_list("action", flat=True))


def test_events_are_chained_by_hash_from_the_genesis():
    first = record("test.one", details={"n": 1})
    second = record("test.two")
    assert first.previous_hash == GENESIS_HASH
    assert second.previous_hash == first.hash
    assert verify_chain() is None


def test_an_altered_event_breaks_the_chain_at_that_event():
    record("test.one")
    target = record("test.two", details={"bytes": 100})
    record("test.three")
    with owner_cursor() as cursor:
        cursor.execute(
            "UPDATE audit_auditevent SET details = %s WHERE id = %s", ['{"bytes": 1}', target.pk]
        )
    broken = verify_chain()
    assert broken is not None
    assert (broken.event_id, broken.problem) == (
        target.pk,
        "its content does not match its hash",
    )


def test_a_removed_event_breaks_the_chain_at_the_next_one():
    record("test.one")
    removed = record("test.two")
    after = record("test.three")
    with owner_cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE id = %s", [removed.pk])
    broken = verify_chain()
    assert broken is not None
    assert broken.event_id == after.pk


def test_the_application_refuses_to_change_or_delete_events():
    event = record("test.one")
    event.action = "test.other"
    with pytest.raises(PermissionError):
        event.save()
    with pytest.raises(PermissionError):
        event.delete()
    with pytest.raises(PermissionError):
        AuditEvent.objects.all().update(action="x")
    with pytest.raises(PermissionError):
        AuditEvent.objects.all().delete()
    assert actions() == ["test.one"]


def test_the_database_refuses_update_and_delete():
    event = record("test.one")
    for statement in (
        "UPDATE audit_auditevent SET action = 'x' WHERE id = %s",
        "DELETE FROM audit_auditevent WHERE id = %s",
    ):
        with (
            pytest.raises(DatabaseError, match="append-only"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(statement, [event.pk])
    assert verify_chain() is None


def test_sign_in_failed_sign_in_and_sign_out_are_recorded(client: Client):
    user = make_user(Role.ANALYST, username="ana")
    first_new = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first()
    assert not client.login(username="ana", password="wrong")
    assert client.login(username="ana", password=PASSWORD)
    client.logout()
    events = list(AuditEvent.objects.filter(id__gt=first_new).order_by("id"))
    assert [event.action for event in events] == ["login_failed", "login", "logout"]
    assert events[0].details == {"username": "ana"}
    assert events[0].actor is None
    assert [event.actor_id for event in events[1:]] == [user.pk, user.pk]


def test_a_sign_in_through_the_admin_form_records_the_client_address(client: Client):
    make_user(Role.LI_ADMIN, username="li", is_staff=True)
    response = client.post(
        "/admin/login/",
        {"username": "li", "password": PASSWORD},
        REMOTE_ADDR="203.0.113.9",
    )
    assert response.status_code == 302
    event = AuditEvent.objects.get(action="login")
    assert (event.actor_name, event.source_address) == ("li", "203.0.113.9")


def test_record_changes_are_recorded_with_before_and_after_and_the_actor():
    admin = make_user(Role.LI_ADMIN, username="li")
    with acting_as(admin, "198.51.100.7"):
        case = make_case(reference="W-7")
        case.title = "Renamed"
        case.save()
        case_pk = case.pk
        make_intercept(case, liid="NZ-7").delete()
    created, changed = AuditEvent.objects.filter(object_type="intercepts.Case").order_by("id")
    assert created.action == "case.create"
    assert created.details["after"]["reference"] == "W-7"
    assert changed.action == "case.change"
    assert changed.details == {"changes": {"title": {"before": "Test warrant", "after": "Renamed"}}}
    assert (changed.actor_id, changed.actor_name, changed.source_address) == (
        admin.pk,
        "li",
        "198.51.100.7",
    )
    assert changed.object_id == str(case_pk)
    deleted = AuditEvent.objects.get(action="intercept.delete")
    assert deleted.details["before"]["liid"] == "NZ-7"


def test_assignments_and_group_membership_are_recorded():
    analyst = make_user(username="ana")
    case = make_case()
    analyst.groups.add(*make_user(Role.ANALYST).groups.all())
    assign(analyst, case)
    recorded = actions()
    assert "user.groups.add" in recorded
    assert "caseassignment.create" in recorded


def test_a_saved_record_without_changes_records_nothing():
    case = make_case()
    before = AuditEvent.objects.count()
    Case.objects.get(pk=case.pk).save()
    assert AuditEvent.objects.count() == before


def test_passwords_never_reach_the_audit_log():
    make_user(username="secretive")
    assert "pbkdf2" not in str(list(AuditEvent.objects.values_list("details", flat=True)))


def test_an_event_recorded_while_serving_a_request_names_the_signed_in_user():
    from django.http import HttpRequest, HttpResponse

    from jmirror_web.audit.log import AuditContextMiddleware

    user = make_user(Role.ANALYST, username="ana")
    request = HttpRequest()
    request.META["REMOTE_ADDR"] = "192.0.2.44"
    request.user = user

    def view(request: HttpRequest) -> HttpResponse:
        record("test.viewed")
        return HttpResponse()

    AuditContextMiddleware(view)(request)
    event = AuditEvent.objects.get(action="test.viewed")
    assert (event.actor_id, event.actor_name, event.source_address) == (
        user.pk,
        "ana",
        "192.0.2.44",
    )


def test_deleting_a_user_keeps_their_events_and_the_chain_whole():
    user = make_user(Role.ANALYST, username="leaver")
    event = record("test.one", actor=user)
    user_id = user.pk

    user.delete()

    kept = AuditEvent.objects.get(pk=event.pk)
    assert (kept.actor_id, kept.actor_name) == (user_id, "leaver")
    assert AuditEvent.objects.order_by("-id").first().action == "user.delete"
    assert verify_chain() is None


def test_text_no_database_can_store_is_recorded_as_replacement_characters():
    # A refusal records the id and path a client sent: NUL (which PostgreSQL refuses in
    # text and jsonb) and lone surrogates (which no UTF-8 column takes) must not make it
    # fail, and must not vanish without a trace.
    event = record(
        "test.odd",
        details={"path": "/api/cases/\x00\x91/", "k\x00": ["\ud800", 7, None]},
    )
    stored = AuditEvent.objects.get(pk=event.pk)
    assert stored.details == {"path": "/api/cases/\ufffd\x91/", "k\ufffd": ["\ufffd", 7, None]}
    assert verify_chain() is None
