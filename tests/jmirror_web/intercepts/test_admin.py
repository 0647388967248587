"""The admin site for intercept records: who may do what, the lists, the overlap rule with
the routers chosen in the form, the audit trail of admin changes, and the provisioning
section of an intercept's page."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from pytest_django.fixtures import Settings

from jmirror_web.audit.models import AuditEvent
from jmirror_web.intercepts.access import Role
from jmirror_web.intercepts.models import (
    Case,
    CaseAssignment,
    Intercept,
    Listener,
    ReceiverProcess,
    Router,
)
from tests.factories import (
    PASSWORD,
    assign,
    make_capture_file,
    make_case,
    make_intercept,
    make_router,
    make_session,
    make_user,
)
from tests.jmirror_web.live.helpers import FAST_HASHERS

pytestmark = pytest.mark.django_db

RECORDS = ("case", "intercept", "router")
CAPTURED = ("session", "capturefile")


def staff(role: Role | None = None, **fields: Any) -> User:
    # Staff status is Django's gate to the admin site as a whole; what a user sees
    # inside it is decided by access.py, which these tests are about.
    return make_user(role, is_staff=True, **fields)


def superuser() -> User:
    return make_user(is_staff=True, is_superuser=True)


def signed_in(user: User) -> Client:
    client = Client()
    assert client.login(username=user.username, password=PASSWORD)
    return client


def url(model: str, view: str, *args: Any) -> str:
    return reverse(f"admin:intercepts_{model}_{view}", args=args)


def one_of_each() -> dict[str, Any]:
    """One record of each model, with its pk, keyed by model name."""
    intercept = make_intercept()
    session = make_session(intercept)
    return {
        "case": intercept.case.pk,
        "intercept": intercept.pk,
        "router": session.router.pk,
        "session": session.pk,
        "capturefile": make_capture_file(session).pk,
    }


def split(moment: datetime) -> dict[str, str]:
    return {"0": f"{moment:%Y-%m-%d}", "1": f"{moment:%H:%M:%S}"}


def case_form(**fields: Any) -> dict[str, Any]:
    now = timezone.now().replace(microsecond=0)
    start, end = fields.pop("valid_from", now), fields.pop("valid_until", now + timedelta(days=90))
    data: dict[str, Any] = {
        "reference": "W-2026-001",
        "title": "Operation Kea",
        "agency": "NZ Police",
        "legal_basis": "",
        "status": Case.Status.ACTIVE,
        "retention_days": "365",
        "notes": "",
        **{f"valid_from_{key}": value for key, value in split(start).items()},
        **{f"valid_until_{key}": value for key, value in split(end).items()},
        "assignments-TOTAL_FORMS": "0",
        "assignments-INITIAL_FORMS": "0",
        "assignments-MIN_NUM_FORMS": "0",
        "assignments-MAX_NUM_FORMS": "1000",
    }
    data.update(fields)
    return data


def intercept_form(case: Case, **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "case": str(case.pk),
        "liid": "NZ-0042",
        "intercept_id": str(0x8000),
        "sid": "",
        "routers": [],
        **{f"valid_from_{key}": value for key, value in split(case.valid_from).items()},
        **{f"valid_until_{key}": value for key, value in split(case.valid_until).items()},
        "authcc": "NZ",
        "delivcc": "NZ",
        "target_description": "",
        "keep_content": "on",
    }
    data.update(fields)
    return data


def whole_seconds_case(**fields: Any) -> Case:
    # The admin's split date/time widgets carry whole seconds; so must the case window
    # an intercept form copies.
    now = timezone.now().replace(microsecond=0)
    return make_case(valid_from=now - timedelta(days=1), valid_until=now + timedelta(days=30))


@pytest.fixture
def fast_hashers(settings: Settings) -> None:
    """Users made and signed in with a fast hasher (the real one takes a second a user)."""
    settings.PASSWORD_HASHERS = FAST_HASHERS


# Who may do what ---------------------------------------------------------------------


@pytest.mark.parametrize("model", RECORDS)
def test_an_li_administrator_can_list_add_and_change_records(model: str) -> None:
    pks = one_of_each()
    client = signed_in(staff(Role.LI_ADMIN))
    assert client.get(url(model, "changelist")).status_code == 200
    assert client.get(url(model, "add")).status_code == 200
    change = client.get(url(model, "change", pks[model]))
    assert change.status_code == 200
    assert b'name="_save"' in change.content


@pytest.mark.parametrize("model", RECORDS)
def test_an_auditor_can_only_view_records(model: str) -> None:
    pks = one_of_each()
    client = signed_in(staff(Role.AUDITOR))
    assert client.get(url(model, "changelist")).status_code == 200
    change = client.get(url(model, "change", pks[model]))
    assert change.status_code == 200
    assert b'name="_save"' not in change.content
    assert client.get(url(model, "add")).status_code == 403
    assert client.post(url(model, "change", pks[model]), {}).status_code == 403
    assert client.post(url(model, "delete", pks[model]), {"post": "yes"}).status_code == 403


@pytest.mark.parametrize("role", [Role.ANALYST, Role.SYSADMIN])
@pytest.mark.parametrize("model", RECORDS + CAPTURED)
def test_analysts_and_system_administrators_are_refused_every_admin_page(
    role: Role, model: str
) -> None:
    pks = one_of_each()
    user = staff(role)
    # Even an analyst assigned to the case: they work in the case views, not here.
    assign(user, Case.objects.get())
    client = signed_in(user)
    for path in (url(model, "changelist"), url(model, "change", pks[model]), url(model, "add")):
        response = client.get(path)
        assert response.status_code == 302
        assert response["Location"].startswith("/admin/login/")
    assert client.get(reverse("admin:index")).status_code == 302


def test_an_li_admin_needs_no_staff_flag_to_use_the_admin() -> None:
    client = signed_in(make_user(Role.LI_ADMIN))
    assert client.get(url("case", "changelist")).status_code == 200


def test_a_staff_flag_alone_opens_nothing() -> None:
    client = signed_in(make_user(is_staff=True))
    response = client.get(url("case", "changelist"))
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_the_admin_sign_in_admits_by_role(client: Client) -> None:
    make_user(Role.LI_ADMIN, username="li")
    make_user(Role.ANALYST, username="ana", is_staff=True)
    refused = client.post(reverse("admin:login"), {"username": "ana", "password": PASSWORD})
    assert refused.status_code == 200
    # The same words as for a wrong password: a refusal by role reveals nothing.
    assert b"Please enter a correct username and password" in refused.content
    assert not refused.wsgi_request.user.is_authenticated
    admitted = client.post(reverse("admin:login"), {"username": "li", "password": PASSWORD})
    assert admitted.status_code == 302


@pytest.mark.parametrize("model", RECORDS)
def test_a_superuser_manages_records(model: str) -> None:
    pks = one_of_each()
    client = signed_in(superuser())
    assert client.get(url(model, "add")).status_code == 200
    assert b'name="_save"' in client.get(url(model, "change", pks[model])).content


@pytest.mark.parametrize("role", [Role.LI_ADMIN, None])
@pytest.mark.parametrize("model", CAPTURED)
def test_sessions_and_files_are_read_only_for_everyone(role: Role | None, model: str) -> None:
    pks = one_of_each()
    client = signed_in(staff(role) if role is not None else superuser())
    assert client.get(url(model, "changelist")).status_code == 200
    change = client.get(url(model, "change", pks[model]))
    assert change.status_code == 200
    assert b'name="_save"' not in change.content
    assert client.get(url(model, "add")).status_code == 403
    assert client.post(url(model, "change", pks[model]), {}).status_code == 403
    assert client.post(url(model, "delete", pks[model]), {"post": "yes"}).status_code == 403
    assert client.get(url(model, "changelist")).context["cl"].result_count == 1


@pytest.mark.parametrize("model", CAPTURED)
def test_an_auditor_sees_no_sessions_or_files(model: str) -> None:
    # Metadata is for assigned users and LI administrators (access.py), not auditors.
    pks = one_of_each()
    client = signed_in(staff(Role.AUDITOR))
    assert client.get(url(model, "changelist")).status_code == 403
    assert client.get(url(model, "change", pks[model])).status_code == 403


def test_an_anonymous_visitor_is_sent_to_the_login_from_every_record_page() -> None:
    pks = one_of_each()
    for model in RECORDS + CAPTURED:
        for response in (
            Client().get(url(model, "changelist")),
            Client().get(url(model, "change", pks[model])),
        ):
            assert response.status_code == 302
            assert response["Location"].startswith("/admin/login/")


# Lists and forms -------------------------------------------------------------------


def test_the_case_list_shows_window_time_left_and_intercept_count() -> None:
    case = make_case(reference="W-7", agency="Customs", legal_hold=True)
    make_intercept(case)
    make_intercept(case)
    client = signed_in(staff(Role.LI_ADMIN))
    response = client.get(url("case", "changelist"), {"agency": "Customs", "q": "W-7"})
    assert response.status_code == 200
    row = response.context["cl"].result_list[0]
    assert row.intercept_total == 2
    text = response.content.decode()
    assert f"{case.valid_from:%Y-%m-%d %H:%M} to {case.valid_until:%Y-%m-%d %H:%M} UTC" in text
    assert "29 d 23 h" in text or "30 d 0 h" in text


def test_the_case_list_says_when_a_warrant_has_ended() -> None:
    now = timezone.now()
    make_case(valid_from=now - timedelta(days=10), valid_until=now - timedelta(days=1))
    client = signed_in(staff(Role.AUDITOR))
    assert (
        b'<td class="field-time_left">ended</td>' in client.get(url("case", "changelist")).content
    )


@pytest.mark.usefixtures("fast_hashers")
def test_admin_lists_and_read_only_fields_show_utc_times_whatever_the_time_zone(
    settings: Settings,
) -> None:
    settings.TIME_ZONE = "Pacific/Auckland"
    seen = datetime(2026, 12, 6, 17, 4, 5, tzinfo=UTC)
    session = make_session(make_intercept(), first_seen=seen, last_seen=seen)
    client = signed_in(staff(Role.LI_ADMIN))
    listed = client.get(url("session", "changelist")).content.decode()
    assert '<td class="field-first_seen nowrap">2026-12-06 17:04:05 UTC</td>' in listed
    shown = client.get(url("session", "change", session.pk)).content.decode()
    assert '<div class="readonly">2026-12-06 17:04:05 UTC</div>' in shown
    assert "Dec." not in listed + shown


@pytest.mark.usefixtures("fast_hashers")
def test_admin_date_time_inputs_take_utc_whatever_the_time_zone(settings: Settings) -> None:
    settings.TIME_ZONE = "Pacific/Auckland"
    start = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)
    client = signed_in(staff(Role.LI_ADMIN))
    data = case_form(valid_from=start, valid_until=start + timedelta(days=30))
    assert client.post(url("case", "add"), data).status_code == 302
    case = Case.objects.get(reference="W-2026-001")
    assert case.valid_from == start
    # Shown again as typed: UTC, and the field says so.
    page = client.get(url("case", "change", case.pk)).content.decode()
    assert 'name="valid_from_1" value="10:00:00"' in page
    assert "UTC." in page


def test_the_intercept_list_shows_ids_in_hex_routers_and_whether_in_force() -> None:
    router = make_router(name="mx-akl-1")
    make_intercept(liid="NZ-0042", intercept_id=0x8000, sid=0x90, routers=[router])
    client = signed_in(staff(Role.LI_ADMIN))
    text = client.get(url("intercept", "changelist")).content.decode()
    assert '<td class="field-mirror_id">0x8000</td>' in text
    assert '<td class="field-session_id">0x90</td>' in text
    assert '<td class="field-router_names">mx-akl-1</td>' in text
    assert 'alt="True"' in text


def test_the_assignment_choices_are_analysts_and_li_administrators_only() -> None:
    analyst = make_user(Role.ANALYST, username="ana")
    li_admin = make_user(Role.LI_ADMIN, username="lia")
    make_user(Role.AUDITOR, username="aud")
    make_user(Role.SYSADMIN, username="sys")
    make_user(username="nobody")
    make_user(Role.ANALYST, username="gone", is_active=False)
    case = make_case()
    client = signed_in(staff(Role.LI_ADMIN, username="me"))
    form = client.get(url("case", "change", case.pk)).context["inline_admin_formsets"][0]
    choices = form.formset.empty_form.fields["user"].queryset
    assert list(choices) == [analyst, li_admin, User.objects.get(username="me")]


# The overlap rule with the routers chosen in the form ---------------------------------


def test_a_second_intercept_claiming_the_same_packets_is_rejected_naming_the_first() -> None:
    case = whole_seconds_case()
    router = make_router()
    make_intercept(case, liid="NZ-0001", intercept_id=0x8000, routers=[router])
    client = signed_in(staff(Role.LI_ADMIN))
    response = client.post(url("intercept", "add"), intercept_form(case, routers=[str(router.pk)]))
    assert response.status_code == 200
    assert response.context["adminform"].form.non_field_errors() == [
        f"Intercept NZ-0001 (case {case.reference}) already claims mirror id 0x8000 from an "
        "overlapping set of routers in an overlapping window; two intercepts must never "
        "claim the same packet."
    ]
    assert not Intercept.objects.filter(liid="NZ-0042").exists()


def test_the_same_mirror_id_from_other_routers_is_accepted() -> None:
    case = whole_seconds_case()
    first, second = make_router(), make_router()
    make_intercept(case, liid="NZ-0001", intercept_id=0x8000, routers=[first])
    client = signed_in(staff(Role.LI_ADMIN))
    response = client.post(url("intercept", "add"), intercept_form(case, routers=[str(second.pk)]))
    assert response.status_code == 302
    assert list(Intercept.objects.get(liid="NZ-0042").routers.all()) == [second]


def test_an_intercept_for_every_router_conflicts_with_one_for_a_single_router() -> None:
    case = whole_seconds_case()
    make_intercept(case, liid="NZ-0001", intercept_id=0x8000, routers=[make_router()])
    client = signed_in(staff(Role.LI_ADMIN))
    response = client.post(url("intercept", "add"), intercept_form(case))
    assert response.status_code == 200
    assert "Intercept NZ-0001" in response.context["adminform"].form.non_field_errors()[0]


def test_moving_an_intercept_onto_another_intercepts_router_is_rejected() -> None:
    case = whole_seconds_case()
    first, second = make_router(), make_router()
    make_intercept(case, liid="NZ-0001", intercept_id=0x8000, routers=[first])
    moved = make_intercept(case, liid="NZ-0042", intercept_id=0x8000, routers=[second])
    client = signed_in(staff(Role.LI_ADMIN))
    response = client.post(
        url("intercept", "change", moved.pk),
        intercept_form(case, routers=[str(first.pk), str(second.pk)]),
    )
    assert response.status_code == 200
    assert "Intercept NZ-0001" in response.context["adminform"].form.non_field_errors()[0]
    assert list(moved.routers.all()) == [second]


# Every admin change is audited ------------------------------------------------------


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action))


def test_creating_changing_and_deleting_a_case_in_the_admin_is_audited() -> None:
    user = staff(Role.LI_ADMIN)
    client = signed_in(user)
    assert client.post(url("case", "add"), case_form()).status_code == 302
    case = Case.objects.get(reference="W-2026-001")
    (created,) = events("case.create")
    assert (created.actor, created.actor_name) == (user, user.username)
    assert created.source_address == "127.0.0.1"
    assert created.object_id == str(case.pk)
    assert created.details["after"]["title"] == "Operation Kea"

    changed = case_form(
        title="Operation Tui",
        valid_from=case.valid_from,
        valid_until=case.valid_until,
        status=Case.Status.SUSPENDED,
    )
    assert client.post(url("case", "change", case.pk), changed).status_code == 302
    (change,) = events("case.change")
    assert change.actor == user
    assert change.source_address == "127.0.0.1"
    assert change.details["changes"] == {
        "title": {"before": "Operation Kea", "after": "Operation Tui"},
        "status": {"before": "active", "after": "suspended"},
    }

    assert client.post(url("case", "delete", case.pk), {"post": "yes"}).status_code == 302
    (deleted,) = events("case.delete")
    assert deleted.actor == user
    assert deleted.object_repr == "W-2026-001"
    assert deleted.details["before"]["title"] == "Operation Tui"


def test_adding_an_assignment_in_the_admin_is_audited() -> None:
    user = staff(Role.LI_ADMIN)
    analyst = make_user(Role.ANALYST)
    case = make_case()
    client = signed_in(user)
    data = case_form(
        reference=case.reference,
        valid_from=case.valid_from.replace(microsecond=0),
        valid_until=case.valid_until.replace(microsecond=0),
        **{
            "assignments-TOTAL_FORMS": "1",
            "assignments-0-user": str(analyst.pk),
            "assignments-0-case": str(case.pk),
        },
    )
    response = client.post(url("case", "change", case.pk), data)
    assert response.status_code == 302
    assignment = CaseAssignment.objects.get(case=case, user=analyst)
    (event,) = events("caseassignment.create")
    assert event.actor == user
    assert event.source_address == "127.0.0.1"
    assert event.object_id == str(assignment.pk)
    assert event.details["after"]["user_id"] == analyst.pk


def test_creating_changing_and_deleting_an_intercept_in_the_admin_is_audited() -> None:
    user = staff(Role.LI_ADMIN)
    case = whole_seconds_case()
    router = make_router()
    client = signed_in(user)
    data = intercept_form(case, routers=[str(router.pk)])
    assert client.post(url("intercept", "add"), data).status_code == 302
    intercept = Intercept.objects.get(liid="NZ-0042")
    (created,) = events("intercept.create")
    assert (created.actor, created.source_address) == (user, "127.0.0.1")
    assert created.details["after"]["intercept_id"] == 0x8000
    (routers_added,) = events("intercept.routers.add")
    assert routers_added.actor == user
    assert routers_added.details == {"ids": [str(router.pk)]}

    data["sid"] = str(0x90)
    assert client.post(url("intercept", "change", intercept.pk), data).status_code == 302
    (change,) = events("intercept.change")
    assert change.actor == user
    assert change.details["changes"] == {"sid": {"before": None, "after": 0x90}}

    assert client.post(url("intercept", "delete", intercept.pk), {"post": "yes"}).status_code == 302
    (deleted,) = events("intercept.delete")
    assert (deleted.actor, deleted.object_repr) == (user, "NZ-0042")
    assert deleted.details["before"]["sid"] == 0x90


@pytest.mark.usefixtures("fast_hashers")
def test_the_intercept_form_shows_and_takes_mirror_and_session_ids_in_hex() -> None:
    case = whole_seconds_case()
    client = signed_in(staff(Role.LI_ADMIN))
    data = intercept_form(case, intercept_id="0x8000", sid="0X9a")
    assert client.post(url("intercept", "add"), data).status_code == 302
    intercept = Intercept.objects.get(liid="NZ-0042")
    assert (intercept.intercept_id, intercept.sid) == (0x8000, 0x9A)
    page = client.get(url("intercept", "change", intercept.pk)).content.decode()
    assert 'name="intercept_id" value="0x8000"' in page
    assert 'name="sid" value="0x9a"' in page
    # Saved again as shown, nothing changed: no change is audited.
    assert client.post(url("intercept", "change", intercept.pk), data).status_code == 302
    assert events("intercept.change") == []


BAD_IDS = [
    ("intercept_id", "0x", "Enter the id in hex (0x8000) or decimal (32768)"),
    ("intercept_id", "8000h", "Enter the id in hex (0x8000) or decimal (32768)"),
    ("intercept_id", "-1", "Enter the id in hex (0x8000) or decimal (32768)"),
    ("intercept_id", "0x40000000", "0x40000000 is past the largest id, 0x3fffffff."),
    ("sid", "0x100000000", "0x100000000 is past the largest id, 0xffffffff."),
    ("sid", "9" * 21, "Enter the id in hex (0x8000) or decimal (32768)"),
]


@pytest.mark.usefixtures("fast_hashers")
def test_a_bad_id_gets_the_form_back_saying_why() -> None:
    client = Client()
    client.force_login(staff(Role.LI_ADMIN))
    case = whole_seconds_case()
    for field, typed, message in BAD_IDS:
        response = client.post(url("intercept", "add"), intercept_form(case, **{field: typed}))
        assert response.status_code == 200
        assert message in response.context["adminform"].form.errors[field][0], typed
    assert not Intercept.objects.exists()


def test_a_refused_admin_change_records_nothing() -> None:
    case = make_case()
    auditor = staff(Role.AUDITOR)
    before = AuditEvent.objects.count()
    client = signed_in(auditor)
    assert client.post(url("case", "delete", case.pk), {"post": "yes"}).status_code == 403
    # Only the auditor's sign-in.
    assert list(AuditEvent.objects.values_list("action", flat=True)[before:]) == ["login"]
    assert Case.objects.filter(pk=case.pk).exists()


# Provisioning -----------------------------------------------------------------------


def provisioning_text(client: Client, intercept: Intercept) -> str:
    response = client.get(url("intercept", "change", intercept.pk))
    assert response.status_code == 200
    return response.content.decode()


def test_the_intercept_page_shows_the_radius_attributes_with_a_pinned_session(
    settings: Settings,
) -> None:
    settings.MEDIATION_ADDRESS = "198.51.100.7"
    settings.MEDIATION_PORT = 6502
    intercept = make_intercept(intercept_id=0x300, sid=0x90)
    text = provisioning_text(signed_in(staff(Role.AUDITOR)), intercept)
    assert "Provisioning" in text
    assert (
        "ERX-LI-Action = 1    # 26-58\n"
        "ERX-Med-Dev-Handle = 0x0000030000000090    # 26-59\n"
        "ERX-Med-Ip-Address = 198.51.100.7    # 26-60\n"
        "ERX-Med-Port-Number = 6502    # 26-61\n"
    ) in text
    assert "ERX-LI-Action = 0    # 26-58\n" in text


def running_receiver(*addresses: str, reported_ago: timedelta = timedelta(0)) -> None:
    now = timezone.now()
    process = ReceiverProcess.objects.create(
        hostname="mediation-1", pid=1, started_at=now, reported_at=now - reported_ago
    )
    for address in addresses:
        Listener.objects.create(receiver=process, address=address)


def port_note_of(text: str) -> str:
    return text.split("<p data-port-note>", 1)[1].split("</p>", 1)[0]


@pytest.mark.usefixtures("fast_hashers")
def test_the_snippets_say_when_the_mediation_port_is_not_what_the_receivers_listen_on(
    settings: Settings,
) -> None:
    settings.MEDIATION_PORT = 30030
    intercept = make_intercept(intercept_id=0x300)
    client = signed_in(staff(Role.LI_ADMIN))
    assert port_note_of(provisioning_text(client, intercept)).startswith(
        "No receiver is running now"
    )
    running_receiver("[::]:30031", "0.0.0.0:6502")
    running_receiver("0.0.0.0:30030", reported_ago=timedelta(minutes=5))  # gone silent: not counted
    note = port_note_of(provisioning_text(client, intercept))
    assert note.startswith(
        "Port 30030 (JMIRROR_MEDIATION_PORT) differs from what the running receivers "
        "listen on: UDP 6502, 30031."
    )
    assert "ERX-Med-Port-Number = 30030    # 26-61" in provisioning_text(client, intercept)
    settings.MEDIATION_PORT = 6502
    assert port_note_of(provisioning_text(client, intercept)) == (
        "A running receiver listens on UDP port 6502 (JMIRROR_MEDIATION_PORT)."
    )


def test_without_a_pinned_session_the_handle_is_the_four_byte_form(
    settings: Settings,
) -> None:
    settings.MEDIATION_ADDRESS = "198.51.100.7"
    intercept = make_intercept(intercept_id=0x10)
    text = provisioning_text(signed_in(staff(Role.LI_ADMIN)), intercept)
    assert "ERX-Med-Dev-Handle = 0x40000010    # 26-59\n" in text
    assert "session id from the low 32 bits of Acct-Session-Id" in text


def test_the_dtcp_add_names_each_mx_router_as_the_mirror_source(
    settings: Settings,
) -> None:
    settings.MEDIATION_ADDRESS = "198.51.100.7"
    settings.MEDIATION_PORT = 6502
    mx = make_router(name="mx-akl-1", address="203.0.113.5", kind=Router.Kind.MX)
    e_series = make_router(name="erx-1", kind=Router.Kind.E_SERIES)
    intercept = make_intercept(intercept_id=0x8000, routers=[mx, e_series])
    text = provisioning_text(signed_in(staff(Role.LI_ADMIN)), intercept)
    assert "DTCP ADD on mx-akl-1 (MX)" in text
    assert "DTCP ADD on erx-1" not in text
    assert (
        "ADD DTCP/0.7\n"
        "Csource-ID: &lt;dtcp-user&gt;\n"
        "Cdest-ID: &lt;cdest-id&gt;\n"
        "X-JTap-Cdest-Dest-Address: 198.51.100.7\n"
        "X-JTap-Cdest-Dest-Port: 6502\n"
        "X-JTap-Cdest-Source-Address: 203.0.113.5\n"
        "X-MD-Intercept-Id: 0x00008000\n"
        "X-UserName: &lt;subscriber user name&gt;\n"
    ) in text


def test_unknown_addresses_are_shown_as_escaped_placeholders(settings: Settings) -> None:
    settings.MEDIATION_ADDRESS = ""
    intercept = make_intercept(intercept_id=0x8000)
    text = provisioning_text(signed_in(staff(Role.LI_ADMIN)), intercept)
    placeholder = "&lt;mediation address: set JMIRROR_MEDIATION_ADDRESS&gt;"
    assert f"ERX-Med-Ip-Address = {placeholder}    # 26-60" in text
    assert f"X-JTap-Cdest-Dest-Address: {placeholder}\n" in text
    assert (
        "X-JTap-Cdest-Source-Address: &lt;router&#x27;s radius-flow-tap source address&gt;" in text
    )
    assert "192.0.2.1" not in text


def test_an_ipv6_mediation_address_is_explained_instead_of_provisioned(
    settings: Settings,
) -> None:
    settings.MEDIATION_ADDRESS = "2001:db8::7"
    intercept = make_intercept()
    text = provisioning_text(signed_in(staff(Role.LI_ADMIN)), intercept)
    assert "Cannot build the RADIUS attributes" in text
    assert "Cannot build the DTCP ADD" in text
    assert "mediation address 2001:db8::7 is IPv6" in text
    assert "ERX-LI-Action" not in text


def test_an_mx_router_with_an_ipv6_source_spoils_only_its_own_dtcp_add(
    settings: Settings,
) -> None:
    settings.MEDIATION_ADDRESS = "198.51.100.7"
    v6 = make_router(name="mx-v6", address="2001:db8::5")
    v4 = make_router(name="mx-v4", address="203.0.113.5")
    intercept = make_intercept(routers=[v6, v4])
    text = provisioning_text(signed_in(staff(Role.LI_ADMIN)), intercept)
    assert "Cannot build the DTCP ADD on mx-v6" in text
    assert (
        "X-JTap-Cdest-Source-Address 2001:db8::5 is IPv6: Juniper documents it as an IPv4 address"
    ) in text
    assert "X-JTap-Cdest-Source-Address: 203.0.113.5" in text
    assert "ERX-LI-Action = 1" in text


def test_an_intercept_on_e_series_routers_only_gets_no_dtcp_add(settings: Settings) -> None:
    settings.MEDIATION_ADDRESS = "198.51.100.7"
    intercept = make_intercept(routers=[make_router(kind=Router.Kind.E_SERIES)])
    text = provisioning_text(signed_in(staff(Role.LI_ADMIN)), intercept)
    assert "ERX-LI-Action = 1" in text
    assert "DTCP" not in text


def test_a_pinned_session_id_is_said_to_be_out_of_dtcps_reach(settings: Settings) -> None:
    settings.MEDIATION_ADDRESS = "198.51.100.7"
    intercept = make_intercept(sid=0x90)
    text = provisioning_text(signed_in(staff(Role.LI_ADMIN)), intercept)
    assert "DTCP cannot request the pinned session id 0x90" in text


def test_router_names_in_the_provisioning_section_are_escaped(settings: Settings) -> None:
    settings.MEDIATION_ADDRESS = "198.51.100.7"
    router = make_router(name="<b>mx</b>", address="203.0.113.9")
    intercept = make_intercept(routers=[router])
    text = provisioning_text(signed_in(staff(Role.LI_ADMIN)), intercept)
    assert "<b>mx</b>" not in text
    assert "DTCP ADD on &lt;b&gt;mx&lt;/b&gt; (MX)" in text


def test_the_add_page_has_no_provisioning_section() -> None:
    client = signed_in(staff(Role.LI_ADMIN))
    assert b"Provisioning" not in client.get(url("intercept", "add")).content


def _unclaimed(router: Router | None, source: str) -> Any:
    from jmirror_web.intercepts.models import UnclaimedStream

    now = timezone.now()
    return UnclaimedStream.objects.create(
        source=source,
        router=router,
        mid=0x40000123,  # version bits set: the intercept id is 0x123
        sid=9,
        reason="no_intercept" if router else "unknown_router",
        packets=5,
        first_seen=now,
        last_seen=now,
    )


def test_li_admins_list_unclaimed_streams_with_a_link_that_maps_them():
    router = make_router(address="192.0.2.77")
    _unclaimed(router, "192.0.2.77")
    _unclaimed(None, "198.51.100.3")
    client = signed_in(staff(Role.LI_ADMIN))

    page = client.get(reverse("admin:intercepts_unclaimedstream_changelist"))

    assert page.status_code == 200
    body = page.content.decode()
    add_intercept = reverse("admin:intercepts_intercept_add")
    assert f"{add_intercept}?intercept_id={0x123}&amp;sid=9&amp;routers={router.pk}" in body
    assert reverse("admin:intercepts_router_add") + "?address=198.51.100.3" in body
    # The link opens the intercept form filled in from the stream.
    form = client.get(f"{add_intercept}?intercept_id={0x123}&sid=9&routers={router.pk}")
    assert form.context["adminform"].form.initial["intercept_id"] == str(0x123)


def test_auditors_read_unclaimed_streams_without_the_mapping_links():
    _unclaimed(None, "198.51.100.3")
    page = signed_in(staff(Role.AUDITOR)).get(
        reverse("admin:intercepts_unclaimedstream_changelist")
    )
    assert page.status_code == 200
    assert "198.51.100.3" in page.content.decode()
    assert "register router" not in page.content.decode()


@pytest.mark.parametrize("role", [Role.ANALYST, Role.SYSADMIN])
def test_analysts_and_sysadmins_get_no_unclaimed_streams(role: Role):
    _unclaimed(None, "198.51.100.3")
    page = signed_in(staff(role)).get(reverse("admin:intercepts_unclaimedstream_changelist"))
    assert page.status_code in (302, 403)
    assert "198.51.100.3" not in page.content.decode()


def test_the_file_list_says_where_each_file_is(settings: Settings) -> None:
    """Node and storage state: on the capturing host, waiting for upload, in the store
    (locked, held, local copy removed), failing, purged."""
    from jmirror_web.object_store import StorageConfig
    from tests.factories import make_capture_file

    now = timezone.now()
    session = make_session()
    case = session.intercept.case
    writing = make_capture_file(session, node="cap-a", closed=False)
    waiting = make_capture_file(session, node="cap-a", closed=True, sha256="a" * 64)
    failing = make_capture_file(
        session, node="cap-b", closed=True, upload_attempts=3, upload_error="503: SlowDown"
    )
    stored = make_capture_file(
        session,
        node="cap-b",
        closed=True,
        uploaded_at=now,
        object_key="cap-b/sessions/x/f.pcap",
        object_retain_until=now + timedelta(days=400),
        object_legal_hold=True,
        local_removed_at=now,
    )
    user = superuser()
    CaseAssignment.objects.create(case=case, user=user)
    settings.STORAGE = StorageConfig("evidence")
    page = signed_in(user).get(url("capturefile", "changelist")).content.decode()
    assert "being written on cap-a" in page
    assert "waiting for upload on cap-a" in page
    assert "upload failing (3x): 503: SlowDown" in page
    assert f"in the store since {now:%Y-%m-%d %H:%M:%S} UTC" in page
    assert "legal hold" in page
    assert "local copy removed" in page
    assert {writing.pk, waiting.pk, failing.pk, stored.pk} <= {
        int(pk) for pk in re.findall(r"/capturefile/(\d+)/change/", page)
    }
    settings.STORAGE = None
    page = signed_in(user).get(url("capturefile", "changelist")).content.decode()
    assert "local on cap-a" in page
